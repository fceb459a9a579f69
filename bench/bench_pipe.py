"""The plug-ins' two transports, one run: gRPC in the editor's Python vs the
`layermatte pipe` child (what editors without grpc take: most of them).

Both go through the editors' own client (plugins/common/layermatte_lite.py,
the platform module beside it, as `layermatte install` lays it out) from raw
RGBA bytes, against one daemon with the model resident. Contenders alternate
call by call, order swapped every round; each call changes a block the model
sees, so the daemon's coarse-matte cache never answers. Ratios and differences
are the median of each round's own (the VM's speed drifts within minutes).
Also timed: the pipe program's start-up alone (`layermatte pipe --help`), and
what it imports.

    .venv/bin/python bench/bench_pipe.py [--rounds 9] [--out bench/PIPE.md]

Targets (issue 18): pipe <= 1.15x the gRPC plug-in path at 1024², <= 150 ms
more at 512².
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SIZES = [512, 1024]
PROGRAM = Path(sys.executable).with_name("layermatte")


def plugin_client(name: str, pipe: bool):
    """A copy of the editors' client; pipe=True: as in an editor whose Python has no grpc."""
    from layermatte.system.plugin_install import descriptor_file
    d = Path(tempfile.mkdtemp(prefix="lite-"))
    shutil.copy(ROOT / "plugins" / "common" / "layermatte_lite.py", d)
    shutil.copy(ROOT / "daemon" / "layermatte" / "system" / "platforms.py", d / "layermatte_platforms.py")
    shutil.copy(descriptor_file(), d)
    spec = importlib.util.spec_from_file_location(name, d / "layermatte_lite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if pipe:
        module.grpc_available = lambda: False
    return module


def start_up_ms() -> float:
    t0 = time.perf_counter()
    subprocess.run([str(PROGRAM), "pipe", "--help"], stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000


def imports() -> tuple[int, list[str]]:
    """Modules `layermatte pipe --help` loads, and the heavy ones among them."""
    code = ("import sys; sys.argv = ['layermatte', 'pipe', '--help']\n"
            "from layermatte.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr.split()
    heavy = sorted({m.split(".")[0] for m in out if m.split(".")[0] in
                    ("numpy", "cv2", "onnxruntime", "scipy", "psd_tools", "PIL", "pymatting", "grpc")} |
                   {m for m in out if m in ("google.protobuf", "layermatte.imaging.pipeline", "layermatte.imaging.refine", "layermatte.transport.client",
                                            "layermatte.transport.server", "layermatte.models.engine")})
    return len(out), heavy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "PIPE.md")
    args = ap.parse_args()

    from conftest import CACHE, start_daemon, stop_daemon
    import skimage.data
    from layermatte.models.catalog import Catalog
    os.environ["LAYERMATTE_CACHE"] = str(CACHE)
    Catalog(cache=CACHE).pull(show_progress=False)
    daemon = start_daemon(CACHE)
    os.environ.update(LAYERMATTE_SOCKET=str(daemon.socket), LAYERMATTE_BIN=str(PROGRAM))
    os.environ.pop("LAYERMATTE_TRANSPORT", None)
    with daemon.client() as c:
        c.load_model()
    grpc_lite, pipe_lite = plugin_client("lite_grpc", False), plugin_client("lite_pipe", True)
    assert grpc_lite.grpc_available()
    rows = []
    try:
        for size in SIZES:
            rgb = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_CUBIC)
            layer = np.dstack([rgb, np.full((size, size), 255, np.uint8)])
            counter = iter(range(1 << 30))

            def fresh() -> bytes:
                k = next(counter)
                y, x = (k * 16) % (size - 16), (k * 48) % (size - 16)
                layer[y:y + 16, x:x + 16, :3] ^= 0x80
                return layer.tobytes()
            contenders = {"gRPC": lambda: grpc_lite.matte(size, size, "RGBA8", fresh()),
                          "pipe": lambda: pipe_lite.matte(size, size, "RGBA8", fresh())}
            for fn in contenders.values():
                fn()   # warm-up
            times = {k: [] for k in contenders}
            for r in range(args.rounds):
                order = list(contenders.items())
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    _, summary = fn()
                    times[name].append((time.perf_counter() - t0) * 1000)
                    assert summary["stage_ms"]["inference"] > 0, "the cache answered: not a fair timing"
            rows.append((size, times))
            print(f"{size}²: " + ", ".join(f"{k} {statistics.median(v):.0f} ms" for k, v in times.items()),
                  flush=True)
        start = [start_up_ms() for _ in range(args.rounds)]
    finally:
        stop_daemon(daemon)
    write(args.out, rows, start, imports(), args.rounds)


def write(path: Path, rows, start, imported, rounds: int) -> None:
    import onnxruntime
    n_modules, heavy = imported
    lines = [
        "# Pipe transport vs gRPC (the plug-ins' two paths)",
        "",
        f"Generated by `bench/bench_pipe.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores "
        f"({platform.machine()}), Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}, CPU, default model isnet-general. {rounds} rounds after one "
        "warm-up per contender and size, the two contenders alternating call by call (order "
        "swapped each round); skimage's astronaut resized, a 16x16 block changed per call so that "
        "the model runs every time (the daemon's cache never answers).",
        "",
        "- **gRPC**: the editors' client (`plugins/common/layermatte_lite.py`) in a Python with "
        "grpc, as in Krita or GIMP with python3-grpcio: the layer to the daemon over the unix "
        "socket (through /dev/shm from 1 MiB).",
        "- **pipe**: the same client in a Python without grpc (most editors' own): it starts "
        "`layermatte pipe --protocol 2`, writes the layer to its stdin, reads the matte from its "
        "stdout; the child speaks the daemon's framed transport (`framed.py`: standard library "
        "only, no grpc or protobuf) over the unix socket beside the gRPC one.",
        "",
        "| layer | gRPC | pipe | pipe / gRPC | pipe − gRPC | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for size, times in rows:
        g, p = times["gRPC"], times["pipe"]
        ratio = statistics.median(b / a for a, b in zip(g, p))
        extra = statistics.median(b - a for a, b in zip(g, p))
        target = "≤ 1.15×" if size == 1024 else "≤ 150 ms more"
        met = ratio <= 1.15 if size == 1024 else extra <= 150
        lines.append(f"| {size}×{size} | {statistics.median(g):.0f} ms | {statistics.median(p):.0f} ms | "
                     f"{ratio:.2f}× | {extra:+.0f} ms | {target}: {'met' if met else 'MISSED'} |")
    lines += [
        "",
        "Ratios and differences: the median over rounds of each round's own (two calls seconds "
        "apart), not of the medians.",
        "",
        f"Start-up of the pipe program alone (`layermatte pipe --help`, median of {len(start)}): "
        f"{statistics.median(start):.0f} ms. It loads {n_modules} modules; heavy ones among them: "
        f"{', '.join(heavy) if heavy else 'none (no grpc, protobuf, numpy, OpenCV, onnxruntime, scipy, psd-tools, pipeline)'}.",
        "",
    ]
    path.write_text("\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
