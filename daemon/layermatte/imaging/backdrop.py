"""What the model sees of a layer with transparency, and how its alpha limits the matte.

A partly transparent layer (an object already cut out, pasted on transparency)
is matted as it *shows*: its pixels composited over a plain backdrop. The
colours under transparent pixels are not part of the picture (often one flat
colour, or whatever was there before a cut) and fed to the model as they are
they decide the matte: a 78 % opaque layer got a 0 % matte. The backdrop is
the one of a few plain candidates (grey, white, black) that differs most from
the layer's visible colours (judged on its weakest-contrast tenth), so the
edge between subject and transparency is an edge the model can see: grey is
the neutral choice, white or black where the subject itself is grey-ish.

The final matte is min(model's matte, layer alpha): the model saw the layer's
alpha already (in the composite), so its matte estimates the visible alpha;
the minimum keeps what is transparent transparent and never removes more than
the model removed (a product would remove twice at soft layer edges).

The model also sees a margin of the same backdrop around such a layer (pad):
layers are stored cropped to their bounds, so a flat shape, a glow or a thin
border touches the edge of the model's input, and the model reads what touches
the border as background (a filled shape got a 0 % matte). The coarse matte is
cropped back to the layer (unpad). Opaque layers are fed as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .formats import PixelFormat, split

# (name, RGB 0..1) in order of preference when contrasts tie.
CANDIDATES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("grey", (0.5, 0.5, 0.5)), ("white", (1.0, 1.0, 1.0)), ("black", (0.0, 0.0, 0.0)))
SAMPLE = 512          # the choice reads about SAMPLE x SAMPLE pixels, whatever the layer's size
ROWS = 512            # compositing runs in blocks of rows (bounded float temporaries)
MARGIN = 0.2          # backdrop margin on each side, as a share of the layer's side


class Shown(np.ndarray):
    """A composite that remembers its backdrop (RGB 0..1), so the model's
    input can be padded with the same colour (None: a picture, fed without a
    margin), and a picture's frame; a view, no copy."""
    backdrop: tuple[float, float, float] | None = None
    frame: Frame | None = None        # a picture's rectangle (picture_frame): fed upright
    alpha: np.ndarray | None = None   # the layer's alpha plane where it has a backdrop (refeed.py)


def has_transparency(pixels: np.ndarray, fmt: PixelFormat) -> bool:
    """Whether any pixel of the layer is less than opaque."""
    if not fmt.has_alpha:
        return False
    a = cv2.extractChannel(pixels, fmt.channels - 1)   # one pass, SIMD (numpy's strided min: ~5x slower)
    return cv2.minMaxLoc(a)[0] < fmt.max_value


def choose(pixels: np.ndarray, fmt: PixelFormat) -> tuple[float, float, float]:
    """The candidate backdrop (RGB 0..1) that contrasts most with the layer's
    visible pixels (alpha >= 1/2) on a strided sample; deterministic, so every
    caller that composites the same layer gets the same backdrop."""
    step = max(1, max(pixels.shape[:2]) // SAMPLE)
    s = pixels[::step, ::step].astype(np.float32) * np.float32(1.0 / fmt.max_value)
    colour, alpha = s[..., :-1], s[..., -1]
    if fmt.bgr:
        colour = colour[..., ::-1]
    if colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    seen = colour[alpha >= 0.5]
    if seen.size == 0:
        return CANDIDATES[0][1]
    best, best_score = CANDIDATES[0][1], -1.0
    for _, rgb in CANDIDATES:
        d = np.abs(seen - np.float32(rgb)).max(axis=-1)   # the channel that differs most
        score = float(np.percentile(d, 10))
        if score > best_score + 1e-6:
            best, best_score = rgb, score
    return best


def composite(pixels: np.ndarray, fmt: PixelFormat, rgb: tuple[float, float, float]) -> np.ndarray:
    """The layer over the backdrop, as an opaque array in the layer's own
    dtype and channel layout (alpha at its maximum), so the rest of the
    pipeline reads it like any opaque layer."""
    top = fmt.max_value
    nc = fmt.channels - 1
    bg = np.array(rgb[::-1] if fmt.bgr else rgb, np.float32)[:3 if nc >= 3 else 1]
    if nc == 1:
        bg = np.array([0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]], np.float32)
    bg *= np.float32(top)
    out = np.empty(pixels.shape, fmt.dtype)
    for y in range(0, pixels.shape[0], ROWS):
        rows = pixels[y:y + ROWS]
        a = np.clip(rows[..., -1:].astype(np.float32) * np.float32(1.0 / top), 0.0, 1.0)
        c = rows[..., :nc].astype(np.float32)
        mixed = bg + (c - bg) * a
        if fmt.dtype.kind == "u":
            mixed += 0.5
            np.clip(mixed, 0, top, out=mixed)
        out[y:y + ROWS, :, :nc] = mixed
        out[y:y + ROWS, :, nc] = top
    return out


