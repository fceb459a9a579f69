"""BRIA RMBG 1.4 and 2.0 (non-commercial licences; 2.0 is gated upstream)."""
from ..spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess, UrlSource

ENTRIES = [
    ModelSpec(
        id="rmbg-1.4",
        title="BRIA RMBG 1.4",
        description="IS-Net architecture trained by BRIA on licensed data.",
        license="bria-rmbg-1.4 (non-commercial)",
        size_bytes=176_153_355,
        preprocess=Preprocess(input_size=1024, mean=(127.5, 127.5, 127.5),
                              std=(255.0, 255.0, 255.0), output="minmax"),
        source=UrlSource("https://huggingface.co/briaai/RMBG-1.4/resolve/main/onnx/model.onnx"),
    ),
    ModelSpec(
        id="rmbg-2.0",
        title="BRIA RMBG 2.0",
        description="BiRefNet architecture trained by BRIA; best on hair, gated download.",
        license="CC-BY-NC-4.0 (non-commercial)",
        preprocess=Preprocess(input_size=1024, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              output="sigmoid"),
        source=UrlSource("https://huggingface.co/briaai/RMBG-2.0/resolve/main/onnx/model.onnx"),
    ),
]
