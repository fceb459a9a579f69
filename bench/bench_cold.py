"""Cold first cut-out vs a warm one at 1024² (issue 21: the first click after
install costs no more than a normal one plus the model load).

Each round is a new interpreter with an empty NUMBA_CACHE_DIR and no
bytecode writes, so nothing cached by an earlier request helps: it imports
the pipeline, loads the model (timed apart), cuts once (cold), then cuts
again WARM times (warm: their median). Both quality modes, decontamination
on, as the default `cut` does.

    .venv/bin/python bench/bench_cold.py [--rounds 3] [--out bench/COLD.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM = 3
CHILD = r"""
import json, os, statistics, sys, time
t0 = time.perf_counter()
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import cv2, skimage.data
from conftest import CACHE
from layermatte.imaging import formats, pipeline
from layermatte.models.catalog import Catalog
from layermatte.models.engine import Engine
from layermatte.imaging.pipeline import MatteOptions
t_import = time.perf_counter() - t0
os.environ["LAYERMATTE_CACHE"] = str(CACHE)
cat = Catalog(cache=CACHE)
cat.pull(show_progress=False)
t0 = time.perf_counter()
model, _ = Engine(cat).load(None)
t_load = time.perf_counter() - t0
img = cv2.resize(skimage.data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
fmt = formats.lookup(formats.BY_NAME["RGB8"])
out = {"import": t_import, "load": t_load}
for q in ("fast", "hq"):
    opts = MatteOptions(quality=q, decontaminate=True)
    times = []
    for _ in range(1 + int(sys.argv[2])):
        t0 = time.perf_counter()
        pipeline.run(img, fmt, opts, model=model, threads=2)
        times.append(time.perf_counter() - t0)
    out[q] = {"cold": times[0], "warm": statistics.median(times[1:])}
out["jit"] = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "pymatting", "llvmlite"))
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "COLD.md")
    args = ap.parse_args()
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="numba-cold-") as nc:
            env = dict(os.environ, NUMBA_CACHE_DIR=nc, PYTHONDONTWRITEBYTECODE="1")
            p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(WARM)], env=env,
                               capture_output=True, text=True, check=True)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    lines = [
        "# Cold first cut-out vs warm (bench/bench_cold.py)", "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{args.rounds} fresh interpreters (empty NUMBA_CACHE_DIR, no bytecode writes), 1024² astronaut, "
        f"decontamination on, threads=2; medians over rounds, warm = median of {WARM} repeats in the same process.", "",
        f"Import of the pipeline: {med(lambda r: r['import']):.2f} s; model load: {med(lambda r: r['load']):.2f} s "
        "(both paid before the first request, at the daemon's start-up).", "",
        "| mode | first cut (cold) | warm cut | cold − warm |", "|---|---|---|---|"]
    for q in ("fast", "hq"):
        c, w = med(lambda r: r[q]["cold"]), med(lambda r: r[q]["warm"])
        lines.append(f"| {q} | {c:.2f} s | {w:.2f} s | {c - w:+.2f} s |")
    jit = sorted({m for r in runs for m in r["jit"]})
    lines += ["", f"JIT modules imported by the requests: {', '.join(jit) if jit else 'none'} "
              "(target: cold − warm ≤ 5 s; hq and decontamination are numpy/OpenCV, nothing to compile).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
