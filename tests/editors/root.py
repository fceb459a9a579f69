"""Run real GIMP 3 / Krita in the cached Debian roots built by editor_root.sh (see README.md).

    root = editor_root("forky")                # Path; builds once (about a minute), then cached on disk
    with bind(tmp_path, root="forky"):         # same path inside the root as on the host
        p = run_in_root(["gimp-console", "--version"], home=tmp_path / "home", root="forky")

Roots (ROOTS): "trixie" (GIMP 3.0, Krita 5.2; the default), "forky" (GIMP 3.2, Krita 5.3),
"krita6" (Krita 6, Qt6; no GIMP). GIMP_ROOTS / KRITA_ROOTS list those holding each editor.

Not root / mmdebstrap not installable: the tests skip with the reason (set LAYERMATTE_REQUIRE_EDITORS=1 to fail
instead). Any other build failure fails the test with the script's log.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

SCRIPT = Path(__file__).with_name("editor_root.sh")
CANNOT_BUILD = 77  # the script's exit code for "this host cannot build the root"


@dataclass(frozen=True)
class Editors:
    """What one root holds: GIMP's minor version (also its config folder, GIMP/3.x) and Krita's
    major.minor, as Debian packages them (editor_root.sh's package lists)."""
    gimp: str | None
    krita: str | None


ROOTS = {"trixie": Editors(gimp="3.0", krita="5.2"), "forky": Editors(gimp="3.2", krita="5.3"),
         "krita6": Editors(gimp=None, krita="6.0")}
GIMP_ROOTS = [name for name, e in ROOTS.items() if e.gimp]
KRITA_ROOTS = [name for name, e in ROOTS.items() if e.krita]
NEWEST = {"gimp": "forky", "krita": "krita6"}  # the editors designers run now: every check runs there
_state: dict[str, dict[str, object]] = {}  # per root, the one build per session: "root" or "skip"/"fail"


def _script(root: str, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run editor_root.sh ROOT ...; on timeout, kill its whole process group (chroot children included)."""
    cmd = ["bash", str(SCRIPT), root, *args]
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def editor_root(root: str = "trixie") -> Path:
    """The root's path, building it on first use; skips (or fails) the calling test if it cannot be had."""
    state = _state.setdefault(root, {})
    if not state:
        if os.name != "posix" or os.geteuid() != 0:
            state["skip"] = "editor root: needs root (mmdebstrap, chroot, mount); this process is not root"
        else:
            p = _script(root, "path")
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            if p.returncode == 0:
                state["root"] = Path(p.stdout.strip().splitlines()[-1])
            elif p.returncode == CANNOT_BUILD:
                state["skip"] = f"editor root: cannot build on this host: {tail.splitlines()[-1] if tail else ''}"
            else:
                state["fail"] = f"editor root: editor_root.sh {root} path exited {p.returncode}:\n{tail}"
    if "root" in state:
        return state["root"]  # type: ignore[return-value]
    if "skip" in state and os.environ.get("LAYERMATTE_REQUIRE_EDITORS") != "1":
        pytest.skip(str(state["skip"]))
    pytest.fail(str(state.get("fail") or state.get("skip")), pytrace=False)


def run_in_root(argv: Sequence[str | os.PathLike], home: str | os.PathLike = "/root",
                env: Mapping[str, str] | None = None, timeout: float = 300,
                root: str = "trixie") -> subprocess.CompletedProcess:
    """Run argv inside the root with HOME=home (a path inside the root, e.g. in a bind()-ed dir), LANG=C.UTF-8
    and a clean environment plus `env`. Returns the CompletedProcess (text stdout/stderr; not checked)."""
    editor_root(root)
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    return _script(root, "run", *prefix, *map(str, argv), env={"LM_HOME": str(home)}, timeout=timeout)


@contextlib.contextmanager
def bind(directory: str | os.PathLike, root: str = "trixie") -> Iterator[Path]:
    """Bind-mount a host directory into the root at the same path for the duration of the block."""
    editor_root(root)
    d = Path(directory).resolve()
    p = _script(root, "bind", str(d), timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"editor_root.sh {root} bind {d} exited {p.returncode}: {p.stderr.strip()}")
    try:
        yield d
    finally:
        _script(root, "unbind", str(d), timeout=120)


def unbind(directory: str | os.PathLike, root: str = "trixie") -> None:
    """Undo bind() explicitly (the context manager does this itself)."""
    _script(root, "unbind", str(Path(directory).resolve()), timeout=120)
