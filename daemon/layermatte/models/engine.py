"""Resident onnxruntime sessions, one per (model, provider), shared by requests.
Which provider: providers.py."""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import graph
from .catalog import Catalog, ModelSpec
from ..errors import Cancelled, LayermatteError
from .providers import ALIASES, PREFERENCE, choose_provider, import_runtime  # noqa: F401  (re-exported)

ort = import_runtime()

log = logging.getLogger(__name__)


def _provider_config(name: str) -> list:
    if name == "TensorrtExecutionProvider":
        from ..system import paths
        cache = str(paths.cache_dir() / "trt")
        return [(name, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache}),
                ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    if name == "CPUExecutionProvider":
        return [name]
    return [name, "CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    """The daemon's session set-up (the benchmark gives rembg the same one).

    onnxruntime's worker threads spin between the operators of a run, which
    keeps a run fast (turning spinning off cost ~9% here), and by default go
    on spinning for a while after Run() returns, on the cores refinement
    needs next. force_spinning_stop keeps the first and ends the second.

    The CPU arena stays on: a 1024² ISNet run is ~35% faster than with plain
    malloc. Memory patterns are off: with them the second run preallocates
    its traced pattern beside the first run's arena chunks (2.1 GB resident
    for ISNet instead of 1.3 GB), for no measurable speed."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_mem_pattern = False
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


@dataclass
class LoadedModel:
    spec: ModelSpec
    session: ort.InferenceSession
    provider: str
    input_name: str
    load_ms: float
    source: str = ""        # the file the session was built from (see graph.py)
    output_index: int = 0   # of the matte among the session's outputs
    holding: bool = False   # the arena keeps a run's working set (see Engine.release_memory)

    def run(self, tensor: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """Run on a ready NCHW tensor; a set cancel event terminates the run."""
        opts = ort.RunOptions()
        session = self.session   # Engine.release_memory may swap in a fresh one meanwhile
        watcher = None
        if cancel is not None:
            if cancel.is_set():
                raise Cancelled("request cancelled")
            done = threading.Event()

            def watch():
                while not done.wait(0.05):
                    if cancel.is_set():
                        opts.terminate = True
                        return
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            out = session.run(None, {self.input_name: tensor}, opts)
        except Exception as e:  # onnxruntime raises its own Fail on terminate
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled during inference") from None
            raise LayermatteError(f"model {self.spec.id} failed: {e}") from e
        finally:
            if watcher is not None:
                done.set()
        self.holding = True
        return out[self.output_index]


class Engine:
    def __init__(self, catalog: Catalog, provider: str | None = None, threads: int | None = None):
        self.catalog = catalog
        self.provider, reason = choose_provider(provider, ort.get_available_providers())
        log.info("execution provider: %s (%s)", self.provider, reason)
        self.threads = threads or os.cpu_count() or 1
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def loaded(self, model_id: str) -> LoadedModel | None:
        return self._models.get((model_id, self.provider))

    def load(self, model_id: str | None) -> tuple[LoadedModel, bool]:
        """(model, was_loaded_now). One session per model, built once under a lock."""
        spec, path = self.catalog.require(model_id)
        key = (spec.id, self.provider)
        if key in self._models:
            return self._models[key], False
        with self._lock:
            if key in self._models:
                return self._models[key], False
            t0 = time.perf_counter()
            # A corrupt cache file must never be loaded: check once per process.
            digest = self.catalog.verify(spec.id)
            fp32 = self.provider == "CPUExecutionProvider"
            derived = self.catalog.cache / graph.derived_name(spec.id, digest, fp32)
            source, out_index = graph.derive(path, spec.preprocess.output_index, derived, fp32)
            try:
                try:
                    session = self._session(source)
                except Exception:
                    if source == path:
                        raise
                    derived.unlink(missing_ok=True)   # a damaged derived copy: use the download
                    source, out_index = path, spec.preprocess.output_index
                    session = self._session(source)
            except Exception as e:
                raise LayermatteError(f"cannot load model {spec.id} from {path}: {e} "
                                      f"(run `layermatte models verify {spec.id}`)") from e
            model = LoadedModel(spec, session, session.get_providers()[0], session.get_inputs()[0].name,
                                0.0, source=str(source), output_index=out_index)
            self._warm(model)
            model.load_ms = (time.perf_counter() - t0) * 1000
            log.info("loaded model %s on %s in %.0f ms", spec.id, model.provider, model.load_ms)
            self._models[key] = model
            return model, True

    def _session(self, source) -> ort.InferenceSession:
        return ort.InferenceSession(str(source), session_options(self.threads),
                                    providers=_provider_config(self.provider))

    def release_memory(self, cancel: threading.Event) -> bool:
        """Give inference memory back to the system while the daemon is idle.

        The CPU arena keeps a run's working set (~1.3 GB for ISNet at 1024²)
        and only ever gives back chunks that are wholly free, so a fresh
        session (~0.5 s to build, weights only) takes each model's place; the
        old one, with its arena, is dropped and freed heap pages go back to
        the OS (glibc's malloc_trim). The next run pays for growing the arena
        again (~0.2 s on 2 cores). A run in progress keeps its session until
        it ends. False when `cancel` (a request arriving) was set first."""
        for model in list(self._models.values()):
            if cancel.is_set():
                return False
            if not model.holding:
                continue
            fresh = self._session(model.source)
            model.session, model.holding = fresh, False
            del fresh
        gc.collect()
        _malloc_trim()
        return True

    @property
    def holding(self) -> bool:
        """Some model ran since its memory was last released."""
        return any(m.holding for m in list(self._models.values()))

    @staticmethod
    def _warm(model: LoadedModel) -> None:
        """One inference at load so the first user request does not pay for
        lazy kernel/allocation set-up (large on GPU providers)."""
        s = model.spec.preprocess.input_size
        model.run(np.zeros((1, 3, s, s), np.float32))


MALLOC_ARENAS = 2


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas (by default 8 per core), before threads start.

    Every request runs on fresh gRPC and worker threads, and each may take
    its own arena; freed memory stays spread over all of them. Measured with
    bench/memory.py: resident size after each of 60 requests drifted from
    1.4 to 1.8 GB in one run and stayed flat in another, depending on which
    arenas the threads drew."""
    _glibc("mallopt", -8, n)   # M_ARENA_MAX


def _malloc_trim() -> None:
    """Return free heap pages to the OS."""
    _glibc("malloc_trim", 0)


def _glibc(name: str, *args: int) -> None:
    """Call a glibc malloc tunable; elsewhere (musl, macOS, Windows) a no-op."""
    try:
        import ctypes
        getattr(ctypes.CDLL("libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass
