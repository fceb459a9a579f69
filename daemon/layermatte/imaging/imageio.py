"""Image files in and out, with EXIF orientation, ICC profile and bit depth.

Pillow decodes 8-bit images (all formats, EXIF, ICC); OpenCV decodes and
writes 16-bit PNG/TIFF, which Pillow cannot hold as RGB(A). Outputs carry
straight (un-premultiplied) alpha and are written atomically.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..system.atomic import atomic_output
from ..errors import InvalidInput

Image.MAX_IMAGE_PIXELS = 250_000_000  # decompression-bomb guard, same as the daemon's limit
# Pillow only warns between 1x and 2x that limit (and decodes the image); read() refuses
# at 1x itself, so the warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
OUTPUT_FORMATS = {".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                  ".jpg": "JPEG", ".jpeg": "JPEG"}   # JPEG: no alpha (cut --bg-color flattens)
# 8-bit PNG: zlib level 1 with run-length matching only (Z_RLE) after PNG's
# row filters. On the 4096x4096 cut-out (bench/bench_cut.py, RESULTS.md)
# Pillow's default (level 6) took ~4x as long for ~5 % fewer bytes: a
# filtered photo leaves deflate little to find beyond runs.
PNG_OPTIONS = {"compress_level": 1, "compress_type": 3}   # 3: zlib's Z_RLE


@dataclass
class LoadedImage:
    pixels: np.ndarray          # HxWxC (C in 1..4), uint8 or uint16, RGB(A) order
    icc_profile: bytes | None


def read(path: Path) -> LoadedImage:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # before decoding anything
                raise InvalidInput(f"{path}: {im.width}x{im.height} is {im.width * im.height:,} pixels; "
                                   f"the limit is {Image.MAX_IMAGE_PIXELS:,} (decompression bomb?)")
            deep = im.mode.startswith("I;16") or im.mode == "I" or _sixteen_bit_tiles(im)
            im.load()
            icc = im.info.get("icc_profile")
            orientation = im.getexif().get(0x0112, 1)
            if not deep:
                im = ImageOps.exif_transpose(im)
                if im.mode not in ("RGB", "RGBA", "L", "LA"):
                    im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
                arr = np.asarray(im)
                return LoadedImage(arr if arr.ndim == 3 else arr[..., None], icc)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{path}: not a readable image ({e})") from None
    except Image.DecompressionBombError as e:
        raise InvalidInput(f"{path}: {e}") from None
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InvalidInput(f"{path}: not a readable image")
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]] if arr.shape[2] >= 3 else arr
    else:
        arr = arr[..., None]
    return LoadedImage(_orient(np.ascontiguousarray(arr), orientation), icc)


def _sixteen_bit_tiles(im: Image.Image) -> bool:
    """Pillow opens 16-bit RGB(A) PNG/TIFF as 8-bit modes; the undecoded tiles'
    raw mode ("RGB;16B", "RGBA;16N", ...) still tells, without decoding twice."""
    for tile in im.tile:
        raw = tile[3][0] if isinstance(tile[3], tuple) else tile[3]
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1]}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def output_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidInput(f"{path}: unsupported output type; use one of "
                           + ", ".join(sorted(OUTPUT_FORMATS)))
    return fmt


def write(path: Path, pixels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write HxW[xC] uint8/uint16 atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fmt = output_format(path)
    with atomic_output(path) as tmp:
        if fmt == "JPEG" and (pixels.dtype != np.uint8 or pixels.ndim == 3 and pixels.shape[2] in (2, 4)):
            raise InvalidInput(f"{path}: JPEG holds 8-bit colour without transparency; flatten it "
                               "onto a colour (cut --bg-color) or write PNG, WebP or TIFF")
        if pixels.dtype == np.uint16:
            if fmt == "WEBP":
                raise InvalidInput("WebP cannot hold 16-bit images; write PNG or TIFF")
            bgr = pixels
            if pixels.ndim == 3 and pixels.shape[2] >= 3:
                bgr = pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]
            if not cv2.imwrite(tmp, np.ascontiguousarray(bgr)):
                raise InvalidInput(f"{path}: could not write the image")
        else:
            arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
            im = Image.fromarray(np.ascontiguousarray(arr))
            kwargs = {"icc_profile": icc_profile} if icc_profile else {}
            if fmt == "WEBP":
                kwargs.update(lossless=True, exact=True)  # exact: keep colour under alpha 0
            if fmt == "TIFF":
                kwargs.update(compression="tiff_adobe_deflate")
            if fmt == "JPEG":
                kwargs.update(quality=95)
            if fmt == "PNG":
                kwargs.update(PNG_OPTIONS)
            im.save(tmp, format=fmt, **kwargs)
