"""The `gan-deploy` command line: click commands only (see main.py)."""
from gan_deploy.cli.main import main, run

__all__ = ["main", "run"]
