"""Editor-side client for the layermatte daemon (GIMP and Krita plug-ins).

Runs inside the editor's own Python, which may be old (Debian: grpcio 1.51,
protobuf 4.21) or have no grpc at all (Windows/macOS/Flatpak/AppImage
bundles). So this module uses only the standard library, plus grpc/protobuf
when they import:

* gRPC transport: message classes are built at run time from the shipped
  descriptor set (layermatte_v1.desc) and calls go through grpc's generic
  API, which works with any protobuf runtime since 3.x.
* Pipe transport: otherwise the `layermatte pipe` program does the call;
  pixels go to its stdin, the matte comes back on stdout, progress as JSON
  lines on stderr.

Pixels and mattes are plain bytes; no numpy needed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DESCRIPTOR_FILE = HERE / "layermatte_v1.desc"
CONFIG_FILE = HERE / "layermatte_lite.json"  # written by `layermatte install`
CHUNK = 1 << 20

FORMATS = {"RGBA8": (1, 4), "RGB8": (2, 3), "GRAY8": (3, 1), "GRAYA8": (4, 2), "BGRA8": (5, 4),
           "RGBA16": (6, 8), "RGB16": (7, 6), "GRAY16": (8, 2), "GRAYA16": (9, 4),
           "RGBAF32": (10, 16), "GRAYAF32": (11, 8), "RGBF32": (12, 12), "GRAYF32": (13, 4)}
OPTION_FLAGS = {"feather": "--feather", "shift": "--shift", "smooth": "--smooth",
                "contrast": "--contrast"}
QUALITY = {"fast": 0, "hq": 1}  # options["quality"] -> Refinement.quality
EIGHT_BIT = {code for name, (code, _) in FORMATS.items() if name.endswith("8")}  # RGB8 colours back


class LayermatteError(Exception):
    """Shown to the user as is, in the editor's own error dialog."""


class Cancelled(LayermatteError):
    pass


def _config() -> dict:
    try:
        return json.loads(CONFIG_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _load_platforms():
    """layermatte's platform module: copied next to this file by `layermatte install`,
    or the checkout's own. Loaded by path, so it works as a top-level module (GIMP)
    and inside a package (Krita) alike."""
    import importlib.util
    for path in (HERE / "layermatte_platforms.py",
                 HERE.parent.parent / "daemon" / "layermatte" / "system" / "platforms.py"):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("layermatte_platforms", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault("layermatte_platforms", module)
            spec.loader.exec_module(module)
            return module
    raise LayermatteError("the plug-in is incomplete (layermatte_platforms.py is missing): "
                          "run `layermatte install gimp` or `layermatte install krita` again")


platforms = _load_platforms()


def resolve_address() -> str:
    """LAYERMATTE_ADDRESS / LAYERMATTE_SOCKET, the install-time record, else the
    user's own daemon (a unix socket; on Windows the TCP address it published)."""
    if os.environ.get("LAYERMATTE_ADDRESS"):
        return os.environ["LAYERMATTE_ADDRESS"]
    sock = os.environ.get("LAYERMATTE_SOCKET") or _config().get("socket")
    if sock:
        return "unix:" + str(Path(sock).absolute())
    return platforms.default_endpoint().address


def daemon_token(address: str):
    """The token a TCP daemon needs: LAYERMATTE_TOKEN, else the user's own daemon's."""
    if os.environ.get("LAYERMATTE_TOKEN"):
        return os.environ["LAYERMATTE_TOKEN"]
    own = platforms.default_endpoint()
    return own.token() if address and address == own.address else None


def layermatte_command() -> list[str]:
    """How to run the `layermatte` program: env, install-time record, PATH."""
    if os.environ.get("LAYERMATTE_BIN"):
        return [os.environ["LAYERMATTE_BIN"]]
    recorded = _config().get("command")
    # Inside Flatpak the recorded program is the host's (run through flatpak-spawn):
    # the sandbox cannot see it, so it is taken as recorded.
    if recorded and (platforms.in_flatpak() or Path(recorded[0]).exists()):
        return list(recorded)
    found = shutil.which("layermatte")
    if found:
        return [found]
    if recorded:
        raise LayermatteError(f"the layermatte program recorded at install time ({recorded[0]}) no "
                              "longer exists (was Python upgraded or its environment removed?). "
                              "Install layermatte again, then run `layermatte install gimp` or "
                              "`layermatte install krita`.")
    raise LayermatteError("the layermatte program was not found. Install it (pip install "
                          "'layermatte[cpu]') and run `layermatte install gimp` or "
                          "`layermatte install krita`.")


# -- gRPC transport -------------------------------------------------------------
class _Grpc:
    def __init__(self, address: str):
        import grpc
        from google.protobuf import descriptor_pb2, descriptor_pool

        self.grpc = grpc
        fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_FILE.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for fdp in fds.file:
            pool.Add(fdp)
        self.m = {name: _message_class(pool, f"layermatte.v1.{name}") for name in
                  ("MatteRequest", "MatteResponse", "MatteHeader", "Chunk", "Refinement")}
        self.health_req = None
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 16 << 20)])
        self.address = address
        token = daemon_token(address)
        self.metadata = (("authorization", "Bearer " + token),) if token else ()

    def ping(self, timeout: float = 1.0) -> bool:
        """Reachability without the health proto: ListModels answers or not."""
        call = self.channel.unary_unary("/layermatte.v1.Matting/ListModels",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        try:
            call(b"", timeout=timeout, metadata=self.metadata)
            return True
        except self.grpc.RpcError as e:
            if e.code() == self.grpc.StatusCode.UNAUTHENTICATED:   # it answers, but not to us
                raise LayermatteError(f"the layermatte daemon at {self.address} refused this "
                                      "plug-in's token (missing or wrong): set LAYERMATTE_TOKEN to "
                                      "the contents of its token file, or unset it") from None
            return False

    def matte(self, header: dict, planes, progress, cancel):
        m = self.m
        ref = m["Refinement"](**header.pop("refinement"))
        hdr = m["MatteHeader"](refinement=ref, **header)
        # On the unix socket, big layers go over in a file in /dev/shm (the
        # daemon's localfile.py): many times faster than chunks.
        shared = _shared_file(planes) if self.address.startswith("unix:") else None
        if shared:
            hdr.pixels_file = shared
        n = header["width"] * header["height"]
        sizes = (n * (2 if header["matte_depth"] == 1 else 1),
                 n * 3 * (1 if header["format"] in EIGHT_BIT else 2) if header.get("return_foreground") else 0)
        # ... and the matte comes back in a file the daemon fills, when it can.
        answer = _empty_file() if shared and sizes[0] >= CHUNK else None
        if answer:
            hdr.result_file = answer
        decided, from_file = threading.Event(), [False]

        def requests():
            yield m["MatteRequest"](header=hdr)
            if shared:
                decided.wait()
                if from_file[0]:
                    return
            for plane, data in planes:
                view = memoryview(data)
                for off in range(0, len(view), CHUNK):
                    yield m["MatteRequest"](chunk=m["Chunk"](plane=plane, data=bytes(view[off:off + CHUNK])))

        call = self.channel.stream_stream(
            "/layermatte.v1.Matting/Matte", request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=m["MatteResponse"].FromString)(requests(), metadata=self.metadata)
        stop = threading.Event()

        def watch():
            while not stop.wait(0.1):
                if cancel is not None and cancel.is_set():
                    call.cancel()
                    return
        threading.Thread(target=watch, daemon=True).start()
        # Sized up front (GRAY8/16 matte, RGB8/16 colours): chunks land in place.
        out, fg = bytearray(sizes[0]), bytearray(sizes[1])
        summary = None
        try:
            for resp in call:
                kind = resp.WhichOneof("kind")
                if not decided.is_set():   # the first answer: did the daemon read the file?
                    from_file[0] = kind == "progress" and resp.progress.from_file
                    decided.set()
                    _remove(shared)
                if kind == "progress" and progress:
                    progress(resp.progress.stage, resp.progress.fraction)
                elif kind == "chunk" and resp.chunk.plane in (2, 3):
                    target = out if resp.chunk.plane == 2 else fg
                    end = resp.chunk.offset + len(resp.chunk.data)
                    if end > len(target):
                        raise LayermatteError("the daemon sent more data than the layer holds")
                    target[resp.chunk.offset:end] = resp.chunk.data
                elif kind == "summary":
                    summary = {"model_id": resp.summary.model_id, "provider": resp.summary.provider,
                               "stage_ms": dict(resp.summary.stage_ms)}
                    if resp.summary.result_in_file:
                        out, fg = _read_answer(answer, sizes)
        except self.grpc.RpcError as e:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled") from None
            if e.code() == self.grpc.StatusCode.UNAVAILABLE:
                raise LayermatteError(f"the layermatte daemon stopped answering ({e.details()})") from None
            raise LayermatteError(e.details() or e.code().name) from None
        finally:
            stop.set()
            decided.set()
            _remove(shared)
            _remove(answer)
        if summary is None:
            raise LayermatteError("the daemon closed the connection before finishing")
        if header.get("return_foreground"):
            summary["foreground"] = bytes(fg)   # no copy when already bytes
        return bytes(out), summary


def _shared_file(planes) -> str | None:
    """The planes in a private file in /dev/shm; None when small or no room."""
    import tempfile
    if sum(len(data) for _, data in planes) < CHUNK or not os.access("/dev/shm", os.W_OK):
        return None
    fd, name = tempfile.mkstemp(prefix="layermatte-", suffix=".raw", dir="/dev/shm")
    try:
        with os.fdopen(fd, "wb") as f:
            for _, data in planes:
                f.write(data)
    except OSError:
        _remove(name)
        return None
    return name


def _empty_file() -> str | None:
    import tempfile
    try:
        fd, name = tempfile.mkstemp(prefix="layermatte-", suffix=".out", dir="/dev/shm")
    except OSError:
        return None
    os.close(fd)
    return name


def _read_answer(name: str | None, sizes) -> tuple[bytes, bytes]:
    """The matte (and colours) the daemon wrote into our answer file."""
    if not name:
        raise LayermatteError("the daemon answered in a file this plug-in did not offer")
    try:
        with open(name, "rb") as f:
            planes = tuple(f.read(size) for size in sizes)
    except OSError as e:
        raise LayermatteError(f"could not read the daemon's answer: {e}") from None
    if tuple(len(p) for p in planes) != tuple(sizes):
        raise LayermatteError("the daemon's answer file is shorter than the layer")
    return planes


def _remove(name: str | None) -> None:
    if name:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def _message_class(pool, full_name: str):
    desc = pool.FindMessageTypeByName(full_name)
    try:
        from google.protobuf import message_factory
        if hasattr(message_factory, "GetMessageClass"):
            return message_factory.GetMessageClass(desc)
        return message_factory.MessageFactory(pool).GetPrototype(desc)
    except ImportError:  # pragma: no cover - very old protobuf
        raise


def grpc_available() -> bool:
    if os.environ.get("LAYERMATTE_TRANSPORT") == "pipe":
        return False
    try:
        import grpc  # noqa: F401
        from google.protobuf import descriptor_pool  # noqa: F401
    except ImportError:
        return False
    return DESCRIPTOR_FILE.is_file()


# -- the call the plug-ins make ----------------------------------------------------
def start_daemon(address: str, timeout: float = 60.0) -> str:
    """Start the user's daemon in the background (gRPC transport; the pipe
    program starts it itself) and return the address it answers at: the unix
    socket, or on Windows the TCP address it publishes once it listens."""
    own = platforms.default_endpoint()
    if address.startswith("unix:"):
        args = ["serve", "--socket", address[5:]]
    elif not platforms.unix_sockets_supported() and address in ("", own.address):
        args = ["serve"]
    else:
        raise LayermatteError(f"no layermatte daemon answers at {address}. Start it with "
                              "`layermatte serve`.")
    cmd = platforms.host_command(layermatte_command() + args)
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=platforms.clean_child_env(os.environ),
                         **platforms.detached_popen_kwargs())
    except OSError as e:
        raise LayermatteError(f"could not start the layermatte program ({cmd[0]}: "
                              f"{e.strerror or e}). Install layermatte again and run "
                              f"`layermatte install {_editor()}`.") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        target = address if address.startswith("unix:") else platforms.default_endpoint().address
        if target and _Grpc(target).ping(0.5):
            return target
        time.sleep(0.2)
    raise LayermatteError(f"started the layermatte daemon but it did not answer within "
                          f"{timeout:.0f} s. Run `layermatte serve` in a terminal to see why.")


