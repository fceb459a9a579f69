"""The daemon's domain side: admission (concurrency + queue), model residency
and the matte call. No gRPC here; server.py adapts it."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .imaging import formats, pipeline
from .models.catalog import Catalog
from .models.engine import Engine
from .errors import Busy, Cancelled, TooLarge
from .transport.limits import Limits  # noqa: F401  (here since the start; serve --help reads limits.py)
from .transport.wire import MatteJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    """A cached coarse matte. For 8/16-bit layers the guide is kept as the
    small integer image it was made from (a quarter of the float's bytes at
    8 bits) and remade on use (~1 ms)."""
    matte: np.ndarray
    guide: np.ndarray | None
    small: np.ndarray | None = None
    fmt: formats.PixelFormat | None = None

    @property
    def nbytes(self) -> int:
        return self.matte.nbytes + (self.guide if self.guide is not None else self.small).nbytes

    def coarse(self) -> pipeline.Coarse:
        if self.guide is not None:
            return pipeline.Coarse(self.matte, self.guide)
        return pipeline.Coarse(self.matte, formats.to_float(self.small, self.fmt))


class CoarseCache:
    """The last few coarse mattes, keyed by the digest of the model's input
    (pipeline.ModelInput.digest: model id, layer shape and the area-averaged
    colour the model sees), so re-refining a layer with other edge options (a
    plug-in's dialog, `cut` again with --feather) skips the model. Bounded by
    entries and bytes (~7 MB per entry at 1024x1024 for an 8-bit layer);
    entries expire after ttl_s."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 96 << 20, ttl_s: float = 600.0):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._items: OrderedDict[bytes, tuple[float, _Entry]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> pipeline.Coarse | None:
        with self._lock:
            self._expire()
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[1].coarse()

    def put(self, key: bytes, coarse: pipeline.Coarse, made_from: pipeline.ModelInput | None = None) -> None:
        """made_from: the model input the matte came from (its small image
        stands in for the float guide)."""
        small = made_from.small if made_from is not None else None
        if small is not None and small.dtype.kind == "u":
            entry = _Entry(coarse.matte, None, np.ascontiguousarray(small), made_from.fmt)
        else:
            entry = _Entry(coarse.matte, coarse.guide)
        if self.max_entries <= 0 or entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._items[key] = (time.monotonic(), entry)
            self._items.move_to_end(key)
            while (len(self._items) > self.max_entries
                   or sum(c.nbytes for _, c in self._items.values()) > self.max_bytes):
                self._items.popitem(last=False)

    def _expire(self) -> None:
        now = time.monotonic()
        for k in [k for k, (t, _) in self._items.items() if now - t > self.ttl_s]:
            del self._items[k]


class Daemon:
    def __init__(self, catalog: Catalog, engine: Engine, limits: Limits = Limits(),
                 cache: CoarseCache | None = None):
        self.catalog = catalog
        self.engine = engine
        self.limits = limits
        self.cache = cache if cache is not None else CoarseCache()
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._slots = threading.Semaphore(limits.concurrency)
        # Refinement workers live as long as the daemon (not a pool per request).
        self._pool = ThreadPoolExecutor(max_workers=engine.threads, thread_name_prefix="refine")
        self._arrived = threading.Event()    # set by each admission: stops an idle release
        self._last_busy = time.monotonic()
        if limits.idle_release_s > 0:
            threading.Thread(target=self._idle_loop, name="idle-release", daemon=True).start()

    def _idle_loop(self) -> None:
        """Once the daemon has been idle for idle_release_s, give the model's
        working memory back (Engine.release_memory), once per idle period."""
        while True:
            wait = self.limits.idle_release_s - (time.monotonic() - self._last_busy)
            if wait > 0:
                time.sleep(min(wait, 5.0))
                continue
            self._arrived.clear()   # before the checks: an admission from here on stops the release
            if not self.engine.holding or self._admitted:
                time.sleep(1.0)
                continue
            # No slot is taken: a request that starts meanwhile keeps the session it began with.
            t0 = time.perf_counter()
            if self.engine.release_memory(self._arrived):
                log.info("idle for %.0f s: inference memory released (%.0f ms)",
                         self.limits.idle_release_s, (time.perf_counter() - t0) * 1000)

    def idle_seconds(self) -> float:
        """How long no request has been in the daemon (0 while one is): serve's idle exit."""
        with self._admit_lock:
            return 0.0 if self._admitted else time.monotonic() - self._last_busy

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
            self._arrived.set()
        try:
            yield
        finally:
            with self._admit_lock:
                self._admitted -= 1
                self._last_busy = time.monotonic()

    def matte(self, job: MatteJob, pixels: np.ndarray, guide: np.ndarray | None,
              progress: pipeline.Progress, cancel: threading.Event) -> pipeline.MatteResult:
        t_wait = time.perf_counter()
        progress("queue", 0.05)
        while not self._slots.acquire(timeout=0.1):
            if cancel.is_set():
                raise Cancelled("request cancelled while queued")
        try:
            queued_ms = (time.perf_counter() - t_wait) * 1000
            model = coarse = prepared = shown = None
            load_ms = prep_ms = 0.0
            if job.use_model:
                progress("preprocess", 0.07)
                t0 = time.perf_counter()
                spec = self.catalog.get(job.model_id or None)
                shown = pipeline.as_shown(pixels, job.format, job.options)
                prepared = pipeline.model_input(shown, job.format, spec, layer_alpha=False)
                coarse = self.cache.get(prepared.digest)
                prep_ms = (time.perf_counter() - t0) * 1000
            if job.use_model and coarse is None:
                progress("load", 0.08)
                t0 = time.perf_counter()
                model, _ = self.engine.load(job.model_id or None)
                load_ms = (time.perf_counter() - t0) * 1000
            result = pipeline.run(pixels, job.format, job.options, model=model, guide_mask=guide,
                                  coarse=coarse, prepared=prepared, progress=progress, cancel=cancel,
                                  threads=self.engine.threads, pool=self._pool, shown=shown)
            if coarse is not None:   # re-refine: the model did not run
                result.model_id = spec.id
            elif prepared is not None and result.coarse is not None:
                self.cache.put(prepared.digest, result.coarse, made_from=prepared)
            result.stage_ms.update(queue=queued_ms, load=load_ms)
            if prepared is not None:  # made here, before the cache lookup
                result.stage_ms["preprocess"] = result.stage_ms.get("preprocess", 0.0) + prep_ms
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
