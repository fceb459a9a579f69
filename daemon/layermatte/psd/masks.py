"""Writing a layer's pixel mask into its own record, leaving every other mask byte alone.

A layer's mask data describes up to two masks. With a pixel mask alone, channel -2
and the first rectangle are that mask. With a vector mask too, Photoshop renders the
vector mask into channel -2 (flags bit 3: "came from rendering other data") and keeps
the user's pixel mask in channel -3, described by the "real" flags, background and
rectangle; density and feather (flags bit 4) follow as mask parameters. psd-tools 1.26
reads the real fields but reports ``has_real()`` false unless the real flags have
``parameters_applied``, and its ``remove_mask()`` drops channel -2 and the record yet
leaves channel -3 behind. So the pixel mask is found and written here from the record
itself: only that mask's channel, rectangle and background colour change -- and, beside
a vector mask, channel -2, which is Photoshop's rendering of the pixel mask clipped by
the vector mask (round(-3 x vector coverage), exactly, on every such layer of the
corpus). Readers that know no channel -3 show -2 (GIMP 3.0 and 3.2 do), so it is
re-rendered from the new pixel mask over its own rectangle; left as it was, they showed
the old mask. Records
it does not write -- a vector mask with no pixel mask beside it, a rectangle relative
to the layer, mask channels without mask data -- are refused with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

class MaskRefused(ValueError):
    """The layer's mask record is one this code does not write (the reason is the message)."""


@dataclass(frozen=True)
class MaskSlot:
    channel: int       # -2 or -3: where the pixel mask lives (or will)
    kind: str          # "new", "user" (replace -2), "real" (replace -3)


def _ids(layer) -> list[int]:
    return [int(ci.id) for ci in layer._record.channel_info]


def pixel_mask_slot(layer) -> MaskSlot:
    """Where this layer's pixel mask is, or would go; MaskRefused for records we do not write."""
    data = layer._record.mask_data
    ids = _ids(layer)
    if data is None:
        if -2 in ids or -3 in ids:
            raise MaskRefused("mask channels without mask data (damaged record)")
        return MaskSlot(-2, "new")
    if data.flags.pos_relative_to_layer:
        raise MaskRefused("its mask is positioned relative to the layer; not written by layermatte")
    if -3 in ids:
        if data.real_flags is None or data.real_top is None:
            raise MaskRefused("its real user mask (channel -3) has no rectangle; not written by layermatte")
        return MaskSlot(-3, "real")
    if -2 not in ids:
        raise MaskRefused("mask data without a mask channel (damaged record)")
    if data.flags.user_mask_from_render:   # -2 is the vector mask, rendered: there is no pixel mask
        raise MaskRefused("it has a vector mask and no pixel mask; layermatte does not add one beside it "
                          "(add a layer mask in Photoshop, then use --replace-masks)")
    return MaskSlot(-2, "user")


def write_pixel_mask(layer, matte: np.ndarray, depth: int) -> MaskSlot:
    """`matte` (layer-sized, uint8 or uint16 matching `depth`) becomes the layer's pixel mask,
    placed at the layer's bounds with background 0."""
    slot = pixel_mask_slot(layer)
    h, w = matte.shape
    top, left = layer._record.top, layer._record.left
    raw = _raw(matte, depth)
    record = layer._record
    data = record.mask_data
    if slot.kind == "user":
        data.top, data.left, data.bottom, data.right = top, left, top + h, left + w
        data.background_color = 0
    elif slot.kind == "real":
        data.real_top, data.real_left, data.real_bottom, data.real_right = top, left, top + h, left + w
        data.real_background_color = 0
        _render_user_mask(layer, matte, depth)
    else:
        raise AssertionError(slot)      # "new" masks are created through psd-tools (create_mask)
    _set_channel(layer, slot.channel, raw, w, h, depth)
    if hasattr(layer, "_mask"):
        del layer._mask
    layer._psd.mark_updated()
    return slot


def _set_channel(layer, cid: int, raw: bytes, w: int, h: int, depth: int) -> None:
    i = _ids(layer).index(cid)
    layer._channels[i].set_data(raw, w, h, depth, layer._psd.version)
    layer._record.channel_info[i].length = layer._channels[i]._length


def _render_user_mask(layer, matte: np.ndarray, depth: int) -> None:
    """Channel -2 made again from the new pixel mask when it is a rendering (flags bit 3) of
    that mask clipped by the layer's vector mask: matte x the vector's coverage (psd-tools'
    area rasterizer), over -2's own rectangle; a disabled vector mask clips nothing. Where
    the rectangle's background is not 0 (the vector covers what lies outside its box) the
    rectangle grows to hold the layer and the background becomes 0 (no pixel mask there)."""
    data = layer._record.mask_data
    vector = getattr(layer, "vector_mask", None)
    if not data.flags.user_mask_from_render or vector is None or -2 not in _ids(layer):
        return
    top, left = layer._record.top, layer._record.left
    h, w = matte.shape
    t, l, b, r = data.top, data.left, data.bottom, data.right
    if data.background_color != 0:
        t, l, b, r = min(t, top), min(l, left), max(b, top + h), max(r, left + w)
        data.top, data.left, data.bottom, data.right, data.background_color = t, l, b, r, 0
    if b <= t or r <= l:
        return
    real = np.zeros((b - t, r - l), np.float64)
    y0, y1, x0, x1 = max(t, top), min(b, top + h), max(l, left), min(r, left + w)
    if y1 > y0 and x1 > x0:
        real[y0 - t:y1 - t, x0 - l:x1 - l] = matte[y0 - top:y1 - top, x0 - left:x1 - left]
    if vector.disabled:
        rendered = real
    else:
        from psd_tools.composite.vector import draw_vector_mask
        rendered = real * draw_vector_mask(layer, viewport=(l, t, r, b))[..., 0]
    _set_channel(layer, -2, _raw(np.rint(rendered).astype(matte.dtype), depth), r - l, b - t, depth)


def _raw(matte: np.ndarray, depth: int) -> bytes:
    if depth == 16:
        m = matte if matte.dtype == np.uint16 else matte.astype(np.uint16) * 257
        return m.astype(">u2").tobytes()
    m = matte if matte.dtype == np.uint8 else ((matte.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return m.tobytes()