def matte(width: int, height: int, fmt: str, pixels: bytes, *, options: dict | None = None,
          guide_mask: bytes | None = None, depth16: bool = False, progress=None, cancel=None,
          autostart: bool = True) -> tuple[bytes, dict]:
    """The layer's matte as width*height bytes (GRAY8, or GRAY16 little-endian
    with depth16). options: model, feather, shift, smooth, contrast, quality ("fast"/"hq"),
    and foreground=True (+ decontaminate) to also get the cut-out's colours in
    summary["foreground"]: RGB8 for 8-bit formats, RGB16 little-endian otherwise."""
    if fmt not in FORMATS:
        raise LayermatteError(f"unsupported pixel format {fmt}")
    code, bpp = FORMATS[fmt]
    if len(pixels) != width * height * bpp:
        raise LayermatteError(f"layer data is {len(pixels)} bytes, expected {width * height * bpp}")
    options = dict(options or {})
    address = resolve_address()
    if grpc_available():
        client = _Grpc(address)
        if not client.ping():
            if not autostart:
                raise LayermatteError(f"no layermatte daemon answers at {address}. "
                                      "Start it with `layermatte serve`.")
            address = start_daemon(address)
            client = _Grpc(address)
        header = {"request_id": uuid.uuid4().hex[:12], "width": width, "height": height,
                  "format": code, "model_id": options.get("model", ""),
                  "matte_depth": 1 if depth16 else 0, "source": 1 if guide_mask is not None else 0,
                  "refinement": dict({k + ("_px" if k in ("feather", "shift") else ""): float(options.get(k, 0))
                                      for k in OPTION_FLAGS}, quality=QUALITY[options.get("quality") or "fast"])}
        header["return_foreground"] = bool(options.get("foreground"))
        header["refinement"]["decontaminate"] = bool(options.get("decontaminate"))
        planes = [(0, pixels)] + ([(1, guide_mask)] if guide_mask is not None else [])
        return client.matte(header, planes, progress, cancel)
    return _pipe(address, width, height, fmt, pixels, options, guide_mask, depth16, progress,
                 cancel, autostart)


