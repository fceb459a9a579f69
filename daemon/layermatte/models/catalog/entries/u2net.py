"""U²-Net (Qin et al. 2020) salient object detection, full and small (u2netp)."""
from ..spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess, UrlSource

_PRE = Preprocess(input_size=320, mean=IMAGENET_MEAN, std=IMAGENET_STD, output="minmax")
_BASE = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"

ENTRIES = [
    ModelSpec(id="u2net", title="U²-Net", description="Classic salient-object model (320²).",
              license="Apache-2.0", size_bytes=175_997_641, preprocess=_PRE,
              source=UrlSource(_BASE + "u2net.onnx")),
    ModelSpec(id="u2netp", title="U²-Net small", description="4.7 MB U²-Net variant; fast, coarse.",
              license="Apache-2.0", size_bytes=4_574_861, preprocess=_PRE,
              source=UrlSource(_BASE + "u2netp.onnx")),
]
