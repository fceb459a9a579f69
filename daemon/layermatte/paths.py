"""Where things live on the user's machine (platformdirs), overridable by env."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from .errors import InvalidInput

APP = "layermatte"


def cache_dir() -> Path:
    return Path(os.environ.get("LAYERMATTE_CACHE") or platformdirs.user_cache_dir(APP))


def config_dir() -> Path:
    return Path(os.environ.get("LAYERMATTE_CONFIG") or platformdirs.user_config_dir(APP))


def runtime_dir() -> Path:
    """Private (0700) directory for the socket. Falls back to a per-user folder
    under /tmp where no XDG runtime dir exists (containers, CI)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / APP if base else Path(f"/tmp/{APP}-{os.getuid()}")
    return path


def default_socket() -> Path:
    return runtime_dir() / "daemon.sock"


def ensure_private_dir(path: Path) -> Path:
    """Create path as 0700 when missing. An existing folder keeps its mode (it
    may be a shared one such as /tmp, where the 0600 socket is the guard) but
    must be ours, or root's and sticky, so nobody else can swap the socket (the
    owner of a sticky folder may still remove anything in it)."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
        return path
    st = path.stat()
    if st.st_uid != os.getuid() and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
        raise InvalidInput(f"{path} belongs to another user; refusing to put the daemon's socket there")
    return path
