"""MODNet (Ke et al. 2022): trimap-free portrait matting; people only."""
from ..spec import ModelSpec, Preprocess, UrlSource

ENTRIES = [
    ModelSpec(
        id="modnet-portrait",
        title="MODNet portrait",
        description="Portrait matting with soft hair; not for objects.",
        license="Apache-2.0",
        preprocess=Preprocess(input_size=512, mean=(127.5, 127.5, 127.5),
                              std=(127.5, 127.5, 127.5)),
        source=UrlSource("https://huggingface.co/Xenova/modnet/resolve/main/onnx/model.onnx"),
    ),
]
