"""Which ONNX execution provider to use: the best this onnxruntime build offers,
in the order TensorRT, CUDA, DirectML, CoreML, CPU, unless the user names one.

Apart from engine.py so that `doctor` can say what would be chosen without
importing the engine, numpy's and OpenCV's users (issue 22: commands that need
no model start fast).
"""
from __future__ import annotations

from .errors import InvalidInput, LayermatteError

try:
    import onnxruntime as ort
except ImportError as _e:  # the runtime is an extra: layermatte[cpu] or layermatte[gpu]
    raise LayermatteError("no ONNX runtime is installed: pip install 'layermatte[cpu]' (or "
                          "'layermatte[gpu]' for NVIDIA GPUs) in the environment of "
                          "this layermatte") from _e

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
