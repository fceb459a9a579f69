"""Batch throughput: the local daemon path vs `--ray` on a local cluster of 1 and 2
worker nodes, same images, same model, one run, written to bench/RAY.md.

    .venv/bin/python bench/bench_ray.py [--images 16] [--out bench/RAY.md]

Needs the ray extra (pip install -e '.[ray]') and scikit-image. Each Ray cluster is a
head node with no CPUs (control plane only) plus N worker nodes of 2 logical CPUs
each (one model actor, one slot for read/refine tasks), all on 127.0.0.1 as separate
processes, removed process by process afterwards. Two figures per contender, both
from outcome timestamps: end to end (from the call, so start-up and model loading
included) and steady state ((n-1) images over first to last finished image).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# Keep Ray on loopback: it would map 127.0.0.1 in the cluster address to the routed IP,
# where these clusters do not listen (the variable is meant for macOS/Windows).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def make_images(folder: Path, n: int) -> None:
    """n distinct real photos ≤ 512 px (skimage's bundled ones: crops, flips, scales)."""
    import cv2
    import skimage.data as d
    from PIL import Image
    base = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket()]
    folder.mkdir(parents=True)
    for i in range(n):
        img = base[i % len(base)]
        k = i // len(base)
        img = img[:, ::-1] if k % 2 else img
        scale = 512 / max(img.shape[:2]) * (1.0 - 0.1 * (k // 2))
        img = cv2.resize(np.ascontiguousarray(img), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")


def rates(t0: float, stamps: list[float]) -> tuple[float, float]:
    stamps = sorted(stamps)
    end_to_end = len(stamps) / (stamps[-1] - t0)
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return end_to_end, steady


def bench_daemon(cache: Path, src: Path, out: Path) -> tuple[float, float, str]:
    from conftest import start_daemon, stop_daemon
    from layermatte.jobs import batch
    from layermatte.jobs.batch import DaemonMatter
    from layermatte.imaging.pipeline import MatteOptions
    handle = start_daemon(cache)
    try:
        with handle.client() as c:
            c.load_model()
        matter, stamps = DaemonMatter(handle.client), []
        jobs = batch.plan(src, out, "png")
        t0 = time.perf_counter()
        summary = batch.run(jobs, matter, "png", MatteOptions(return_foreground=True, decontaminate=True),
                            workers=2, on_outcome=lambda o: stamps.append(time.perf_counter()))
        matter.close()
    finally:
        stop_daemon(handle)
    assert len(summary.done) == len(jobs), summary.line()
    return *rates(t0, stamps), "daemon, model loaded, --jobs 2"


def bench_ray(workers: int, src: Path, out: Path) -> tuple[float, float, str]:
    from test_raybatch import local_cluster
    from layermatte.jobs import raybatch
    from layermatte.imaging.pipeline import MatteOptions
    stamps: list[float] = []
    with local_cluster(head_cpus=0, worker_cpus=(2,) * workers) as address:
        t0 = time.perf_counter()
        summary, layout = raybatch.run(str(src), str(out), "png",
                                       MatteOptions(return_foreground=True, decontaminate=True),
                                       address=address,
                                       on_outcome=lambda o, n: stamps.append(time.perf_counter()))
    assert len(summary.done) == len(stamps) and not summary.failed, summary.line()
    return *rates(t0, stamps), layout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RAY.md")
    args = ap.parse_args()
    import ray
    from conftest import CACHE
    from layermatte.models.catalog import Catalog
    os.environ["LAYERMATTE_CACHE"] = str(CACHE)
    Catalog(cache=CACHE).pull(show_progress=False)
    work = Path(tempfile.mkdtemp(prefix="lm-bench-ray-"))
    try:
        make_images(work / "in", args.images)
        results = [("local daemon (`layermatte batch`)", os.getloadavg()[0],
                    *bench_daemon(CACHE, work / "in", work / "daemon"))]
        for n in (1, 2):
            results.append((f"Ray, {n} worker node{'s' if n > 1 else ''}", os.getloadavg()[0],
                            *bench_ray(n, work / "in", work / f"ray{n}")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    r1 = results[1][3]
    lines = [
        "# Batch throughput: local daemon vs Ray (one run)", "",
        f"`bench/bench_ray.py`, {args.images} real photos (skimage, ≤ 512 px, PNG), default model "
        f"`isnet-general` (1024² input), cut-outs with decontamination, CPU only. Machine: {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}. The "
        "machine is shared with other work: its 1-minute load average before each contender is shown.", "",
        "| path | layout | load before | images/s end to end | images/s steady | steady vs Ray 1 worker |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, load, e2e, steady, layout in results:
        lines.append(f"| {name} | {layout} | {load:.2f} | {e2e:.3f} | {steady:.3f} | {steady / r1:.2f}x |")
    lines += ["", "End to end counts from the call (Ray: connecting, starting actors, loading the model "
              "in each actor); steady state is (n-1) images over first to last finished image. "
              "Worker nodes are separate raylets on this one machine: 2 logical CPUs each (one "
              "model actor with 1 onnxruntime thread, one read/refine slot), so 2 workers put 2 "
              "inferences in flight on the machine's cores, the daemon runs one at a time on all "
              "cores. On separate machines each worker node brings its own cores; see the README "
              "for the expected scaling."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
