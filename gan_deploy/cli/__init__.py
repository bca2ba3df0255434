"""The `gan-deploy` command line: click commands only. Each command parses its options, calls one library
function and prints; `main.py` holds the group and the one list of commands, `options.py` every option more than
one command takes, each declared once (tests/test_cli_options.py).

May import: everything below it.
"""
from gan_deploy.cli.main import main, run

__all__ = ["main", "run"]
