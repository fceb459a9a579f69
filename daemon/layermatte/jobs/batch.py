"""Folders of images through the daemon's queue.

    jobs = plan(input_dir, output_dir, "png")              # recursive, relative paths kept
    summary = run(jobs, DaemonMatter(connect), "png", options, workers=2)

`process_image(job, matte, fmt, options)` is the one per-image function: read,
matte, write atomically. `matte` is any MatteFn -- here `DaemonMatter`, a daemon
client that waits and retries while the daemon's queue is full. A later `--ray`
mode (issue 10) is meant to call the same `process_image` inside Ray tasks with
an in-process MatteFn (pipeline.run on a resident model) instead of the daemon;
`plan` and `Summary` are reused as they are.
"""
from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..imaging import imageio
from ..psd import document as psd
from ..transport.client import Client, DaemonUnavailable, MatteReply, Progress
from ..errors import Busy, Cancelled, InvalidInput, LayermatteError, ModelNotFound, ModelNotPulled
from ..imaging.options import MatteOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
OUTPUT_SUFFIX = {"png": ".png", "webp": ".webp", "tiff": ".tif", "psd": ".psd"}
# Errors that would fail every remaining image: stop the batch instead.
FATAL = (DaemonUnavailable, ModelNotFound, ModelNotPulled, Cancelled)


class MatteFn(Protocol):
    def __call__(self, pixels: np.ndarray, options: MatteOptions,
                 progress: Progress | None = None) -> MatteReply: ...


class DaemonMatter:
    """MatteFn over one daemon connection, shared by all worker threads (gRPC
    channels are thread-safe). A full queue (Busy) is waited out with jittered
    backoff for up to `max_wait` seconds; `cancel` aborts waiting and requests."""

    def __init__(self, connect: Callable[[], Client], model_id: str = "",
                 cancel: threading.Event | None = None, max_wait: float = 600.0):
        self._connect = connect
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.model_id = model_id
        self.cancel = cancel or threading.Event()
        self.max_wait = max_wait
        self.busy_retries = 0

    def client(self) -> Client:
        with self._lock:  # connect lazily: nothing to do means no daemon is started
            if self._client is None:
                self._client = self._connect()
            return self._client

    def __call__(self, pixels, options, progress=None) -> MatteReply:
        client = self.client()
        deadline = time.monotonic() + self.max_wait
        delay = 0.2
        while True:
            try:
                return client.matte(pixels, model_id=self.model_id, options=options,
                                    progress=progress, cancel=self.cancel)
            except Busy:
                if time.monotonic() + delay > deadline:
                    raise
                with self._lock:
                    self.busy_retries += 1
                if progress:
                    progress("waiting for the daemon", 0.0)
                if self.cancel.wait(delay * random.uniform(0.7, 1.3)):
                    raise Cancelled("request cancelled") from None
                delay = min(delay * 1.6, 3.0)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    relative: Path        # source path relative to the input folder, for messages


@dataclass
class Outcome:
    job: Job
    status: str           # "done", "skipped" (output already there) or "failed"
    error: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    aborted: str = ""     # why the batch stopped early, if it did
    not_run: int = 0

    def _of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[Outcome]:
        return self._of("done")

    @property
    def skipped(self) -> list[Outcome]:
        return self._of("skipped")

    @property
    def failed(self) -> list[Outcome]:
        return self._of("failed")

    def line(self) -> str:
        parts = [f"{len(self.done)} done", f"{len(self.skipped)} already done",
                 f"{len(self.failed)} failed"]
        if self.not_run:
            parts.append(f"{self.not_run} not run")
        return ", ".join(parts)


