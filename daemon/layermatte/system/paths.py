"""Where things live on the user's machine (platformdirs), overridable by env."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from . import platforms
from ..errors import InvalidInput

APP = "layermatte"


def cache_dir() -> Path:
    return Path(os.environ.get("LAYERMATTE_CACHE") or platformdirs.user_cache_dir(APP))


def config_dir() -> Path:
    return Path(os.environ.get("LAYERMATTE_CONFIG") or platformdirs.user_config_dir(APP))


def runtime_dir() -> Path:
    """Private folder for the socket, token and log (per OS: platforms.runtime_dir)."""
    return platforms.runtime_dir()


def default_socket() -> Path:
    return platforms.socket_path()


def ensure_private_dir(path: Path) -> Path:
    """Create path as 0700 when missing. An existing folder keeps its mode (it
    may be a shared one such as /tmp, where the 0600 socket is the guard) but
    must be ours, or root's and sticky, so nobody else can swap the socket (the
    owner of a sticky folder may still remove anything in it)."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
        return path
    if not platforms.safe_for_socket(path):
        raise InvalidInput(f"{path} belongs to another user; refusing to put the daemon's socket there")
    return path
