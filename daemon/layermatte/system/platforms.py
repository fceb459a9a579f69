"""What differs between Linux, macOS, Windows and a Flatpak sandbox, in one place.

Standard library only: `layermatte install` copies this file next to the
plug-ins' client (as layermatte_platforms.py), so the editor's own Python and
the daemon agree on where the daemon listens without sharing any package.

Transport per platform (README, "Platforms"):
* Linux, macOS: a unix socket, 0600 in a 0700 folder of the user's.
* Windows: grpc for Python has no unix sockets there, so loopback TCP on a
  port the daemon picks, guarded by a random token. The daemon writes the
  token and its address into files in the user's own profile folder
  (%LOCALAPPDATA%, which only that user and administrators can read), and
  clients read them. The port is never open without the token.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

# No dataclasses, subprocess or tempfile at import: `layermatte pipe` imports this
# module once per click, and those three cost more than the rest of it.

APP = "layermatte"
OS = "windows" if sys.platform == "win32" else "macos" if sys.platform == "darwin" else "linux"

# Variables an editor sets for its own embedded Python or its bundle's
# libraries; a child that inherits them loads the wrong modules or libraries.
_EDITOR_ONLY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                    "PYTHONUSERBASE", "PYTHONPLATLIBDIR", "PYTHONSAFEPATH", "PYTHONNOUSERSITE",
                    "PYTHONDONTWRITEBYTECODE", "PYTHONINSPECT", "PYTHONOPTIMIZE",
                    "__PYVENV_LAUNCHER__", "VIRTUAL_ENV")
_BUNDLE_LIBRARY_ENV = ("LD_LIBRARY_PATH", "LD_PRELOAD")   # AppImage sets these for its own libs


def in_flatpak() -> bool:
    """True inside a Flatpak sandbox: the host's programs and sockets are out of sight."""
    return os.path.exists("/.flatpak-info")


def unix_sockets_supported() -> bool:
    """grpc for Python supports unix sockets everywhere but on Windows."""
    return OS != "windows"


# The longest unix socket path the kernel takes (sun_path less its NUL): 108 bytes
# on Linux, 104 on macOS and the BSDs.
SOCKET_PATH_MAX = 107 if OS == "linux" else 103


def user_tag() -> str:
    """A short per-user name for shared folders such as /tmp."""
    if hasattr(os, "getuid"):
        return str(os.getuid())
    return (os.environ.get("USERNAME") or "user").replace(os.sep, "_")


def runtime_dir() -> Path:
    """The folder for the daemon's socket, token, address and log: private to the user."""
    if os.environ.get("LAYERMATTE_RUNTIME_DIR"):
        return Path(os.environ["LAYERMATTE_RUNTIME_DIR"])
    if OS == "windows":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP / "run"
    if OS == "linux" and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / APP
    if OS == "macos" and os.environ.get("TMPDIR"):
        # macOS's per-user temporary folder (/var/folders/…/T/), 0700; short
        # enough for the 104-byte socket path limit there.
        return Path(os.environ["TMPDIR"]) / APP
    import tempfile
    return Path(tempfile.gettempdir()) / f"{APP}-{user_tag()}"


class Endpoint(NamedTuple):
    """Where the user's daemon listens: a grpc target, and the token file TCP needs."""
    address: str                 # "unix:/path/daemon.sock" or "127.0.0.1:PORT"; "" = none published
    token_file: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix:")

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


def safe_for_socket(folder: Path) -> bool:
    """Nobody else can swap files in folder: it is ours, or root's and sticky (the
    owner of a sticky folder may still remove anything in it). On Windows the
    runtime folder is inside the user's own profile."""
    if not hasattr(os, "getuid"):
        return True
    import stat
    st = folder.stat()
    return st.st_uid == os.getuid() or bool(st.st_mode & stat.S_ISVTX and st.st_uid == 0)


def socket_path() -> Path:
    return runtime_dir() / "daemon.sock"


