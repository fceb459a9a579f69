"""Resident onnxruntime sessions, one per (model, provider), shared by requests.

Provider choice: the best one this onnxruntime build offers, in the order
TensorRT, CUDA, DirectML, CoreML, CPU, unless the user names one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .catalog import Catalog, ModelSpec
from .errors import Cancelled, InvalidInput, LayermatteError

log = logging.getLogger(__name__)

PREFERENCE = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
]
ALIASES = {"tensorrt": PREFERENCE[0], "cuda": PREFERENCE[1], "directml": PREFERENCE[2],
           "dml": PREFERENCE[2], "coreml": PREFERENCE[3], "cpu": PREFERENCE[4]}


def choose_provider(override: str | None = None) -> tuple[str, str]:
    """(provider, reason) — the reason goes into the log line users read."""
    available = ort.get_available_providers()
    if override:
        name = ALIASES.get(override.lower(), override)
        if name not in available:
            raise InvalidInput(f"execution provider {override!r} is not available in this "
                               f"onnxruntime build; available: {', '.join(available)}")
        return name, "requested with --provider"
    for name in PREFERENCE:
        if name in available:
            skipped = [p for p in PREFERENCE[: PREFERENCE.index(name)]]
            why = f"best available (not available: {', '.join(skipped)})" if skipped else "best available"
            return name, why
    return "CPUExecutionProvider", "fallback"


def _provider_config(name: str) -> list:
    if name == "TensorrtExecutionProvider":
        from . import paths
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
    needs next. force_spinning_stop keeps the first and ends the second."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


@dataclass
class LoadedModel:
    spec: ModelSpec
    session: ort.InferenceSession
    provider: str
    input_name: str
    load_ms: float

    low_memory: bool = False
    holding: bool = False   # the arena keeps the last run's working set
    output_index: int = 0   # of the matte among the session's outputs

    def run(self, tensor: np.ndarray, cancel: threading.Event | None = None,
            shrink: bool | None = None) -> np.ndarray:
        """Run on a ready NCHW tensor; a set cancel event terminates the run.
        shrink: hand the CPU arena's free chunks back when the run ends
        (default: the engine's low_memory setting)."""
        opts = ort.RunOptions()
        shrink = self.low_memory if shrink is None else shrink
        if shrink:
            opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
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
            out = self.session.run(None, {self.input_name: tensor}, opts)
        except Exception as e:  # onnxruntime raises its own Fail on terminate
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled during inference") from None
            raise LayermatteError(f"model {self.spec.id} failed: {e}") from e
        finally:
            if watcher is not None:
                done.set()
        self.holding = not shrink
        return out[self.output_index]


class Engine:
    def __init__(self, catalog: Catalog, provider: str | None = None, threads: int | None = None,
                 low_memory: bool = False):
        self.low_memory = low_memory
        self.catalog = catalog
        self.provider, reason = choose_provider(provider)
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
            self.catalog.verify(spec.id)
            so = session_options(self.threads)
            # The CPU arena makes a 1024² ISNet run ~35% faster than plain malloc
            # (1.67 s vs 2.28 s on 2 cores) but keeps ~1.7 GB of activations; with
            # low_memory the arena is shrunk after each run (~1.95 s, idle ~0.6 GB).
            try:
                source, out_index = _only_used_output(path, spec.preprocess.output_index)
                session = ort.InferenceSession(source, so, providers=_provider_config(self.provider))
            except Exception as e:
                raise LayermatteError(f"cannot load model {spec.id} from {path}: {e} "
                                      f"(run `layermatte models verify {spec.id}`)") from e
            inp = session.get_inputs()[0]
            model = LoadedModel(spec, session, session.get_providers()[0], inp.name, 0.0,
                                low_memory=self.low_memory, output_index=out_index)
            self._warm(model)
            model.load_ms = (time.perf_counter() - t0) * 1000
            log.info("loaded model %s on %s in %.0f ms", spec.id, model.provider, model.load_ms)
            self._models[key] = model
            return model, True

    def release_memory(self, cancel: threading.Event) -> bool:
        """Give inference memory back to the system while the daemon is idle.

        onnxruntime's CPU arena keeps a run's working set (~0.8-1.7 GB for
        ISNet at 1024²) so the next run skips the page faults (35% faster);
        an idle daemon should not hold it. The arena only shrinks at the end
        of a run, so this is one run per model on a blank input; a request
        that arrives meanwhile sets `cancel`, which stops it within ~50 ms.
        Then freed heap pages go back too (glibc's malloc_trim). False when
        cancelled (nothing is lost; the next idle period tries again)."""
        for model in list(self._models.values()):
            s = model.spec.preprocess.input_size
            try:
                model.run(np.zeros((1, 3, s, s), np.float32), cancel, shrink=True)
            except Cancelled:
                return False
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


def _only_used_output(path, index: int) -> tuple[str | bytes, int]:
    """The model with only the output the pipeline reads (source, its index).

    ISNet also returns five side mattes and six feature maps; as graph
    outputs onnxruntime computes and copies them all. Dropped here (in
    memory: the verified file is untouched), their branches are removed from
    the graph: ~3-5% less inference time on CPU. Without the onnx package,
    or for a single-output model, the file is loaded as it is."""
    try:
        import onnx
    except ImportError:
        return str(path), index
    m = onnx.load(str(path))
    outputs = list(m.graph.output)
    if len(outputs) <= 1 or index >= len(outputs):
        return str(path), index
    del m.graph.output[:]
    m.graph.output.append(outputs[index])
    return m.SerializeToString(), 0


def _malloc_trim() -> None:
    """Return free heap pages to the OS (glibc only; elsewhere a no-op)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
