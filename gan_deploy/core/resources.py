"""The files shipped inside the package (`gan_deploy/assets/`), found with importlib.resources.

The default generator and the quality score's feature classifier travel in the wheel, so an installed
gan-deploy works anywhere; nothing ever writes into the package. Outputs made from a shipped asset
go to `models/` under the working directory (`derived_output_dir`).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_GENERATOR = "digits_dcgan.safetensors"
FEATURE_CLASSIFIER = "digits_classifier.safetensors"
DERIVED_DIR = Path("models")  # relative: the working directory of the command


def asset_path(name: str) -> Path:
    """Path of a shipped asset file. The package is installed as plain files (setuptools wheel or an
    editable install), so the traversable is a real path; `as_file` would copy it for a zip import."""
    return Path(str(resources.files("gan_deploy") / "assets" / name))


def is_asset(path: str | Path) -> bool:
    """True when `path` is inside the package's assets: never a place to write."""
    try:
        Path(path).resolve().relative_to(asset_path("").resolve())
        return True
    except ValueError:
        return False


def derived_output_dir(source: str | Path) -> Path:
    """Where an output made from `source` goes by default: beside it, unless it is a shipped asset."""
    return DERIVED_DIR if is_asset(source) else Path(source).parent
