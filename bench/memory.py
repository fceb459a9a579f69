"""Daemon memory (issue 9): resident size at idle with the default model
loaded, peak during a 6000x4000 request, and growth across many requests.

A real `layermatte serve` (unix socket) with the real model; VmRSS and VmHWM
read from /proc/PID/status. The peak of one request is VmHWM after resetting
it (`echo 5 > /proc/PID/clear_refs`) just before the request. Requests use
photos with a per-request change the model can see, so every one runs the
model (the coarse-matte cache never answers).

    .venv/bin/python bench/memory.py [--requests 200] [--out bench/MEMORY.md]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SIZES = [(1024, 1024), (2048, 1536), (800, 600), (3000, 2000)]
IDLE_S = 5


def CONTENDERS(options):
    """The 6000x4000 peak requests: a matte, a cut-out, and the cut-out as
    `layermatte cut` asks for it by default (decontaminated colours)."""
    return (("matte", options()), ("cut-out", options(return_foreground=True)),
            ("decontaminated cut-out", options(return_foreground=True, decontaminate=True)))


def status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_for_release(log: Path, count: int, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_text().count("inference memory released") >= count:
            return True
        time.sleep(0.5)
    return False


def photo(w: int, h: int, k: int) -> np.ndarray:
    import skimage.data
    base = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()][k % 3]
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_AREA)
    y, x = (k * 37) % (h - 32), (k * 53) % (w - 32)
    img[y:y + 32, x:x + 32] ^= 0x80          # visible to the model: no cache hit
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "MEMORY.md")
    args = ap.parse_args()

    from conftest import CACHE, start_daemon, stop_daemon
    from layermatte.models.catalog import Catalog
    from layermatte.imaging.pipeline import MatteOptions

    model_mib = Catalog(cache=CACHE).pull(show_progress=False).stat().st_size / 2**20
    d = start_daemon(CACHE, "--idle-release", str(IDLE_S))
    pid, r = d.proc.pid, {}
    try:
        with d.client() as c:
            c.load_model()
            r["warm"] = status(pid)["VmRSS"]                      # warm-up run's working set held
            wait_for_release(d.log, 1)
            r["idle"] = status(pid)["VmRSS"]
            for name, opts in CONTENDERS(MatteOptions):
                img = photo(6000, 4000, len(r))
                before = status(pid)["VmRSS"]
                reset_peak(pid)
                c.matte(img, options=opts)
                r[f"peak {name}"] = (before, status(pid)["VmHWM"], status(pid)["VmRSS"])
                del img
            rss, times = [], []
            for k in range(args.requests):
                w, h = SIZES[k % len(SIZES)]
                t0 = time.perf_counter()
                out = c.matte(photo(w, h, k))
                times.append(time.perf_counter() - t0)
                assert out.summary["stage_ms"]["inference"] > 0, "the cache answered"
                rss.append(status(pid)["VmRSS"])
                if (k + 1) % 20 == 0:
                    print(f"{k + 1} requests: VmRSS {rss[-1]} MiB", flush=True)
            r["series"], r["seconds"] = rss, sum(times)
            wait_for_release(d.log, 2)
            r["idle after"] = status(pid)["VmRSS"]
    finally:
        stop_daemon(d)
    write(args.out, r, model_mib, args.requests)


def write(path: Path, r: dict, model_mib: float, n: int) -> None:
    s = r["series"]
    k = max(1, min(20, len(s) // 4))
    first, last = statistics.median(s[k:2 * k]), statistics.median(s[-k:])
    slope = float(np.polyfit(np.arange(k, len(s)), s[k:], 1)[0]) * 100 if len(s) > 2 * k else 0.0
    budget = model_mib + 300
    lines = [
        "# Daemon memory", "",
        "Reproduce: `.venv/bin/python bench/memory.py` (about 10 minutes on 2 cores).", "",
        f"Generated on {time.strftime('%Y-%m-%d')}: {platform.platform()}, CPU execution provider, "
        f"default model isnet-general ({model_mib:.0f} MiB file). `serve --idle-release {IDLE_S}` "
        "(the default is 60 s). VmRSS/VmHWM from /proc.", "",
        "| what | MiB | target |", "|---|---:|---|",
        f"| after start and warm-up (the warm-up run's working set held) | {r['warm']} | – |",
        f"| **idle**, after the idle release | **{r['idle']}** | ≤ model + 300 = {budget:.0f} |",
    ]
    for name, _ in CONTENDERS(lambda **kw: None):
        before, hwm, after = r[f"peak {name}"]
        lines.append(f"| **peak** during one 6000×4000 RGB {name} request (VmHWM; RSS before {before}, "
                     f"after {after}) | **{hwm}** | ≤ 1536 |")
    lines += [
        f"| after request {k}..{2 * k} (median) | {first:.0f} | – |",
        f"| after the last {k} of {n} requests (median) | {last:.0f} | no growth |",
        f"| trend over requests {k}..{n} (linear fit) | {slope:+.1f} per 100 requests | ≈ 0 |",
        f"| idle again after the {n} requests | {r['idle after']} | as idle |", "",
        f"{n} requests of {', '.join(f'{w}×{h}' for w, h in SIZES)} (cycled), each running the model, "
        f"took {r['seconds']:.0f} s. VmRSS after every request:", "",
        "```", " ".join(str(v) for v in s), "```", "",
    ]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
