"""Krita-free logic of the plug-in: options, pixel layouts, the daemon call.

Everything here works on plain values (bytes, ints, strings) so it runs in a
worker thread and in any Python, with or without numpy (Krita's bundled
Python on Windows/macOS/AppImage has none; Debian's has it).

Krita's native pixel layouts (what Node.pixelData returns), checked against
Krita 5.2.9:

    RGBA U8   B G R A   1 byte each        -> BGRA8 as is
    RGBA U16  B G R A   2 bytes each (LE)  -> swapped to RGBA16
    RGBA F16  R G B A   half floats        -> widened to RGBAF32
    RGBA F32  R G B A   floats             -> RGBAF32 as is
    GRAYA U8/U16/F16/F32  gray, alpha      -> GRAYA8 / GRAYA16 / GRAYAF32

Krita gives new 16-bit and float documents a *linear* profile by default
(sRGB-elle-V2-g10.icc); the wire contract wants non-linear samples, so colour
channels of linear layers are encoded with the sRGB curve before sending.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

try:  # speeds up conversions of large layers; optional
    import numpy as _np
except ImportError:  # pragma: no cover - Krita bundles without numpy
    _np = None

USE_NUMPY = _np is not None  # tests switch this off to check the pure-Python path

# (colour model, depth) -> (wire format, channels, bytes per sample, Krita stores B,G,R)
NATIVE = {
    ("RGBA", "U8"): ("BGRA8", 4, 1, False),  # BGRA8 is on the wire: no swap needed
    ("RGBA", "U16"): ("RGBA16", 4, 2, True),
    ("RGBA", "F16"): ("RGBAF32", 4, 2, False),
    ("RGBA", "F32"): ("RGBAF32", 4, 4, False),
    ("GRAYA", "U8"): ("GRAYA8", 2, 1, False),
    ("GRAYA", "U16"): ("GRAYA16", 2, 2, False),
    ("GRAYA", "F16"): ("GRAYAF32", 2, 2, False),
    ("GRAYA", "F32"): ("GRAYAF32", 2, 4, False),
}
OUTPUTS = ("mask", "selection", "layer")
QUALITIES = ("fast", "hq")   # hq: alpha matting on the uncertain edge band (hair, fur), slower
DEFAULTS = {"model": "", "feather": 0.0, "shift": 0.0, "smooth": 0.0, "contrast": 0.0,
            "quality": "fast", "output": "mask", "decontaminate": False, "autostart": True}
RANGES = {"feather": (0.0, 200.0), "shift": (-200.0, 200.0), "smooth": (0.0, 1.0),
          "contrast": (-1.0, 1.0)}


class PluginError(Exception):
    """A problem found before or after the daemon call, shown to the user as is."""


@dataclass
class Layer:
    """A layer's pixels as plain values: position in image coordinates, Krita's
    native bytes and how to read them."""
    x: int
    y: int
    width: int
    height: int
    model: str
    depth: str
    profile: str
    pixels: bytes
    name: str = ""


def normalize_options(options: dict | None) -> dict:
    """Defaults filled in, numbers clamped, unknown keys rejected."""
    out = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise PluginError(f"unknown option {key!r}; known: {', '.join(sorted(DEFAULTS))}")
        out[key] = value
    for key, (lo, hi) in RANGES.items():
        out[key] = min(max(float(out[key]), lo), hi)
    out["model"] = str(out["model"] or "").strip()
    out["autostart"] = out["autostart"] not in (False, "false", "0", 0)
    out["decontaminate"] = out["decontaminate"] not in (False, "false", "0", 0, "")
    if out["output"] not in OUTPUTS:
        raise PluginError(f"output must be one of {', '.join(OUTPUTS)}, not {out['output']!r}")
    out["quality"] = str(out["quality"] or "fast").strip().lower()
    if out["quality"] not in QUALITIES:
        raise PluginError(f"quality must be one of {', '.join(QUALITIES)}, not {out['quality']!r}")
    return out


def is_linear(profile: str) -> bool:
    p = (profile or "").lower()
    return "g10" in p or "linear" in p or "scrgb" in p


def _srgb(v: float) -> float:
    v = 0.0 if v <= 0.0 else (1.0 if v >= 1.0 else v)
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def encode(layer: Layer) -> tuple[str, bytes]:
    """(wire format name, bytes) for the daemon from Krita's native layout."""
    key = (layer.model, layer.depth)
    if key not in NATIVE:
        raise PluginError(f"layermatte works on RGB and grayscale layers; this layer is "
                          f"{layer.model}/{layer.depth}. Convert it with Image > Convert Image "
                          "Color Space (RGB/Alpha or Grayscale/Alpha).")
    fmt, channels, size, bgr = NATIVE[key]
    data = layer.pixels
    if len(data) != layer.width * layer.height * channels * size:
        raise PluginError(f"Krita returned {len(data)} bytes for a {layer.width}x{layer.height} "
                          f"{layer.model}/{layer.depth} layer")
    if bgr:
        data = swap_red_blue(data, size)
    if size == 2 and layer.depth == "F16":
        data = half_to_float(data)
    if is_linear(layer.profile):
        data = linear_to_srgb(data, fmt, channels)
    return fmt, bytes(data)


