"""Where things live on the user's machine (platformdirs), overridable by env."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

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
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; refusing to use it")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path
