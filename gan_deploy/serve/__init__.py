"""Serving: the HTTP request contract (`api.py`, no Ray), Ray Serve (`ray_serve.py`) and the Triton model
repository (`triton.py`).

May import: core, artifacts, export, backends (the service and the Triton repository run or export an
artifact). Never the CLI.
"""