def swap_red_blue(data: bytes, size: int) -> bytearray:
    """B,G,R,A <-> R,G,B,A for samples of `size` bytes."""
    out = bytearray(data)
    step = 4 * size
    for k in range(size):
        out[k::step] = data[2 * size + k::step]
        out[2 * size + k::step] = data[k::step]
    return out


def half_to_float(data: bytes) -> bytes:
    if USE_NUMPY:
        return _np.frombuffer(data, "<f2").astype("<f4").tobytes()
    n = len(data) // 2
    return struct.pack(f"<{n}f", *struct.unpack(f"<{n}e", data))


def linear_to_srgb(data: bytes, fmt: str, channels: int) -> bytes:
    """Encode the colour channels (not alpha) of linear-light samples with the sRGB curve."""
    kind = "u1" if fmt.endswith("8") else ("<u2" if fmt.endswith("16") else "<f4")
    if USE_NUMPY:
        a = _np.frombuffer(data, kind).reshape(-1, channels).copy()
        col = a[:, :channels - 1].astype("f8") / (1.0 if kind == "<f4" else float(_np.iinfo(kind).max))
        col = _np.clip(col, 0.0, 1.0)
        col = _np.where(col <= 0.0031308, 12.92 * col, 1.055 * col ** (1 / 2.4) - 0.055)
        if kind == "<f4":
            a[:, :channels - 1] = col.astype("<f4")
        else:
            a[:, :channels - 1] = _np.rint(col * _np.iinfo(kind).max).astype(kind)
        return a.tobytes()
    size = {"u1": 1, "<u2": 2, "<f4": 4}[kind]
    if kind == "u1":
        out = bytearray(data.translate(bytes(round(_srgb(i / 255) * 255) for i in range(256))))
    elif kind == "<u2":
        lut = [round(_srgb(i / 65535) * 65535) for i in range(65536)]
        n = len(data) // 2
        out = bytearray(struct.pack(f"<{n}H", *map(lut.__getitem__, struct.unpack(f"<{n}H", data))))
    else:
        n = len(data) // 4
        out = bytearray(struct.pack(f"<{n}f", *map(_srgb, struct.unpack(f"<{n}f", data))))
    step, a0 = channels * size, (channels - 1) * size
    for k in range(size):  # alpha samples stay as they were
        out[a0 + k::step] = data[a0 + k::step]
    return bytes(out)


def lite_options(options: dict) -> dict:
    out = {k: options[k] for k in ("model", "feather", "shift", "smooth", "contrast", "quality")}
    if options["output"] == "layer":  # a cut-out layer gets the daemon's colours
        out.update(foreground=True, decontaminate=options["decontaminate"])
    return out


def with_colours(layer: Layer, rgb: bytes) -> bytes:
    """The layer's BGRA U8 pixels with the daemon's RGB8 colours (alpha kept).
    Other depths keep their own colours: they may be linear-light, which the
    daemon's sRGB-encoded colours are not."""
    if (layer.model, layer.depth) != ("RGBA", "U8") or len(rgb) != layer.width * layer.height * 3:
        return layer.pixels
    out = bytearray(layer.pixels)
    out[0::4], out[1::4], out[2::4] = rgb[2::3], rgb[1::3], rgb[0::3]
    return bytes(out)


def compute(lite, layer: Layer, options: dict, guide: bytes | None = None, depth16: bool = False,
            progress=None, cancel=None) -> tuple[bytes, dict]:
    """The layer's matte (GRAY8, or GRAY16 LE with depth16) from the daemon, via the
    shared editor client `lite` (layermatte_lite)."""
    fmt, data = encode(layer)
    if guide is not None and len(guide) != layer.width * layer.height:
        raise PluginError("the existing mask does not cover the layer")
    return lite.matte(layer.width, layer.height, fmt, data, options=lite_options(options),
                      guide_mask=guide, depth16=depth16, progress=progress, cancel=cancel,
                      autostart=options["autostart"])