def token_path() -> Path:
    return runtime_dir() / "daemon.token"


def address_path() -> Path:
    """Where a TCP-only daemon (Windows) publishes the port it listens on."""
    return runtime_dir() / "daemon.address"


def default_endpoint() -> Endpoint:
    """The user's own daemon: the unix socket, or on Windows the published TCP address."""
    if unix_sockets_supported():
        return Endpoint("unix:" + str(socket_path().absolute()))
    try:
        address = json.loads(address_path().read_text()).get("address", "")
    except (OSError, ValueError, AttributeError):
        address = ""
    return Endpoint(address, token_path())


def publish_address(address: str, pid: int) -> Path:
    """Written by a TCP-only daemon once it listens; atomic so a client never reads half."""
    path = address_path()
    tmp = path.with_name(path.name + f".{pid}.tmp")
    tmp.write_text(json.dumps({"address": address, "pid": pid}))
    os.replace(tmp, path)
    return path


def write_private(path: Path, text: str) -> None:
    """A file only the user can read (0600; on Windows the profile folder's ACL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if OS != "windows":
        os.chmod(path, 0o600)


# -- processes -------------------------------------------------------------------
_CREATE_NO_WINDOW = 0x08000000
_CREATE_NEW_PROCESS_GROUP = 0x00000200


def hidden_popen_kwargs() -> dict:
    """A short-lived helper child (the pipe program): no console window on Windows."""
    if OS == "windows":
        return {"creationflags": _CREATE_NO_WINDOW}
    return {}


def detached_popen_kwargs() -> dict:
    """A background daemon that outlives its starter: its own session or process
    group (a Ctrl+C or a closing terminal does not reach it), no console window."""
    if OS == "windows":
        return {"creationflags": _CREATE_NO_WINDOW | _CREATE_NEW_PROCESS_GROUP, "close_fds": True}
    return {"start_new_session": True, "close_fds": True}


def small_pages_for_arrays() -> None:
    """Large numpy arrays on ordinary 4 KiB pages. On Linux numpy asks for
    transparent huge pages on every array of 4 MiB or more (madvise), and the
    first touch of each huge page zeroes 2 MiB in the kernel. The pipeline's
    strips and windows are short-lived and re-made every request, so that cost
    more than it saved: on the 2-core VM the decontamination stage after an
    inference took 0.75-2.0 s at 4096x4096 with huge pages (up to 1.1 s of it
    kernel time) and 0.50-0.66 s without; inference is unaffected (onnxruntime
    keeps its own arena). No-op elsewhere, and where numpy has no switch."""
    if OS != "linux":
        return
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)


def clean_child_env(env: dict | None = None) -> dict:
    """The environment for a layermatte child started from inside an editor: the
    editor's Python and bundle settings removed, everything else kept."""
    out = dict(os.environ if env is None else env)
    for key in _EDITOR_ONLY_ENV:
        out.pop(key, None)
    for key in [k for k in out if k.startswith("DYLD_")]:   # macOS app bundles
        out.pop(key)
    if out.get("APPIMAGE") or out.get("APPDIR"):
        for key in _BUNDLE_LIBRARY_ENV:
            out.pop(key, None)
    return out


def host_command(cmd: list[str]) -> list[str]:
    """Inside Flatpak the layermatte program lives on the host: run it there
    (needs --talk-name=org.freedesktop.Flatpak, which `layermatte install
    --flatpak` grants). flatpak-spawn passes no environment; the host's own is used."""
    if in_flatpak():
        return ["flatpak-spawn", "--host", "--watch-bus", *cmd]
    return list(cmd)


class InstanceLock:
    """An exclusive lock on a file, released when the process dies (flock on POSIX,
    msvcrt.locking on Windows): one daemon per socket or runtime folder."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def acquire(self) -> bool:
        f = open(self.path, "a+")
        try:
            if OS == "windows":
                import msvcrt
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists (stale .pid files, `stop`)."""
    if pid <= 0:
        return False
    if OS == "windows":
        import subprocess
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True,
                             text=True, **hidden_popen_kwargs()).stdout
        return str(pid) in out
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_id() -> int:
    """The parent's pid, for parent_changed(). 0 on Windows: there the id tells nothing
    (and os.getppid of CPython 3.12+ needs PssCaptureSnapshot, which Wine lacks)."""
    return 0 if OS == "windows" else os.getppid()


