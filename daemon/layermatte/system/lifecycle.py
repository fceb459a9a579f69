"""The daemon as a process: where its lock, pid file and log live, whether one
runs, stopping it, and starting one in the background that is reported at
once when it dies. Standard library and platforms only, so `layermatte stop`
and the clients' autostart stay cheap to import."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import paths, platforms
from ..errors import DaemonUnavailable, InvalidInput

log = logging.getLogger(__name__)
IDLE_EXIT_ENV = "LAYERMATTE_IDLE_EXIT"
AUTOSTART_IDLE_EXIT_S = 300.0   # an auto-started daemon goes away after 5 idle minutes
_WHERE = "use --socket PATH in a folder of yours, or set LAYERMATTE_RUNTIME_DIR"


@dataclass(frozen=True)
class DaemonFiles:
    """One daemon's files: its socket (None for the TCP-only daemon on Windows)
    and, beside it, the instance lock, the pid file and the background log."""
    socket: Path | None
    folder: Path

    def _beside(self, suffix: str) -> Path:
        return self.socket.with_suffix(suffix) if self.socket else self.folder / f"daemon{suffix}"

    @property
    def lock(self) -> Path:
        return self._beside(".lock")

    @property
    def pid(self) -> Path:
        return self._beside(".pid")

    @property
    def log(self) -> Path:
        return self.folder / "daemon.log"


def files_for(socket: str | os.PathLike | None = None) -> DaemonFiles:
    """The files of the daemon on `socket` (default: the user's own daemon)."""
    if platforms.unix_sockets_supported():
        sock = Path(socket).absolute() if socket else platforms.socket_path().absolute()
        return DaemonFiles(sock, sock.parent)
    if socket:
        raise InvalidInput("unix sockets are not available on this system: leave out --socket "
                           "(the daemon listens on loopback TCP with a token)")
    return DaemonFiles(None, platforms.runtime_dir())


def check_socket_path(sock: Path) -> None:
    """A unix socket's path has a fixed-size field in the kernel; grpc fails late
    and noisily on a longer one."""
    n = len(os.fsencode(str(sock)))
    if n > platforms.SOCKET_PATH_MAX:
        raise InvalidInput(f"the socket path {sock} is {n} bytes long; unix sockets allow at most "
                           f"{platforms.SOCKET_PATH_MAX}: {_WHERE} with a shorter path")


def prepare_folder(folder: Path) -> Path:
    """The daemon's folder, created private when missing, or a one-line reason why not."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{folder} is a file, not a folder, so the daemon cannot put its socket "
                           f"there: {_WHERE}")
    try:
        paths.ensure_private_dir(folder)
    except (NotADirectoryError, FileExistsError):
        raise InvalidInput(f"cannot create the daemon's folder {folder}: part of that path is a "
                           f"file: {_WHERE}") from None
    except OSError as e:
        raise InvalidInput(f"cannot create the daemon's folder {folder} ({e.strerror}): {_WHERE}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"the daemon's folder {folder} is not writable: {_WHERE}")
    return folder


def running_pid(files: DaemonFiles) -> int | None:
    """The pid of the daemon holding this socket's instance lock; None when none
    does, 0 when one does but its pid file is missing."""
    if not files.lock.exists():
        return None
    lock = platforms.InstanceLock(files.lock)
    try:
        free = lock.acquire()
    except OSError:          # cannot even open it: judge by the pid file alone
        free = None
    if free:
        lock.release()
        return None
    try:
        pid = int(files.pid.read_text().strip())
    except (OSError, ValueError):
        return 0 if free is False else None
    if free is None and not platforms.pid_alive(pid):
        return None
    return pid


def stop(files: DaemonFiles, timeout: float = 60.0) -> int | None:
    """SIGTERM the daemon (it drains requests in flight, then removes its files)
    and wait until it is gone. Returns its pid, or None when none was running."""
    pid = running_pid(files)
    if pid is None:
        return None
    if pid == 0:
        raise InvalidInput(f"a daemon holds {files.lock} but its pid file {files.pid} is missing; "
                           "stop it by hand (look for `layermatte serve` in the process list)")
    try:
        os.kill(pid, signal.SIGTERM)   # on Windows this ends the process at once
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(files) is None or not platforms.pid_alive(pid):
            return pid
        time.sleep(0.1)
    raise InvalidInput(f"the daemon (pid {pid}) did not stop within {timeout:.0f} s of SIGTERM; "
                       f"it may be finishing a long request: wait, or `kill -9 {pid}`")


def autostart_idle_exit() -> float:
    """Seconds an auto-started daemon waits idle before it exits ($LAYERMATTE_IDLE_EXIT)."""
    raw = os.environ.get(IDLE_EXIT_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else AUTOSTART_IDLE_EXIT_S
    except ValueError:
        raise InvalidInput(f"{IDLE_EXIT_ENV}={raw!r} is not a number of seconds") from None


def _last_line(log: Path, start: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return last.removeprefix("layermatte: error: ")


def spawn(serve_args: list[str], files: DaemonFiles, answer: Callable[[], str | None],
          timeout: float = 60.0, announce: Callable[[str], None] | None = None) -> str:
    """Start `layermatte serve` detached, with an idle exit, and wait until
    answer() returns the address it listens on. A daemon that exits (and leaves
    no other daemon starting on the same socket) is reported within ~0.1 s with
    the last line it logged."""
    if files.socket is not None:
        check_socket_path(files.socket)
    log_path = prepare_folder(files.folder) / "daemon.log"
    idle = autostart_idle_exit()
    try:
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "layermatte", *serve_args,
                                     "--idle-exit", str(idle)],
                                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    **platforms.detached_popen_kwargs())
    except OSError as e:
        raise DaemonUnavailable(f"could not start a background daemon ({e}); run `layermatte serve` "
                                "in a terminal to see why") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        target = answer()
        if target:
            if announce is not None:
                until = f"exits after {idle:.0f} s idle" if idle else "stays until stopped"
                announce(f"started a layermatte daemon in the background (pid {proc.pid}; it {until}; "
                         "`layermatte stop` stops it)")
            return target
        if proc.poll() is not None and running_pid(files) is None:
            target = answer()   # it lost a race to a daemon that is serving now
            if target:
                return target
            said = _last_line(log_path, start) or "no message"
            raise DaemonUnavailable(f"the background daemon exited at once (exit {proc.returncode}): "
                                    f"{said} (log: {log_path})")
        time.sleep(0.1)
    raise DaemonUnavailable(f"started a daemon ({' '.join(serve_args)}) but it did not answer within "
                            f"{timeout:.0f} s; see {log_path}")


class AlreadyRunning(InvalidInput):
    """Another daemon holds this socket: `serve` exits 2 with this line."""


@dataclass
class Claim:
    """This process's hold on a daemon's files: the instance lock and the pid
    file; release() removes what it made (the socket too, once it listens)."""
    files: DaemonFiles
    lock: platforms.InstanceLock

    def release(self) -> None:
        if self.files.socket is not None:
            self.files.socket.unlink(missing_ok=True)
        self.files.pid.unlink(missing_ok=True)
        self.lock.release()


def _already_running(files: DaemonFiles) -> AlreadyRunning:
    pid = running_pid(files)
    where = files.socket or files.folder
    stop_cmd = "layermatte stop" + (f" --socket {files.socket}" if files.socket and
                                    files.socket != platforms.socket_path().absolute() else "")
    return AlreadyRunning(f"a layermatte daemon is already running on {where}"
                          + (f" (pid {pid})" if pid else "")
                          + f": clients use it as it is; to restart it, `{stop_cmd}` first")


def preflight(files: DaemonFiles) -> None:
    """claim()'s checks without taking anything: `serve` runs them before it
    loads the runtime, so a daemon that cannot start says why in its first line."""
    if files.socket is not None:
        check_socket_path(files.socket)
    prepare_folder(files.folder)
    if running_pid(files) is not None:
        raise _already_running(files)


def claim(files: DaemonFiles, is_serving: Callable[[str], bool]) -> Claim:
    """Take the instance lock for files (one daemon per socket), remove a dead
    daemon's socket, write the pid file. Fails with one line before anything is
    left behind: path too long, folder unusable, another daemon running."""
    if files.socket is not None:
        check_socket_path(files.socket)
    prepare_folder(files.folder)
    lock = platforms.InstanceLock(files.lock)
    for _ in range(5):   # `stop` and autostart hold it for a moment when they look
        try:
            if lock.acquire():
                break
        except OSError as e:
            raise InvalidInput(f"cannot create {files.lock} ({e.strerror}): {_WHERE}") from None
        time.sleep(0.05)
    else:
        raise _already_running(files)
    try:
        sock = files.socket
        if sock is not None and (sock.exists() or sock.is_symlink()):
            if is_serving(f"unix:{sock}"):   # a daemon of an older version, without the lock
                raise AlreadyRunning(f"a layermatte daemon is already running on {sock}")
            log.info("removing stale socket %s", sock)
            sock.unlink()
        files.pid.write_text(str(os.getpid()))
    except OSError as e:
        lock.release()
        raise InvalidInput(f"cannot write in {files.folder} ({e.strerror}): {_WHERE}") from None
    except BaseException:
        lock.release()
        raise
    return Claim(files, lock)
