"""Writing a layer's pixel mask into its own record, leaving every other mask byte alone.

A layer's mask data describes up to two masks. With a pixel mask alone, channel -2
and the first rectangle are that mask. With a vector mask too, Photoshop renders the
vector mask into channel -2 (flags bit 3: "came from rendering other data") and keeps
the user's pixel mask in channel -3, described by the "real" flags, background and
rectangle; density and feather (flags bit 4) follow as mask parameters. psd-tools 1.26
reads the real fields but reports ``has_real()`` false unless the real flags have
``parameters_applied``, and its ``remove_mask()`` drops channel -2 and the record yet
leaves channel -3 behind. So the pixel mask is found and written here from the record
itself: only that mask's channel, rectangle and background colour change. Records
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
    version = layer._psd.version
    record = layer._record
    data = record.mask_data
    if slot.kind == "user":
        data.top, data.left, data.bottom, data.right = top, left, top + h, left + w
        data.background_color = 0
    elif slot.kind == "real":
        data.real_top, data.real_left, data.real_bottom, data.real_right = top, left, top + h, left + w
        data.real_background_color = 0
    else:
        raise AssertionError(slot)      # "new" masks are created through psd-tools (create_mask)
    i = _ids(layer).index(slot.channel)
    layer._channels[i].set_data(raw, w, h, depth, version)
    record.channel_info[i].length = layer._channels[i]._length
    if hasattr(layer, "_mask"):
        del layer._mask
    layer._psd.mark_updated()
    return slot


def _raw(matte: np.ndarray, depth: int) -> bytes:
    if depth == 16:
        m = matte if matte.dtype == np.uint16 else matte.astype(np.uint16) * 257
        return m.astype(">u2").tobytes()
    m = matte if matte.dtype == np.uint8 else ((matte.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return m.tobytes()
