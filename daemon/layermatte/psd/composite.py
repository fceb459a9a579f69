"""Whether psd-tools' renderer may redraw a document's merged composite.

Saving an edited document makes psd-tools re-render the merged image (what file
previews, viewers and placing applications show). Its renderer leaves out layer
effects, mask density/feather, artboard backgrounds and gets fill and adjustment
layers wrong, so on many real files that picture would be wrong. The test is the
file itself: render the document as it came, before any mask is added, and compare
with the composite Photoshop stored. Only when they agree within TOLERANCE is a
re-render after adding masks trusted; otherwise the stored composite (and the
thumbnail, which psd-tools never touches) are kept byte for byte.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import sections

log = logging.getLogger(__name__)

# A pixel is "off" when any channel differs by more than LEVELS (in 8-bit steps);
# the render is trusted when at most OFF_FRACTION of the pixels are off.
LEVELS = 8
OFF_FRACTION = 0.001


@dataclass(frozen=True)
class CompositeCheck:
    trusted: bool
    off_fraction: float      # measured on the input; 1.0 when it could not be rendered
    reason: str = ""

    def describe(self, rerendered: bool) -> str:
        if rerendered:
            return (f"composite re-rendered with the new masks (psd-tools reproduces this file's own "
                    f"composite: {self.off_fraction:.2%} of pixels off by more than {LEVELS} levels)")
        return f"composite and thumbnail kept as stored, without the new masks ({self.reason})"


def check_renderer(psd, data: bytes) -> CompositeCheck:
    """Render `psd` (as read from `data`, unedited) and compare with its stored composite."""
    from psd_tools.api.numpy_io import encode_image_data
    from psd_tools.composite import composite
    try:
        parts = sections.read(data)
        stored = sections.decode_image_data(parts).astype(np.int64)
    except (sections.SectionError, ValueError) as e:
        return CompositeCheck(False, 1.0, f"stored composite not readable: {e}")
    try:
        color, _, alpha = composite(psd)
        planes = encode_image_data(psd, color, alpha)
    except Exception as e:  # psd-tools' renderer failing on some layer kind
        log.info("psd-tools cannot render the document: %s", e)
        return CompositeCheck(False, 1.0, "psd-tools cannot render this document")
    dtype = ">u1" if parts.depth == 8 else ">u2"
    got = np.frombuffer(b"".join(planes), dtype)
    if got.size != stored.size:
        return CompositeCheck(False, 1.0, "psd-tools renders a different image shape")
    got = got.reshape(stored.shape).astype(np.int64)
    levels = LEVELS if parts.depth == 8 else LEVELS * 257
    off = float((np.abs(got - stored) > levels).any(axis=0).mean()) if stored.size else 0.0
    if off > OFF_FRACTION:
        return CompositeCheck(False, off, f"psd-tools' renderer differs from this file's own composite "
                                          f"on {off:.1%} of pixels")
    return CompositeCheck(True, off)
