"""Serving: the HTTP request contract (`api.py`, no Ray), Ray Serve (`ray_serve.py`) and the Triton model
repository (`triton.py`).

May import: every stage below it (core .. generate); never the CLI.
"""
