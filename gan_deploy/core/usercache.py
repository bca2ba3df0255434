"""The user's cache folder: what a command measured or compiled once and reuses on the next start (OpenVINO's
compiled models, `auto`'s per-artifact backend choice). Never inside the installed package.

Where: $GAN_DEPLOY_CACHE_DIR if set, else $XDG_CACHE_HOME/gan-deploy, else ~/.cache/gan-deploy. Each folder
this module makes is created with mode 0700 and then checked with lstat: a symlink, another user's folder or one
that others can write to is not used (a cache another user can write to could feed us a crafted compiled
model or a wrong choice); the command then runs without the cache and says so once.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from gan_deploy.core.errors import warn

ENV_CACHE_DIR = "GAN_DEPLOY_CACHE_DIR"
_warned: set[str] = set()


def cache_root() -> Path:
    """The gan-deploy cache folder (not created)."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores a relative value
    return base / "gan-deploy"


def cache_dir(sub: str) -> Path | None:
    """`cache_root()/sub`, created 0700 if missing; None (with one warning) when it cannot be made or is unsafe."""
    try:
        root = cache_root()
    except RuntimeError as e:  # "~nouser/x", or no home directory at all
        _warn_once(ENV_CACHE_DIR, f"no cache folder ({e}); running without a cache (set {ENV_CACHE_DIR} to a folder of your own)")
        return None
    folder = root / sub
    try:
        root.parent.mkdir(parents=True, exist_ok=True)  # ~/.cache itself: the user's, made as XDG makes it
        for d in (root, folder):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            problem = _unsafe(d)
            if problem:
                _warn_once(str(d), f"not using the cache folder {d}: {problem}; running without a cache "
                                   f"(set {ENV_CACHE_DIR} to a folder of your own)")
                return None
    except OSError as e:
        _warn_once(str(folder), f"cannot create the cache folder {folder} ({e.strerror or type(e).__name__}); running "
                                f"without a cache (set {ENV_CACHE_DIR} to a writable folder)")
        return None
    return folder


def _unsafe(d: Path) -> str | None:
    st = os.lstat(d)  # lstat: a symlink is reported as one, never followed
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return "it belongs to another user"
    if st.st_mode & 0o022:
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warn(message)