def parent_changed(parent: int) -> bool:
    """Whether the process that started us is gone. POSIX re-parents orphans, so the
    parent pid changes; Windows keeps the old id, so there only the pipe's end (the
    `pipe` child's stdin lifeline) tells, and this says False."""
    return OS != "windows" and os.getppid() != parent


# -- where the editors look for plug-ins ----------------------------------------------
GIMP_SERIES = ("3.0", "3.2")     # GIMP keeps one profile folder per minor series
GIMP_FLATPAK, KRITA_FLATPAK = "org.gimp.GIMP", "org.kde.krita"


class EditorLocation(NamedTuple):
    """One place an editor loads user plug-ins from."""
    editor: str                    # "gimp" | "krita"
    label: str                     # for people: "GIMP 3.2", "Krita (Flatpak)"
    plugin_root: Path              # GIMP: <profile>/plug-ins; Krita: <data>/pykrita
    profile: Path                  # exists once the editor has run with this profile
    kritarc: Path | None = None
    flatpak_app: str | None = None


def _home() -> Path:
    return Path.home()


def _native_config() -> Path:
    if OS == "windows":
        return Path(os.environ.get("APPDATA") or _home() / "AppData" / "Roaming")
    if OS == "macos":
        return _home() / "Library" / "Application Support"
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")


def _flatpak_dir(app: str, kind: str) -> Path:
    return _home() / ".var" / "app" / app / kind


def gimp_locations() -> list[EditorLocation]:
    """Every GIMP 3 profile this user could have: native and, on Linux, Flatpak.
    GIMP3_DIRECTORY (GIMP's own override) replaces the native ones."""
    out = []
    if os.environ.get("GIMP3_DIRECTORY"):
        prof = Path(os.environ["GIMP3_DIRECTORY"])
        out.append(EditorLocation("gimp", "GIMP 3 ($GIMP3_DIRECTORY)", prof / "plug-ins", prof))
    else:
        for series in GIMP_SERIES:
            prof = _native_config() / "GIMP" / series
            out.append(EditorLocation("gimp", f"GIMP {series}", prof / "plug-ins", prof))
    if OS == "linux":
        for series in GIMP_SERIES:
            prof = _flatpak_dir(GIMP_FLATPAK, "config") / "GIMP" / series
            out.append(EditorLocation("gimp", f"GIMP {series} (Flatpak)", prof / "plug-ins", prof,
                                      flatpak_app=GIMP_FLATPAK))
    return out


def krita_locations() -> list[EditorLocation]:
    """Krita's pykrita folder and kritarc: native and, on Linux, Flatpak. The
    AppImage uses the native folders."""
    if OS == "windows":
        data = _native_config() / "krita"
        rc = Path(os.environ.get("LOCALAPPDATA") or _home() / "AppData" / "Local") / "kritarc"
    elif OS == "macos":
        data = _native_config() / "krita"
        rc = _home() / "Library" / "Preferences" / "kritarc"
    else:
        data = Path(os.environ.get("XDG_DATA_HOME") or _home() / ".local" / "share") / "krita"
        rc = _native_config() / "kritarc"
    out = [EditorLocation("krita", "Krita", data / "pykrita", data, kritarc=rc)]
    if OS == "linux":
        fdata = _flatpak_dir(KRITA_FLATPAK, "data") / "krita"
        out.append(EditorLocation("krita", "Krita (Flatpak)", fdata / "pykrita", fdata,
                                  kritarc=_flatpak_dir(KRITA_FLATPAK, "config") / "kritarc",
                                  flatpak_app=KRITA_FLATPAK))
    return out
