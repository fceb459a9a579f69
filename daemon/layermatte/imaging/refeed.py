"""Another look for a cut-out layer when the model finds almost nothing on it.

A layer with transparency is fed to the model as it shows over one plain
backdrop with a margin (backdrop.py). For some layers that one view is the
wrong one: three layers of the PSD corpus, all already cut out (a soft white
stroke shown over black, a soft glow over white, a white figure holding a
flat banner over black), got mattes keeping 0-35 % of their opaque area,
while the same model keeps 97-100 % of each over grey, or with a wider
margin. A layer that is already a cut-out is what the user kept; a matte
that drops most of it makes the layer vanish. So when the first matte keeps
less than RETRY_BELOW of the layer's opaque area, the model is asked again
over the other backdrops, then with a wider margin, and the matte that keeps
most is used (the first one keeping GOOD ends the search). The final matte
is still min(matte, layer alpha), so nothing transparent is kept; the other
views only decide what the model removes. Layers whose first matte keeps
more than RETRY_BELOW cost nothing extra.

Each other view is made from the first on the model's grid: compositing is
linear and area averaging too, so the layer over backdrop b2 is the first
composite plus (b2 - b1)(1 - alpha), equal to compositing the full-size layer
up to a second resampling of its texture (tests/test_refeed.py: 0.2-0.4 of
an 8-bit level on average). The Ray batch's actor can therefore make them
from what its reader sends, without the layer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from . import backdrop
from .formats import PixelFormat

log = logging.getLogger(__name__)

RETRY_BELOW = 0.5    # share of the layer's opaque area the first matte keeps, below which it looks again
GOOD = 0.9           # a view keeping this much ends the search
WIDE_MARGIN = 0.5    # the second round's margin (a soft glow is read as a subject only with more room)
OPAQUE = 0.99        # alpha on the model's grid counted as the layer's opaque area


@dataclass(frozen=True)
class CutOutView:
    """The first view on the model's grid: the layer over `backdrop`
    (S x S x 3 float32 RGB 0..1, the guide), and the layer's alpha there."""
    shown: np.ndarray
    alpha: np.ndarray
    backdrop: tuple[float, float, float]

    def over(self, rgb: tuple[float, float, float], margin: float) -> np.ndarray:
        """The model's input image (S x S x 3 float32 RGB 0..1): the layer over rgb,
        centred in a margin of it (as backdrop.pad places it)."""
        s = self.alpha.shape[0]
        p, side = backdrop.inner_box(s, margin)
        shift = np.float32(rgb) - np.float32(self.backdrop)
        colour = self.shown + shift * (1.0 - self.alpha)[..., None]
        out = np.empty_like(colour)
        out[...] = np.float32(rgb)
        out[p:p + side, p:p + side] = cv2.resize(colour, (side, side), interpolation=cv2.INTER_AREA)
        return out


def grid_alpha(alpha: np.ndarray, fmt: PixelFormat, size: int) -> np.ndarray:
    """The layer's alpha plane area-averaged to the model's size x size grid, 0..1."""
    a = alpha.astype(np.float32) if alpha.dtype != np.float32 else alpha
    if fmt.dtype.kind != "f":
        a = a * np.float32(1.0 / fmt.max_value)
    a = cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(a, 0.0, 1.0)


def kept(matte: np.ndarray, alpha: np.ndarray) -> float | None:
    """Share of the layer's opaque area (its half-opaque area if nothing is
    opaque) that the matte keeps (>= 1/2); None when the layer shows nothing."""
    for level in (OPAQUE, 0.5):
        where = alpha >= level
        n = np.count_nonzero(where)
        if n:
            return float(np.count_nonzero(matte[where] >= 0.5)) / n
    return None


def views(first: tuple[float, float, float]) -> list[tuple[tuple[float, float, float], float]]:
    """(backdrop, margin) of every other view, in the order they are tried."""
    others = [(rgb, backdrop.MARGIN) for _, rgb in backdrop.CANDIDATES if rgb != first]
    return others + [(rgb, WIDE_MARGIN) for _, rgb in backdrop.CANDIDATES]


def second_look(first: np.ndarray, view: CutOutView, pre, infer: Callable[[np.ndarray], np.ndarray],
                check: Callable[[], None] = lambda: None) -> np.ndarray:
    """The coarse matte to refine: `first` (the first view's, on the model's
    grid) unless it keeps less than RETRY_BELOW of the layer's opaque area
    and another view keeps more. pre: the model's Preprocess; infer(tensor):
    the model's matte (0..1) for an input tensor."""
    share = kept(first, view.alpha)
    if share is None or share >= RETRY_BELOW:
        return first
    best, best_share, tried = first, share, 0
    for rgb, margin in views(view.backdrop):
        check()
        tried += 1
        matte = backdrop.unpad(infer(pre.tensor(view.over(rgb, margin), 255.0)), margin)
        k = kept(matte, view.alpha)
        if k > best_share:
            best, best_share = matte, k
        if k >= GOOD:
            break
    log.info("cut-out layer: the first view kept %.0f%% of its opaque area; %d more views, "
             "the matte used keeps %.0f%%", 100 * share, tried, 100 * best_share)
    return best