# -- pipe transport ------------------------------------------------------------------
# `layermatte pipe --protocol N` (daemon/layermatte/cli/pipe.py says what N means):
# the layer on the child's stdin, which stays open as its lifeline (closing it
# cancels the request); the matte on its stdout; JSON lines on its stderr:
# a hello first, a heartbeat every 2 s, progress, then a summary or an error.
PIPE_PROTOCOL = 2
PIPE_START_TIMEOUT = 60.0    # s for the child's hello (a cold start of Python on a slow disk)
PIPE_SILENCE_TIMEOUT = 30.0  # s without a word from a child that said hello: it is hung
PIPE_STOP_GRACE = 1.0        # s a cancelled child gets to cancel its request, then it is killed


def _editor() -> str:
    if "krita" in sys.modules:
        return "krita"
    if "gi.repository.Gimp" in sys.modules:
        return "gimp"
    return "gimp` or `layermatte install krita"


def _mismatch(program: str) -> LayermatteError:
    mine = _config().get("version") or "unknown"
    return LayermatteError(f"the plug-in is version {mine} (pipe protocol {PIPE_PROTOCOL}), the "
                           f"layermatte program is {program}: run `layermatte install {_editor()}` "
                           "again with the layermatte you use")


def _pipe_command(address, width, height, fmt, options, guide, depth16, autostart) -> list[str]:
    cmd = ["pipe", "--protocol", str(PIPE_PROTOCOL), "--width", str(width),
           "--height", str(height), "--format", fmt]
    if address:
        cmd += ["--address", address]
    if options.get("model"):
        cmd += ["--model", options["model"]]
    for key, flag in OPTION_FLAGS.items():
        if options.get(key):
            cmd += [flag, str(float(options[key]))]
    if options.get("quality"):
        cmd += ["--quality", options["quality"]]
    if guide:
        cmd.append("--guide")
    if depth16:
        cmd.append("--depth16")
    if not autostart:
        cmd.append("--no-autostart")
    if options.get("foreground"):
        cmd.append("--foreground")
        if options.get("decontaminate"):
            cmd.append("--decontaminate")
    return platforms.host_command(layermatte_command() + cmd)