def shown(pixels: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """The layer as it shows: itself when opaque (no copy), else composited
    over the chosen backdrop. Objects on transparency and shapes with soft
    alpha get the margin; pictures do not: framed in backdrop, a whole photo
    reads as one object and its matte keeps the photo's background. Pictures
    are photos with a few clear pixels (under CUT_OUT_SHARE), fed as they
    show, and layers whose visible part is one solid rectangle
    (picture_frame), fed upright."""
    if not has_transparency(pixels, fmt):
        return pixels
    rgb = choose(pixels, fmt)
    out = composite(pixels, fmt, rgb).view(Shown)
    a = cv2.extractChannel(pixels, fmt.channels - 1)
    if np.count_nonzero(a < fmt.max_value) >= CUT_OUT_SHARE * a.size:
        out.frame = picture_frame(a, fmt.max_value)
        out.backdrop = rgb if out.frame is None else None
        out.alpha = a if out.frame is None else None
    return out


CUT_OUT_SHARE = 0.005  # of the layer's pixels less than opaque: a photo with a small hole (0.1 %) is
                       # not padded; the crispest corpus shape (0.95 %, clipping-mask Shape 3) is


RECT_FILL = 0.985   # visible share of the smallest enclosing rotated rectangle for a picture
RECT_MIN_SIDE = 48  # px: a smaller rectangle is a shape (a button, a square), not a picture
BOUNDS_SHARE = 0.9  # an upright rectangle over this share of the layer is the layer's own bounds


@dataclass(frozen=True)
class Frame:
    """A picture's rectangle on the layer (full-resolution px): its centre,
    its upright size and the turn that sets it upright (degrees within +-45,
    cv2.getRotationMatrix2D's sense).
    A rotated or placed photo is matted upright, as the photo it is:
    on three photos turned by 8 and 20 degrees, the matte of the turned
    layer agreed with the upright photo's at 0.59-0.98 IoU as shown over a
    backdrop (0.48-0.82 with the margin), at 0.965-0.998 fed upright."""
    cx: float
    cy: float
    w: int
    h: int
    angle: float

    def to_upright(self) -> np.ndarray:
        """2x3 affine: layer px -> upright picture px."""
        m = cv2.getRotationMatrix2D((self.cx, self.cy), self.angle, 1.0)
        m[0, 2] += (self.w - 1) / 2.0 - self.cx
        m[1, 2] += (self.h - 1) / 2.0 - self.cy
        return m

    def upright(self, pixels: np.ndarray) -> np.ndarray:
        """The picture turned upright and cropped to its rectangle (edge pixels repeated)."""
        return cv2.warpAffine(pixels, self.to_upright(), (self.w, self.h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def grid_map(self, layer_w: int, layer_h: int, size: int) -> tuple[float, ...]:
        """2x3 affine from the layer's size x size model grid to the upright
        picture's (pixel centres aligned as cv2.resize aligns them), flattened."""
        def px_to_grid(w: int) -> tuple[float, float]:    # g = (x + 0.5) * size / w - 0.5
            return size / w, 0.5 * size / w - 0.5
        sx, tx = px_to_grid(layer_w)
        sy, ty = px_to_grid(layer_h)
        grid_to_layer = np.array([[1 / sx, 0, -tx / sx], [0, 1 / sy, -ty / sy], [0, 0, 1]])
        ux, utx = px_to_grid(self.w)
        uy, uty = px_to_grid(self.h)
        up_to_grid = np.array([[ux, 0, utx], [0, uy, uty], [0, 0, 1]])
        m = up_to_grid @ np.vstack([self.to_upright(), [0, 0, 1]]) @ grid_to_layer
        return tuple(float(v) for v in m[:2].ravel())


def picture_frame(alpha: np.ndarray, top: float) -> Frame | None:
    """The rectangle, at any angle, that the visible part (alpha >= 1/2) fills
    solidly, found on a copy at most SAMPLE px long; None for any other shape
    (a rounded button fills ~97 % of its rectangle, a turned photo over 99 %)
    and for an upright rectangle that is the layer's own bounds (a rectangle
    shape, a layer with feathered edges: corpus layers that need the margin)."""
    h, w = alpha.shape
    f = min(1.0, SAMPLE / max(h, w))
    small = alpha if f == 1.0 else cv2.resize(alpha, (max(1, round(w * f)), max(1, round(h * f))),
                                              interpolation=cv2.INTER_AREA)
    mask = (small >= top / 2).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) != 1:
        return None
    (cx, cy), (rw, rh), angle = cv2.minAreaRect(contours[0])
    # minAreaRect bounds pixel centres: the pixels' own area is a half pixel more each side
    if min(rw, rh) / f < RECT_MIN_SIDE or np.count_nonzero(mask) < RECT_FILL * (rw + 1) * (rh + 1):
        return None
    while angle > 45:          # the same rectangle, turned by less
        angle, rw, rh = angle - 90, rh, rw
    while angle <= -45:
        angle, rw, rh = angle + 90, rh, rw
    if abs(angle) < 1.0 and (rw + 1) * (rh + 1) > BOUNDS_SHARE * mask.size:
        return None    # upright and filling the layer: a shape or a feathered layer (margin as before)
    sx, sy = w / small.shape[1], h / small.shape[0]
    return Frame((cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5,
                 max(1, round((rw + 1) * sx)), max(1, round((rh + 1) * sy)), float(angle))


def to_layer_grid(matte: np.ndarray, grid_map: tuple[float, ...]) -> np.ndarray:
    """The model's matte of the upright picture, back on the layer's grid (0 outside it)."""
    m = np.array(grid_map, np.float64).reshape(2, 3)
    return cv2.warpAffine(matte, m, (matte.shape[1], matte.shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)


def inner_box(size: int, margin: float = MARGIN) -> tuple[int, int]:
    """(offset, side) of the layer inside the padded size x size model input."""
    p = int(round(size * margin / (1.0 + 2.0 * margin)))
    return p, size - 2 * p


def pad(small: np.ndarray, fmt: PixelFormat, rgb: tuple[float, float, float], size: int) -> np.ndarray:
    """small (colour planes of the layer at inner_box's side, the layer's dtype)
    centred on a size x size canvas of the backdrop colour."""
    px = np.zeros((1, 1, fmt.channels), fmt.dtype)            # one clear pixel over the backdrop
    colour = split(composite(px, fmt, rgb), fmt)[0][0, 0]
    out = np.empty((size, size, small.shape[2]), small.dtype)
    out[...] = colour
    p, side = inner_box(size)
    out[p:p + side, p:p + side] = small
    return out


def unpad(matte: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """The model's matte over the padded input, cropped back to the layer and
    resized to the model's grid (where the guide lies)."""
    s = matte.shape[0]
    p, side = inner_box(s, margin)
    inner = np.ascontiguousarray(matte[p:p + side, p:p + side])
    return cv2.resize(inner, (matte.shape[1], s), interpolation=cv2.INTER_LINEAR)



def limit(q: np.ndarray, rows: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """min(matte, layer alpha) for a block of rows (q 0..1 float32, not written)."""
    if fmt.dtype.kind == "u":
        a = cv2.extractChannel(rows, fmt.channels - 1)
        if cv2.minMaxLoc(a)[0] == fmt.max_value:   # opaque rows, the usual case: nothing to do
            return q
        return np.minimum(q, a.astype(np.float32) * np.float32(1.0 / fmt.max_value))
    # Float layers may carry alpha outside 0..1.
    return np.minimum(q, np.clip(rows[..., -1], 0.0, 1.0).astype(np.float32))


def to_layer(matte: np.ndarray, padded: bool, grid_map: tuple[float, ...] | None) -> np.ndarray:
    """The model's matte on the layer's grid, whichever way the layer was fed."""
    if grid_map is not None:
        return to_layer_grid(matte, grid_map)
    return unpad(matte) if padded else matte
