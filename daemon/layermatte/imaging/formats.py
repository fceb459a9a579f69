"""Pixel formats of the wire contract, as numpy views.

One table drives the server's decoding, the client's encoding and the size
checks, so a new format is one row here (plus one enum value in the .proto).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput
from ..system.platforms import small_pages_for_arrays

# Every process that handles layers as arrays (daemon, CLI, batch, Ray workers) imports this
# module: their large, short-lived arrays go on small pages (see small_pages_for_arrays).
small_pages_for_arrays()


@dataclass(frozen=True)
class PixelFormat:
    name: str
    channels: int
    dtype: np.dtype
    has_alpha: bool
    bgr: bool = False

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.dtype.itemsize

    @property
    def max_value(self) -> float:
        return 1.0 if self.dtype.kind == "f" else float(np.iinfo(self.dtype).max)


_U8, _U16, _F32 = np.dtype("u1"), np.dtype("<u2"), np.dtype("<f4")

# Keys are the PixelFormat enum values of layermatte.v1.
FORMATS: dict[int, PixelFormat] = {
    1: PixelFormat("RGBA8", 4, _U8, True),
    2: PixelFormat("RGB8", 3, _U8, False),
    3: PixelFormat("GRAY8", 1, _U8, False),
    4: PixelFormat("GRAYA8", 2, _U8, True),
    5: PixelFormat("BGRA8", 4, _U8, True, bgr=True),
    6: PixelFormat("RGBA16", 4, _U16, True),
    7: PixelFormat("RGB16", 3, _U16, False),
    8: PixelFormat("GRAY16", 1, _U16, False),
    9: PixelFormat("GRAYA16", 2, _U16, True),
    10: PixelFormat("RGBAF32", 4, _F32, True),
    11: PixelFormat("GRAYAF32", 2, _F32, True),
    12: PixelFormat("RGBF32", 3, _F32, False),
    13: PixelFormat("GRAYF32", 1, _F32, False),
}
BY_NAME = {f.name: code for code, f in FORMATS.items()}


def lookup(code: int) -> PixelFormat:
    try:
        return FORMATS[code]
    except KeyError:
        names = ", ".join(BY_NAME)
        raise InvalidInput(f"unknown pixel format {code}; supported: {names}") from None


def code_for_array(arr: np.ndarray) -> int:
    """Wire format for an HxW[xC] array of uint8, uint16 or float32."""
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    depth = {np.dtype("u1"): "8", np.dtype("u2"): "16", np.dtype("f4"): "F32"}.get(arr.dtype)
    layout = {1: "GRAY", 2: "GRAYA", 3: "RGB", 4: "RGBA"}.get(channels)
    if depth is None or layout is None:
        raise InvalidInput(f"unsupported image array: {channels} channels of {arr.dtype}")
    return BY_NAME[layout + depth]


def as_array(buf, width: int, height: int, fmt: PixelFormat) -> np.ndarray:
    """Zero-copy HxWxC view of a received buffer."""
    expected = width * height * fmt.bytes_per_pixel
    if len(buf) != expected:
        raise InvalidInput(
            f"pixel data is {len(buf)} bytes; {width}x{height} {fmt.name} needs {expected}")
    return np.frombuffer(buf, dtype=fmt.dtype).reshape(height, width, fmt.channels)


def split(arr: np.ndarray, fmt: PixelFormat) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-copy (colour HxWx{1,3} in RGB order, alpha HxW or None) views.

    Conversion to float happens per tile in the pipeline, so a huge layer is
    never copied whole.
    """
    colour = arr[..., : (3 if fmt.channels >= 3 else 1)]
    if fmt.bgr:
        colour = colour[..., ::-1]
    alpha = arr[..., -1] if fmt.has_alpha else None
    return colour, alpha


def to_float(view: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """float32 0..1 copy of a (tile of a) view, gray expanded to RGB."""
    out = view.astype(np.float32)
    if fmt.dtype.kind != "f":
        out *= 1.0 / fmt.max_value
    if out.ndim == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out
