"""The daemon's domain side: admission (concurrency + queue), model residency
and the matte call. No gRPC here; server.py adapts it."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import pipeline
from .catalog import Catalog
from .engine import Engine
from .errors import Busy, Cancelled, TooLarge
from .wire import MatteJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 250_000_000     # a 12000x9000 layer is 108 MP
    concurrency: int = 1              # inference uses every core already
    queue_depth: int = 8              # admitted but waiting
    deadline_s: float = 600.0


class Daemon:
    def __init__(self, catalog: Catalog, engine: Engine, limits: Limits = Limits()):
        self.catalog = catalog
        self.engine = engine
        self.limits = limits
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._slots = threading.Semaphore(limits.concurrency)

    def check_size(self, job: MatteJob) -> None:
        if job.width * job.height > self.limits.max_pixels:
            raise TooLarge(f"layer {job.width}x{job.height} has {job.width * job.height:,} pixels; "
                           f"this daemon's limit is {self.limits.max_pixels:,} (serve --max-pixels)")

    @contextmanager
    def admitted(self):
        """Hold a place in the daemon; refuse at once when every place is taken."""
        cap = self.limits.concurrency + self.limits.queue_depth
        with self._admit_lock:
            if self._admitted >= cap:
                raise Busy(f"daemon busy: {self._admitted} requests in progress or queued "
                           f"(limit {cap}); try again shortly")
            self._admitted += 1
        try:
            yield
        finally:
            with self._admit_lock:
                self._admitted -= 1

    def matte(self, job: MatteJob, pixels: np.ndarray, guide: np.ndarray | None,
              progress: pipeline.Progress, cancel: threading.Event) -> pipeline.MatteResult:
        t_wait = time.perf_counter()
        progress("queue", 0.05)
        while not self._slots.acquire(timeout=0.1):
            if cancel.is_set():
                raise Cancelled("request cancelled while queued")
        try:
            queued_ms = (time.perf_counter() - t_wait) * 1000
            model = None
            load_ms = 0.0
            if job.use_model:
                progress("load", 0.08)
                t0 = time.perf_counter()
                model, _ = self.engine.load(job.model_id or None)
                load_ms = (time.perf_counter() - t0) * 1000
            result = pipeline.run(pixels, job.format, job.options, model=model, guide_mask=guide,
                                  progress=progress, cancel=cancel, threads=self.engine.threads)
            result.stage_ms.update(queue=queued_ms, load=load_ms)
            return result
        finally:
            self._slots.release()

    def models(self) -> list[dict]:
        rows = []
        for spec in self.catalog.entries():
            loaded = self.engine.loaded(spec.id)
            rows.append(dict(id=spec.id, title=spec.title, description=spec.description,
                             license=spec.license, size_bytes=spec.size_bytes,
                             pulled=self.catalog.is_pulled(spec), loaded=loaded is not None,
                             provider=loaded.provider if loaded else "",
                             input_size=spec.preprocess.input_size,
                             is_default=spec.id == self.catalog.default_id))
        return rows