def find_images(input_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under input_dir (recursive, hidden files and `exclude` left out), sorted."""
    found = []
    exclude = exclude.resolve() if exclude else None
    for root, dirs, files in os.walk(input_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (here / d).resolve() != exclude))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((here / name).relative_to(input_dir))
    return found


def plan(input_dir: Path, output_dir: Path, fmt: str = "png") -> list[Job]:
    """One job per image; outputs mirror the input tree with the format's suffix.
    Sources that would share an output (cat.jpg, cat.png) keep their full name (cat.jpg.png)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if fmt not in OUTPUT_SUFFIX:
        raise InvalidInput(f"unknown format {fmt!r}; use one of {', '.join(OUTPUT_SUFFIX)}")
    if not input_dir.is_dir():
        raise InvalidInput(f"{input_dir}: no such folder")
    if output_dir.resolve() == input_dir.resolve():
        raise InvalidInput("OUTPUT_DIR must differ from INPUT_DIR (outputs would be read as inputs next time)")
    suffix = OUTPUT_SUFFIX[fmt]
    rels = find_images(input_dir, exclude=output_dir)
    plain = {rel: rel.with_suffix(suffix) for rel in rels}
    taken = Counter(plain.values())
    return [Job(input_dir / rel,
                output_dir / (out if taken[out] == 1 else rel.with_name(rel.name + suffix)), rel)
            for rel, out in plain.items()]


def process_image(job: Job, matte: MatteFn, fmt: str, options: MatteOptions,
                  mask_only: bool = False) -> None:
    """Read one image, matte it, write the cut-out (or two-layer PSD, or with
    mask_only the grayscale matte) atomically.
    Raises LayermatteError subclasses on failure; writes nothing then."""
    image = imageio.read(job.source)
    pixels = image.pixels
    if fmt == "webp" and pixels.dtype == np.uint16:  # WebP holds 8 bits only
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    opts = dataclasses.replace(options, return_foreground=not mask_only, depth16=pixels.dtype == np.uint16)
    reply = matte(pixels, opts, None)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    if mask_only:
        imageio.write(job.output, reply.matte, image.icc_profile)
    elif fmt == "psd":
        psd.write_cutout_psd(job.output, pixels, reply.matte, reply.foreground, image.icc_profile)
    else:
        fg = reply.foreground
        imageio.write(job.output, np.dstack([fg, reply.matte.astype(fg.dtype)]), image.icc_profile)


def run(jobs: list[Job], matte: MatteFn, fmt: str, options: MatteOptions = MatteOptions(), *,
        workers: int = 2, force: bool = False, stop: threading.Event | None = None,
        on_outcome: Callable[[Outcome], None] | None = None, mask_only: bool = False) -> Summary:
    """Process jobs on `workers` threads (requests queue in the daemon). Outputs that
    exist are skipped unless `force`. A fatal error (daemon gone, model missing)
    stops the batch and is returned in `summary.aborted`."""
    stop = stop or getattr(matte, "cancel", None) or threading.Event()
    summary = Summary()
    lock = threading.Lock()

    def record(outcome: Outcome) -> None:
        with lock:
            summary.outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    def work(job: Job) -> None:
        if stop.is_set():
            return
        t0 = time.perf_counter()
        try:
            process_image(job, matte, fmt, options, mask_only)
        except FATAL as e:
            with lock:
                summary.aborted = summary.aborted or str(e)
            stop.set()
            return
        except LayermatteError as e:
            record(Outcome(job, "failed", str(e), time.perf_counter() - t0))
            return
        except Exception as e:  # a bug or an unexpected library error: report, go on
            record(Outcome(job, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0))
            return
        record(Outcome(job, "done", "", time.perf_counter() - t0))

    todo = []
    for job in jobs:
        if not force and job.output.exists():
            record(Outcome(job, "skipped"))
        else:
            todo.append(job)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="batch")
    try:
        for f in as_completed([pool.submit(work, job) for job in todo]):
            f.result()
    except BaseException:
        stop.set()  # also cancels requests in flight when stop is the matter's cancel event
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    summary.not_run = len(jobs) - len(summary.outcomes)
    return summary
