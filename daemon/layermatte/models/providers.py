"""Which ONNX execution provider to use: the best this onnxruntime build offers,
in the order TensorRT, CUDA, DirectML, CoreML, CPU, unless the user names one.

Apart from engine.py, and without importing onnxruntime unless it must, so
that `doctor` can say what would be chosen without the engine, numpy or
OpenCV (issue 22: commands that need no model start fast).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..errors import InvalidInput, LayermatteError

_MISSING = ("no ONNX runtime is installed: pip install 'layermatte[cpu]' (or 'layermatte[gpu]' "
            "for NVIDIA GPUs) in the environment of this layermatte")


def import_runtime():
    """onnxruntime, or the one-line error that says which extra to install."""
    try:
        import onnxruntime
    except ImportError as e:  # the runtime is an extra: layermatte[cpu] or layermatte[gpu]
        raise LayermatteError(_MISSING) from e
    return onnxruntime


def _build_key() -> str | None:
    """Names this onnxruntime build (its native library's path, size and time),
    found without importing it: the providers a build offers are fixed when it
    is built, so a list recorded for this key stays true until it is replaced."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.origin:
        return None
    libs = sorted((Path(spec.origin).parent / "capi").glob("onnxruntime_pybind11_state*"))
    if not libs:
        return None
    st = libs[0].stat()
    return f"{libs[0]}|{st.st_size}|{st.st_mtime_ns}"


def runtime_info() -> tuple[str, list[str]]:
    """(onnxruntime's version, its providers), from a record in the user's
    cache when it names this very build: importing onnxruntime (and numpy with
    it) costs ~0.25 s, most of `doctor --no-probe`'s time (issue 22)."""
    key = _build_key()
    if key is None:
        raise LayermatteError(_MISSING)
    from ..system import paths
    record = paths.cache_dir() / "onnxruntime-build.json"
    try:
        cached = json.loads(record.read_text())
        if cached["key"] == key:
            return cached["version"], list(cached["providers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ort = import_runtime()
    version, available = ort.__version__, list(ort.get_available_providers())
    try:   # best effort: a read-only cache only costs the import next time
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "version": version, "providers": available}))
        os.replace(tmp, record)
    except OSError:
        pass
    return version, available


PREFERENCE = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
]
ALIASES = {"tensorrt": PREFERENCE[0], "cuda": PREFERENCE[1], "directml": PREFERENCE[2],
           "dml": PREFERENCE[2], "coreml": PREFERENCE[3], "cpu": PREFERENCE[4]}


def choose_provider(override: str | None = None,
                    available: list[str] | None = None) -> tuple[str, str]:
    """(provider, reason) — the reason goes into the log line users read.
    available: the loaded runtime's own list (the engine's); default: runtime_info's."""
    available = runtime_info()[1] if available is None else available
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
