"""Bounded load test of the daemon, and its memory with a 12000x9000 layer in flight.

Load: C concurrent clients x R requests each (8 x 50 by default), half of the
clients on the unix socket and half on loopback TCP, layers of mixed sizes from
real photos. Most requests refine a provided guide mask (no model); a fraction
run the model, each on a layer no other request uses (so the daemon's coarse
cache cannot answer it). Every result is compared with a single-client run of
the same input on a separate, fresh daemon. The daemon under load has a short
queue so that RESOURCE_EXHAUSTED (queue full) happens: clients wait and retry,
as the CLI's batch does; any other error is a failure. Reported: errors, busy
retries, result equality, daemon RSS before/after, p50/p95 latency, throughput.

Memory: a fresh daemon (default limits) gets one 12000x9000 RGBA8 layer and
several small ones at once; its VmRSS is sampled and VmHWM read from
/proc/PID/status; also the memory a header alone makes the daemon commit.

    .venv/bin/python bench/load.py                        # both parts, writes bench/LOAD.md
    .venv/bin/python bench/load.py --clients 4 --requests 5 --no-memory --out /tmp/LOAD.md
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (width, height, weight): mostly small and medium layers, a few large ones
SIZES = [(256, 256, 4), (640, 480, 3), (1280, 960, 2), (2400, 1600, 1)]
MODEL_SIZES = [(512, 512), (800, 600)]


@dataclass
class Input:
    name: str
    pixels: np.ndarray
    guide: np.ndarray | None      # None: the model runs

    @property
    def megapixels(self) -> float:
        return self.pixels.shape[0] * self.pixels.shape[1] / 1e6


@dataclass
class Outcome:
    client: int
    transport: str
    input: str
    latency_s: float = 0.0        # first attempt to result, busy waits included
    service_s: float = 0.0        # the successful attempt alone
    busy: int = 0
    error: str = ""
    max_diff: int = -1


@dataclass
class LoadReport:
    clients: int
    requests: int
    queue: int
    outcomes: list[Outcome] = field(default_factory=list)
    rss_before_mib: int = 0
    rss_after_mib: list[int] = field(default_factory=list)   # after each round
    rss_peak_mib: int = 0
    wall_s: list[float] = field(default_factory=list)
    reference_s: float = 0.0

    @property
    def last(self) -> list[Outcome]:
        """Outcomes of the last round (latencies are reported from it)."""
        n = self.clients * self.requests
        return self.outcomes[-n:]


def photos() -> list[np.ndarray]:
    import skimage.data as d
    return [d.astronaut(), d.chelsea(), d.coffee()]


def make_input(name: str, photo: np.ndarray, w: int, h: int, rng, with_guide: bool) -> Input:
    """A real photo at w x h, shifted by a random crop so every input differs; the
    guide is a blocky (64x) copy of a soft ellipse, like an editor's quick selection."""
    ph, pw = photo.shape[:2]
    x0, y0 = int(rng.integers(0, pw // 8)), int(rng.integers(0, ph // 8))
    crop = photo[y0:y0 + ph - ph // 8, x0:x0 + pw - pw // 8]
    pixels = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if w < pw else cv2.INTER_CUBIC)
    guide = None
    if with_guide:
        yy, xx = np.mgrid[0:64, 0:64]
        cy, cx = rng.uniform(24, 40, size=2)
        small = np.where(((yy - cy) / 26) ** 2 + ((xx - cx) / 20) ** 2 < 1, 255, 0).astype(np.uint8)
        guide = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    return Input(name, np.ascontiguousarray(pixels), guide)


def plan(clients: int, requests: int, model_fraction: float, seed: int, n_guide_inputs: int = 16,
         max_mp: float = 4.0) -> tuple[list[Input], list[list[int]]]:
    """(inputs, per-client list of input indexes). Guide inputs are shared among
    requests; each model request has an input of its own."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    ph = photos()
    sizes = [s for s in SIZES if s[0] * s[1] <= max_mp * 1e6 for _ in range(s[2])]
    inputs = [make_input(f"guide-{i}-{w}x{h}", ph[i % 3], w, h, rng, True)
              for i, (w, h, _) in enumerate(pick.choice(sizes) for _ in range(n_guide_inputs))]
    per_client = []
    for c in range(clients):
        idx = []
        for r in range(requests):
            if pick.random() < model_fraction:
                w, h = pick.choice(MODEL_SIZES)
                inputs.append(make_input(f"model-{c}-{r}-{w}x{h}", ph[(c + r) % 3], w, h, rng, False))
                idx.append(len(inputs) - 1)
            else:
                idx.append(pick.randrange(n_guide_inputs))
        per_client.append(idx)
    return inputs, per_client


def status_mib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) // 1024
    return out


class Sampler(threading.Thread):
    """Samples a process's VmRSS until stopped."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.every):
            self.peak = max(self.peak, status_mib(self.pid)["VmRSS"])

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def references(cache: Path, inputs: list[Input]) -> tuple[dict[str, np.ndarray], float]:
    """Each input once, one client, on a fresh daemon of its own."""
    from conftest import start_daemon, stop_daemon
    d = start_daemon(cache)
    t0 = time.perf_counter()
    try:
        with d.client(timeout=600) as c:
            ref = {i.name: c.matte(i.pixels, guide_mask=i.guide).matte for i in inputs}
    finally:
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)
    return ref, time.perf_counter() - t0


def run_load(cache: Path, clients: int = 8, requests: int = 50, model_fraction: float = 0.1,
             queue: int = 4, seed: int = 0, rounds: int = 2, n_guide_inputs: int = 16,
             max_mp: float = 4.0, log=print) -> LoadReport:
    """`rounds` passes of the same load on one daemon: RSS after each pass tells
    growth (a leak grows every pass) from the allocator keeping its high-water mark."""
    from conftest import start_daemon, stop_daemon
    from layermatte.errors import Busy, LayermatteError

    inputs, per_client = plan(clients, requests, model_fraction, seed, n_guide_inputs, max_mp)
    log(f"{len(inputs)} distinct inputs; computing single-client references ...")
    ref, ref_s = references(cache, inputs)
    report = LoadReport(clients, requests, queue, reference_s=ref_s)
    d = start_daemon(cache, "--queue", str(queue), "--concurrency", "1")
    try:
        with d.client(timeout=600) as c:  # warm: the model (on an input of no request), the largest layer
            c.matte(make_input("warm", photos()[0], 300, 200, np.random.default_rng(999), False).pixels)
            largest = max((i for i in inputs if i.guide is not None), key=lambda i: i.megapixels)
            c.matte(largest.pixels, guide_mask=largest.guide)
        report.rss_before_mib = status_mib(d.proc.pid)["VmRSS"]
        sampler = Sampler(d.proc.pid)
        sampler.start()
        lock = threading.Lock()

        def client(n: int):
            transport = "tcp" if n % 2 else "unix"
            jitter = random.Random(seed * 1000 + n)
            with d.client(tcp=transport == "tcp", timeout=600) as cl:
                for k in per_client[n]:
                    inp = inputs[k]
                    o = Outcome(n, transport, inp.name)
                    t0 = time.perf_counter()
                    while True:
                        t1 = time.perf_counter()
                        try:
                            m = cl.matte(inp.pixels, guide_mask=inp.guide).matte
                        except Busy:
                            o.busy += 1
                            time.sleep(jitter.uniform(0.05, 0.25))
                            continue
                        except LayermatteError as e:
                            o.error = f"{type(e).__name__}: {e}"
                        break
                    o.latency_s = time.perf_counter() - t0
                    o.service_s = time.perf_counter() - t1
                    if not o.error:
                        o.max_diff = int(np.abs(m.astype(np.int32) - ref[inp.name]).max())
                    with lock:
                        report.outcomes.append(o)

        for round_ in range(rounds):
            log(f"round {round_ + 1} of {rounds}: {clients} clients x {requests} requests ...")
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            report.wall_s.append(time.perf_counter() - t0)
            time.sleep(1.0)
            report.rss_after_mib.append(status_mib(d.proc.pid)["VmRSS"])
        report.rss_peak_mib = sampler.stop()
        assert d.alive(), "the daemon died under load"
    finally:
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)
    return report


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def load_markdown(r: LoadReport, inputs_mp: dict[str, float]) -> str:
    ok = [o for o in r.last if not o.error]
    kinds = {"guide mask": [o for o in ok if o.input.startswith("guide")],
             "model": [o for o in ok if o.input.startswith("model")]}
    for w, h, _ in SIZES:
        kinds[f"  guide {w}x{h}"] = [o for o in ok if o.input.startswith("guide") and o.input.endswith(f"{w}x{h}")]
    rows = ["| requests | n | p50 latency s | p95 latency s | p50 service s | p95 service s |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, os_ in [("all", ok), *kinds.items()]:
        if os_:
            lat, srv = [o.latency_s for o in os_], [o.service_s for o in os_]
            rows.append(f"| {name} | {len(os_)} | {pct(lat, 50):.2f} | {pct(lat, 95):.2f} | "
                        f"{pct(srv, 50):.2f} | {pct(srv, 95):.2f} |")
    for t in ("unix", "tcp"):
        os_ = [o for o in ok if o.transport == t]
        if os_:
            lat = [o.latency_s for o in os_]
            rows.append(f"| via {t} | {len(os_)} | {pct(lat, 50):.2f} | {pct(lat, 95):.2f} | | |")
    mp = sum(inputs_mp[o.input] for o in ok)
    every = [o for o in r.outcomes if not o.error]
    diffs = [o.max_diff for o in every]
    errors = [o.error for o in r.outcomes if o.error]
    rounds = len(r.wall_s)
    after = ", ".join(f"{a} MiB after round {i + 1}" for i, a in enumerate(r.rss_after_mib))
    return "\n".join([
        f"- {rounds} round{'s' if rounds > 1 else ''} of {r.clients} clients x {r.requests} requests "
        f"= {len(r.outcomes)} requests ({sum(o.input.startswith('model') for o in r.outcomes)} ran the model), "
        "half the clients on the unix socket, half on loopback TCP;"
        f" daemon `--concurrency 1 --queue {r.queue}`",
        f"- errors: **{len(errors)}**" + (f" ({'; '.join(sorted(set(errors))[:5])})" if errors else "")
        + f"; queue-full refusals (RESOURCE_EXHAUSTED, waited out and retried): {sum(o.busy for o in r.outcomes)}",
        f"- results identical to the single-client run: **{diffs.count(0)} of {len(every)}** "
        f"(largest difference {max(diffs) if diffs else 0}/255)",
        f"- daemon RSS: {r.rss_before_mib} MiB before (warm), {after}; {r.rss_peak_mib} MiB peak "
        "(the first round raises the allocator's high-water mark; a leak would add up round after "
        "round: compare the rounds)",
        f"- last round: wall time {r.wall_s[-1]:.0f} s for {mp:.0f} megapixels ({mp / r.wall_s[-1]:.2f} MP/s); "
        f"single-client references took {r.reference_s:.0f} s",
        "", "Latency of the last round (latency: first attempt to result, busy waits included; "
        "service: the accepted attempt, queueing in the daemon included):", "", *rows])


# -- memory: one 12000x9000 layer and several small ones in flight ------------------------
def run_memory(cache: Path, big=(12000, 9000), small: int = 6, foreground: bool = False, log=print) -> dict:
    from conftest import start_daemon, stop_daemon
    from layermatte.imaging.pipeline import MatteOptions
    w, h = big
    layer = np.empty((h, w, 4), np.uint8)
    tile = cv2.resize(photos()[0], (w // 4, h // 4))
    for y in range(4):  # a real photo, tiled (np.tile would hold a second copy)
        for x in range(4):
            layer[y * h // 4:(y + 1) * h // 4, x * w // 4:(x + 1) * w // 4, :3] = tile
    layer[..., 3] = 255
    rng = np.random.default_rng(7)
    smalls = [make_input(f"s{i}", photos()[i % 3], 640, 480, rng, True) for i in range(small)]
    d = start_daemon(cache)
    out = {}
    try:
        with d.client(timeout=900) as c:
            c.matte(smalls[0].pixels)  # model resident, first inference done
            c.matte(smalls[0].pixels, guide_mask=smalls[0].guide)
        base = status_mib(d.proc.pid)
        out["baseline_rss"], out["baseline_hwm"] = base["VmRSS"], base["VmHWM"]
        sampler = Sampler(d.proc.pid, every=0.05)
        sampler.start()
        errors, stages = [], {}

        def send(pixels, guide=None, opts=MatteOptions(), key=None):
            try:
                with d.client(timeout=900) as c:
                    t0 = time.perf_counter()
                    r = c.matte(pixels, guide_mask=guide, options=opts)
                    if key:
                        stages[key] = (time.perf_counter() - t0, r.summary["stage_ms"])
            except Exception as e:  # reported below
                errors.append(repr(e))
        opts = MatteOptions(return_foreground=foreground, decontaminate=False)
        threads = [threading.Thread(target=send, args=(layer, None, opts, "big"))]
        threads += [threading.Thread(target=send, args=(s.pixels, s.guide)) for s in smalls]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        out["wall_s"] = time.perf_counter() - t0
        out["peak_rss_sampled"] = sampler.stop()
        after = status_mib(d.proc.pid)
        out["hwm"], out["after_rss"] = after["VmHWM"], after["VmRSS"]
        out["errors"] = errors
        out["big"] = stages.get("big")
        out["layer_mib"] = layer.nbytes / 2 ** 20
        out["matte_mib"] = w * h / 2 ** 20
        out["fg_mib"] = w * h * 3 / 2 ** 20 if foreground else 0
    finally:
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)
    return out


def header_only(cache: Path, w: int = 8000, h: int = 8000) -> dict:
    """Memory the daemon commits for a header alone (no pixel data sent yet)."""
    import grpc
    from conftest import start_daemon, stop_daemon
    from layermatte.proto.layermatte.v1 import matting_pb2 as pb
    from layermatte.proto.layermatte.v1 import matting_pb2_grpc as pb_grpc
    d = start_daemon(cache, "--no-warm")
    release = threading.Event()
    try:
        before = status_mib(d.proc.pid)["VmRSS"]

        def messages():
            yield pb.MatteRequest(header=pb.MatteHeader(width=w, height=h, format=pb.PIXEL_FORMAT_RGBAF32,
                                                        source=pb.MATTE_SOURCE_PROVIDED))
            release.wait(60)
        with grpc.insecure_channel(d.address) as ch:
            call = pb_grpc.MattingStub(ch).Matte(messages(), timeout=120)
            next(call)  # admitted: the receive buffers exist now
            time.sleep(0.5)
            held = status_mib(d.proc.pid)["VmRSS"]
            release.set()
            call.cancel()
        return {"w": w, "h": h, "announced_mib": w * h * 17 / 2 ** 20, "before": before, "held": held}
    finally:
        release.set()
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)


def memory_markdown(m: dict, fg: dict | None, hdr: dict | None) -> str:
    def block(x: dict, what: str) -> list[str]:
        big = x.get("big")
        stage = ""
        if big:
            ms = big[1]
            stage = (f"; the big layer took {big[0]:.1f} s (" + ", ".join(
                f"{k} {ms[k] / 1000:.1f} s" for k in ("receive", "inference", "upsample", "refine", "send")
                if k in ms) + ")")
        return [f"- **{what}**: baseline VmRSS {x['baseline_rss']} MiB (VmHWM {x['baseline_hwm']} MiB, "
                f"model resident); peak VmRSS {x['peak_rss_sampled']} MiB, VmHWM {x['hwm']} MiB "
                f"→ **{x['hwm'] - x['baseline_rss']:+d} MiB** over baseline for a "
                f"{x['layer_mib']:.0f} MiB layer (matte {x['matte_mib']:.0f} MiB"
                + (f", foreground {x['fg_mib']:.0f} MiB" if x["fg_mib"] else "") + f"); "
                f"after: {x['after_rss']} MiB; errors: {len(x['errors'])}{stage}"]
    lines = block(m, "mask (12000x9000 RGBA8 + 6 small)")
    if fg:
        lines += block(fg, "cut-out with foreground (12000x9000 RGBA8 + 6 small)")
    infer = m["baseline_hwm"] - m["baseline_rss"]
    rest = m["hwm"] - m["baseline_rss"] - infer - m["layer_mib"] - m["matte_mib"]
    lines += ["", "Reading it: onnxruntime's working set for one 1024² inference is about "
              f"{infer} MiB whatever the layer size (VmHWM − VmRSS after the warm-up inference). Over "
              f"idle RSS + that, the mask run peaked at {m['layer_mib']:.0f} MiB (the received layer, held "
              f"once: the pipeline works on a zero-copy view) + {m['matte_mib']:.0f} MiB (the matte) + "
              f"{rest:.0f} MiB (per-strip float buffers on each core, gRPC buffers, the six small "
              "layers). No stage copies the whole layer. The foreground plane (3 bytes/pixel) is "
              "allocated after inference has released its working set, so it adds little to the peak. "
              "Not measured here: `quality: HQ` allocates one more full-size float32 matte "
              f"({m['matte_mib'] * 4:.0f} MiB at this size)."]
    if hdr:
        lines += ["", f"- **a header alone** announcing {hdr['w']}x{hdr['h']} RGBAF32 + guide "
                  f"({hdr['announced_mib']:.0f} MiB), no pixel sent: daemon VmRSS "
                  f"{hdr['before']} → {hdr['held']} MiB ({hdr['held'] - hdr['before']:+d} MiB). "
                  "server.py allocates each plane as `bytearray(n)` (zero-filled, so every page is "
                  "touched) right after the header is accepted. With the default limits, 9 admitted "
                  "requests x 250 MP x 17 bytes could commit about 36 GiB before one pixel arrives."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--model-fraction", type=float, default=0.1)
    ap.add_argument("--queue", type=int, default=4, help="queue depth of the daemon under load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="passes of the same load on one daemon")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "LOAD.md")
    args = ap.parse_args()
    from conftest import CACHE
    from layermatte.models.catalog import Catalog
    os.environ["LAYERMATTE_CACHE"] = str(CACHE)
    Catalog(cache=CACHE).pull(show_progress=False)

    cmd = "    .venv/bin/python bench/load.py " + " ".join(sys.argv[1:])
    parts = [f"# Load and memory\n\nReproduce:\n\n{cmd.rstrip()}\n",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB RAM; "
             "CPU execution provider. Other work may share the machine: latencies are of this run.\n"]
    if not args.no_load:
        report = run_load(CACHE, args.clients, args.requests, args.model_fraction, args.queue, args.seed,
                          args.rounds)
        inputs, _ = plan(args.clients, args.requests, args.model_fraction, args.seed)
        parts.append("## Load\n\n" + load_markdown(report, {i.name: i.megapixels for i in inputs}) + "\n")
        print(parts[-1])
    if not args.no_memory:
        m = run_memory(CACHE)
        fg = run_memory(CACHE, foreground=True)
        hdr = header_only(CACHE)
        parts.append("## Memory\n\n" + memory_markdown(m, fg, hdr) + "\n")
        print(parts[-1])
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
