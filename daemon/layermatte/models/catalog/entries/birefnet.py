"""BiRefNet (Zheng et al. 2024), general and lite (Swin-T backbone) releases."""
from ..spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess, UrlSource

_PRE = Preprocess(input_size=1024, mean=IMAGENET_MEAN, std=IMAGENET_STD, output="sigmoid")
_BASE = "https://github.com/ZhengPeng7/BiRefNet/releases/download/v1/"

ENTRIES = [
    ModelSpec(
        id="birefnet-general",
        title="BiRefNet general",
        description="High-resolution dichotomous segmentation; slow on CPU.",
        license="MIT",
        preprocess=_PRE,
        source=UrlSource(_BASE + "BiRefNet-general-epoch_244.onnx"),
    ),
    ModelSpec(
        id="birefnet-general-lite",
        title="BiRefNet general lite",
        description="BiRefNet with a Swin-T backbone: faster, slightly softer edges.",
        license="MIT",
        preprocess=_PRE,
        source=UrlSource(_BASE + "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx"),
    ),
]
