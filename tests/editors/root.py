"""Run real GIMP 3 / Krita 5 in the cached Debian trixie root built by trixie_root.sh (see README.md).

    root = editor_root()                       # Path; builds once (about a minute), then cached on disk
    with bind(tmp_path):                       # same path inside the root as on the host
        p = run_in_root(["gimp-console-3.0", "--version"], home=tmp_path / "home")

Not root / mmdebstrap not installable: the tests skip with the reason (set LAYERMATTE_REQUIRE_EDITORS=1 to fail
instead). Any other build failure fails the test with the script's log.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

SCRIPT = Path(__file__).with_name("trixie_root.sh")
CANNOT_BUILD = 77  # the script's exit code for "this host cannot build the root"
_state: dict[str, object] = {}  # cached result of the one build per session: "root" or "skip"/"fail" reason


def _script(*args: str, env: Mapping[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run trixie_root.sh; on timeout, kill its whole process group (chroot children included)."""
    cmd = ["bash", str(SCRIPT), *args]
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def editor_root() -> Path:
    """The root's path, building it on first use; skips (or fails) the calling test if it cannot be had."""
    if not _state:
        if os.name != "posix" or os.geteuid() != 0:
            _state["skip"] = "editor root: needs root (mmdebstrap, chroot, mount); this process is not root"
        else:
            p = _script("path")
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            if p.returncode == 0:
                _state["root"] = Path(p.stdout.strip().splitlines()[-1])
            elif p.returncode == CANNOT_BUILD:
                _state["skip"] = f"editor root: cannot build on this host: {tail.splitlines()[-1] if tail else ''}"
            else:
                _state["fail"] = f"editor root: trixie_root.sh path exited {p.returncode}:\n{tail}"
    if "root" in _state:
        return _state["root"]  # type: ignore[return-value]
    if "skip" in _state and os.environ.get("LAYERMATTE_REQUIRE_EDITORS") != "1":
        pytest.skip(str(_state["skip"]))
    pytest.fail(str(_state.get("fail") or _state.get("skip")), pytrace=False)


def run_in_root(argv: Sequence[str | os.PathLike], home: str | os.PathLike = "/root",
                env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run argv inside the root with HOME=home (a path inside the root, e.g. in a bind()-ed dir), LANG=C.UTF-8
    and a clean environment plus `env`. Returns the CompletedProcess (text stdout/stderr; not checked)."""
    editor_root()
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    return _script("run", *prefix, *map(str, argv), env={"LM_HOME": str(home)}, timeout=timeout)


@contextlib.contextmanager
def bind(directory: str | os.PathLike) -> Iterator[Path]:
    """Bind-mount a host directory into the root at the same path for the duration of the block."""
    editor_root()
    d = Path(directory).resolve()
    p = _script("bind", str(d), timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"trixie_root.sh bind {d} exited {p.returncode}: {p.stderr.strip()}")
    try:
        yield d
    finally:
        _script("unbind", str(d), timeout=120)


def unbind(directory: str | os.PathLike) -> None:
    """Undo bind() explicitly (the context manager does this itself)."""
    _script("unbind", str(Path(directory).resolve()), timeout=120)