class _Child:
    """One `layermatte pipe` run. Every pipe is read or written by a thread of
    its own, so this (the caller's) thread only watches the clock and `cancel`:
    a child that dies, hangs or floods cannot block or kill the editor."""

    def __init__(self, cmd: list[str], out_size: int, progress):
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0,
                                         env=platforms.clean_child_env(os.environ),
                                         **platforms.hidden_popen_kwargs())
        except OSError as e:
            if platforms.in_flatpak():
                raise LayermatteError(f"this Flatpak editor cannot run the host's layermatte "
                                      f"({cmd[0]}: {e.strerror or e}). On the host, run "
                                      f"`layermatte install {_editor()} --flatpak` and restart "
                                      "the editor.") from None
            raise LayermatteError(f"could not start the layermatte program ({cmd[0]}: "
                                  f"{e.strerror or e}). Install layermatte again and run "
                                  f"`layermatte install {_editor()}`.") from None
        self.progress = progress
        self.out = bytearray(out_size)
        self.got = 0
        self.hello, self.summary, self.errors, self.text = None, None, [], []
        self.heard = time.monotonic()
        self.readers = [threading.Thread(target=self._read_events, daemon=True),
                        threading.Thread(target=self._read_answer, daemon=True)]
        for t in self.readers:
            t.start()

    def _read_events(self):
        import io
        for line in io.BufferedReader(self.proc.stderr):
            self.heard = time.monotonic()
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            if not isinstance(ev, dict):   # not ours: a traceback, a shell's complaint...
                self.text = (self.text + [line.decode("utf-8", "replace").rstrip()])[-30:]
                continue
            if "hello" in ev:
                self.hello = ev["hello"]
            elif "progress" in ev and self.progress:
                self.progress(ev.get("stage", ""), ev["progress"])
            elif "summary" in ev:
                self.summary = ev["summary"]
            elif "error" in ev:
                self.errors.append(ev)

    def _read_answer(self):
        view = memoryview(self.out)
        while True:
            if self.got < len(view):
                n = self.proc.stdout.readinto(view[self.got:])
            else:   # more than announced: drained (the child must not block), then refused
                n = len(self.proc.stdout.read(CHUNK))
            if not n:
                return
            self.heard = time.monotonic()
            self.got += n

    def feed(self, planes):
        """Write the planes on a thread of its own with SIGPIPE blocked there: an
        editor whose Python leaves SIGPIPE at its default (Krita) would otherwise
        be killed when the child exits before it has read them all."""
        def write():
            import signal
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
            try:
                for data in planes:
                    view = memoryview(data)
                    for off in range(0, len(view), CHUNK):
                        self.proc.stdin.write(view[off:off + CHUNK])
            except (OSError, ValueError):   # the child is gone; its stderr says why
                pass
        self.feeder = threading.Thread(target=write, daemon=True)
        self.feeder.start()

    def wait(self, cancel):
        """Until the child has exited and its answer has ended; cancel and the
        clock are watched meanwhile."""
        while self.proc.poll() is None or self.readers[1].is_alive():
            if cancel is not None and cancel.is_set():
                self.stop()
                raise Cancelled("cancelled")
            limit = PIPE_SILENCE_TIMEOUT if self.hello else PIPE_START_TIMEOUT
            if time.monotonic() - self.heard > limit:
                self.kill()
                what = "stopped answering" if self.hello else "did not start"
                raise LayermatteError(f"the layermatte program {what}: no word from it for "
                                      f"{limit:.0f} s. {self._last_words()}".strip())
            self.readers[1].join(0.05)
        self.readers[0].join(5)
        self._close()

    def stop(self):
        """Cancel: the end of stdin makes the child cancel its request in the
        daemon; one that does not exit promptly is killed (which the daemon
        sees as a cancel too)."""
        if self.feeder.is_alive():   # still writing the layer: no request was sent yet
            self.kill()
            return
        self._close_stdin()
        try:
            self.proc.wait(PIPE_STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close()

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self._close()

    def _close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _close(self):
        self._close_stdin()
        for t in self.readers:
            t.join(1)

    def _last_words(self) -> str:
        lines = [l for l in self.text if l.strip()]
        return f"It said: {lines[-1]}" if lines else ""

    def result(self) -> tuple[bytes, dict]:
        code = self.proc.returncode
        mismatch = next((e["mismatch"] for e in self.errors if e.get("mismatch")), None)
        if mismatch:
            raise _mismatch(f"{mismatch.get('version')} (pipe protocols "
                            f"{', '.join(map(str, mismatch.get('protocols', [])))})")
        if code == 0 and self.summary is not None and self.got == len(self.out):
            return bytes(self.out), self.summary
        if self.errors:
            raise LayermatteError(self.errors[-1]["error"])
        said = " ".join(self.text)
        if not self.hello and "--protocol" in said and ("unrecognized" in said or "usage:" in said):
            raise _mismatch("an older one, without pipe protocols")
        if self.hello is None and code == 2 and ("usage:" in said or "layermatte: error:" in said):
            raise _mismatch(f"another version. {self._last_words()}")   # refused our flags
        how = f"was killed by signal {-code}" if code and code < 0 else f"failed (exit {code})"
        if code == 0:
            how = f"sent {self.got} bytes for an answer of {len(self.out)}"
        hint = ""
        if self.hello is None and platforms.in_flatpak():   # never reached the host's program
            hint = (f" If the Flatpak sandbox refused to run it, run `layermatte install "
                    f"{_editor()} --flatpak` on the host and restart the editor.")
        raise LayermatteError(f"the layermatte program {how}. {self._last_words()}".strip() + hint)


def _pipe(address, width, height, fmt, pixels, options, guide_mask, depth16, progress, cancel,
          autostart):
    cmd = _pipe_command(address, width, height, fmt, options, guide_mask is not None, depth16,
                        autostart)
    matte_size = width * height * (2 if depth16 else 1)
    want_fg = bool(options.get("foreground"))
    fg_size = width * height * 3 * (1 if FORMATS[fmt][0] in EIGHT_BIT else 2) if want_fg else 0
    child = _Child(cmd, matte_size + fg_size, progress)
    child.feed([pixels] + ([guide_mask] if guide_mask is not None else []))
    child.wait(cancel)
    data, summary = child.result()
    summary = dict(summary)
    if want_fg:
        summary["foreground"] = data[matte_size:]
    return data[:matte_size], summary
