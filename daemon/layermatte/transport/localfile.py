"""The unix-socket fast path: a layer handed over in a file, not in chunks,
and its matte handed back the same way.

Streaming a layer through gRPC costs a protobuf message, a bytes object and
a copy per MiB on each side (~210 ms for a 96 MB 6000x4000 RGBA layer on
2 cores). A client on the same machine instead writes the planes into a
file in /dev/shm (memory, not disk) and names it in the header; the daemon
reads it with one system call per plane (MatteHeader.pixels_file in the
.proto), or, when it cannot, asks for chunks as usual. The daemon copies
rather than maps the file, so a client that truncates or deletes it
mid-request cannot crash the daemon (SIGBUS).
The answer goes back the same way (MatteHeader.result_file): the client
creates an empty file, the daemon fills it and says so in the Summary,
which saves the send (~50 ms for a 6000x4000 matte) and the client's
assembly of chunks.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


MIN_BYTES = 1 << 20   # below this, chunks are as fast
SHM = Path("/dev/shm")


def _usable() -> bool:
    return SHM.is_dir() and os.access(SHM, os.W_OK)


def _write_all(fd: int, planes: list[memoryview]) -> None:
    for view in planes:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:done + (256 << 20)])


def write_planes(planes: list[memoryview]) -> Path | None:
    """The planes back to back in a fresh private file; None when no
    memory-backed place has room (the caller streams chunks instead)."""
    if not _usable():
        return None
    fd, name = tempfile.mkstemp(prefix="layermatte-", suffix=".raw", dir=SHM)   # mode 0600
    try:
        _write_all(fd, planes)
    except OSError:   # e.g. /dev/shm full
        os.close(fd)
        os.unlink(name)
        return None
    os.close(fd)
    return Path(name)


def empty_file() -> Path | None:
    """A fresh private empty file for the daemon's answer; None without /dev/shm."""
    if not _usable():
        return None
    fd, name = tempfile.mkstemp(prefix="layermatte-", suffix=".out", dir=SHM)
    os.close(fd)
    return Path(name)


def _open_checked(path: str, peer: str, flags: int) -> tuple[int | None, int | str]:
    """(fd, size) on the client's file, or (None, why not): the rules both
    directions share."""
    if not peer.startswith("unix:"):
        return None, "accepted only over the daemon's unix socket"
    if not os.path.isabs(path):
        return None, "not an absolute path"
    try:
        # O_NONBLOCK: a FIFO named here must not hang the daemon in open().
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        return None, e.strerror
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_uid != os.geteuid():
        why = "belongs to another user"
    if why:
        os.close(fd)
        return None, why
    return fd, st.st_size


def _fill(fd: int, buffers: list[memoryview]) -> bool:
    """Read the file from its start into the buffers; False when it ends first."""
    at = 0
    for buf in buffers:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [buf[got:]], at + got)
            if n == 0:
                return False
            got += n
        at += got
    return True


def write_result(path: str, planes: list[memoryview], peer: str) -> str | None:
    """Write the answer's planes into the client's empty file. None when
    done; else why not, with the file left empty (the caller streams chunks)."""
    fd, size = _open_checked(path, peer, os.O_WRONLY)
    if fd is None:
        return size
    try:
        if size != 0:
            return "not empty (only a fresh empty file is written)"
        try:
            _write_all(fd, planes)
        except OSError as e:   # /dev/shm full: give the room back, send chunks
            os.ftruncate(fd, 0)
            return e.strerror
        return None
    finally:
        os.close(fd)


def read_result(path: Path, targets: list[memoryview]) -> None:
    """Fill the client's buffers from the daemon's answer in the file."""
    want = sum(len(t) for t in targets)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.fstat(fd).st_size != want or not _fill(fd, targets):
            raise OSError(f"the daemon's answer in {path} is not {want} bytes")
    finally:
        os.close(fd)


def read_planes(path: str, buffers: list[memoryview], peer: str) -> str | None:
    """Fill buffers (writable, exactly sized) from the client's file. None
    when done; else why not, and the caller asks for chunks instead: a file
    the daemon cannot see is not an error (an editor in a sandbox such as
    Flatpak has its own /dev/shm), and nothing was sent back yet."""
    fd, size = _open_checked(path, peer, os.O_RDONLY)
    if fd is None:
        return size
    try:
        want = sum(len(b) for b in buffers)
        if size != want:
            return f"has {size} bytes; the header announces {want}"
        return None if _fill(fd, buffers) else "truncated while being read"
    finally:
        os.close(fd)
