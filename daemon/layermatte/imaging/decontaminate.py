"""Decontamination: the foreground's own colours where alpha is partial,
without the old background mixed in (I = aF + (1-a)B, Porter & Duff 1984).

Two estimates, for two kinds of soft region:
- Along edges (strands, outlines, blur ramps): blur fusion (Forte & Pitié,
  ICIP 2021; box filters, no compiled kernels, so no first-use compilation),
  averaged locally toward the nearly opaque pixels (estimate_foreground),
  only on tiles that hold partial alpha. The wide steps come from the coarse
  grid and the local averages are taken on 1/2 and 1/4 grids: they are
  blurs of 4-12 px, which such grids hold; only the per-pixel residual
  steps run at full resolution.
- Inside wide see-through areas (glass, veils, smoke, defocus): blur
  fusion's boxes reach across the area and carry the background's texture
  into F, so there the edge estimate gives way to a multi-level estimate
  (foreground_ml.py: Germer et al., ICPR 2020) on the tile, held together
  by smoothness along alpha, by the area's strength (tint.see_through_area);
  and the tint prior (tint.py), F from a joint solve of F and B on a coarse
  grid, replaces it in the middle of the area where the object's colour is
  steadier than the background's. Only tiles that hold such an area pay
  for the multi-level estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from . import foreground_ml
from .refine import resize_rows
from .tint import (ML_OMEGA, SeeThrough, TintPrior, see_through, see_through_area,  # noqa: F401
                   tint_prior)  # (part of this stage's interface)

DECON_SIGMA = 4.0     # px: reach of the foreground-colour averaging on a thin edge
DECON_WIDE_SIGMA = 12.0  # px: the same where the soft region is wide (blur, glass)
DECON_POWER = 8       # weight alpha**8: nearly opaque pixels speak for the colour
DECON_MARGIN = 32     # px of context each side of a strip or tile
# Tiles inside a see-through area (tint.see_through_area) get foreground_ml's
# estimate blended in. Measured on bench/quality's stage halo (true matte),
# glass 3840x2160 / 6000x4000 / defocus 3840x2160, where blur fusion alone
# cut 23 / 39 / 66 % and pymatting's whole-image estimate had cut 34 / 44 / 68 %:
# a tile's own pyramid from 1 px reached too little of a wide body (6000: 43.5 %
# with the usual 32 px of context, 44.0 % with 64); started from a solve of the
# whole layer on a tint.ML_GRID grid instead, it reaches all of it with the usual
# context: 35.2 / 44.8 / 69.0 %.
# The tile's solve runs ML_STEP times coarser than full resolution (the
# colours it must tell apart are the texture of what is seen through, not
# single pixels: step 1, 2, 4 measured the same) and starts ML_START times
# coarser still (4: 33.9 / 44.7 / 68.1 %). Smoothness per unit of alpha
# change tint.ML_OMEGA, far below hq's (glass 3840: 33.3 % at 10, 35.3 % at 0.1).
ML_STEP = 4
ML_START = 8
DECON_TILE = 256      # columns per tile: only tiles with partial pixels are computed
BF_RADII = (90, 30, 6)   # blur fusion's box radii, full-res px: all but the last on the coarse grid
PARTIAL = (0.004, 0.996)   # alpha strictly inside these: mixed colours (about 1/255 from either end)
THIN_STEP, WIDE_STEP = 2, 4   # grid steps (full-res px) of the DECON_SIGMA and DECON_WIDE_SIGMA averages
ALIGN = WIDE_STEP     # windows start on multiples of this, so neighbouring tiles' grids coincide


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _three(a: np.ndarray) -> np.ndarray:
    """A plane as three equal channels. numpy broadcasting a[..., None] over
    a last axis of 3 runs its inner loop 3 elements long: ~20x slower per
    product than two arrays of the same shape."""
    return cv2.merge([a, a, a])


def _means(image: np.ndarray, a: np.ndarray, f: np.ndarray, b: np.ndarray,
           r: int, a3: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion mean step: F weighted by alpha, B by 1 - alpha, box radius r
    (a3: _three(a) when the caller has it)."""
    a3 = _three(a) if a3 is None else a3
    ka = _three(_box(a, r))
    fh = _box(f * a3, r)
    fh /= np.maximum(ka, 1e-5)
    bh = _box(b * (1 - a3), r)
    bh /= np.maximum(1 - ka, 1e-5)
    return fh, bh


def _fuse(image: np.ndarray, a: np.ndarray, fh: np.ndarray, bh: np.ndarray,
          background: bool = True, a3: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """F and B from their local means and the compositing residual
    (F = F̂ + a·r, B = B̂ + (1-a)·r, r = I - aF̂ - (1-a)B̂ = I - B̂ - a(F̂ - B̂))."""
    a3 = _three(a) if a3 is None else a3
    res = np.subtract(fh, bh)
    res *= a3
    np.subtract(image, res, out=res)
    res -= bh
    ar = res * a3
    f = np.add(fh, ar)
    np.clip(f, 0, 1, out=f)
    if not background:
        return f, None
    b = np.add(bh, res)
    b -= ar
    return f, np.clip(b, 0, 1, out=b)


@dataclass(frozen=True)
class WideMeans:
    """The first, wide blur-fusion step (F̂, B̂) on the coarse grid; rows()
    brings it to full resolution. At a radius of BF_RADII[0] full-res pixels
    these means are smooth enough that the model's grid holds them."""

    fg: np.ndarray    # h x w x 3 float32
    bg: np.ndarray

    def rows(self, full_w: int, full_h: int, y0: int, y1: int,
             x0: int = 0, x1: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return (resize_rows(self.fg, full_w, full_h, y0, y1, x0, x1),
                resize_rows(self.bg, full_w, full_h, y0, y1, x0, x1))


def wide_means(image: np.ndarray, alpha: np.ndarray, full_w: int) -> WideMeans:
    """image, alpha: the layer on a coarse grid (the model's); full_w: the
    layer's width, to scale the radius."""
    a = np.ascontiguousarray(alpha, np.float32)
    i = np.ascontiguousarray(image, np.float32)
    return WideMeans(*_wide(i, a, alpha.shape[1] / full_w))


def _wide(i: np.ndarray, a: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """All but the last blur-fusion step, radii scaled to the grid."""
    fh, bh = i, i
    for k, r in enumerate(BF_RADII[:-1]):
        f, b = (i, i) if k == 0 else _fuse(i, a, fh, bh)
        fh, bh = _means(i, a, f, b, max(1, round(r * scale)))
    return fh.astype(np.float32), bh.astype(np.float32)


def _down(x: np.ndarray, step: int) -> np.ndarray:
    """Means of step x step blocks (the far edges replicated up to a multiple)."""
    h, w = x.shape[:2]
    ph, pw = -h % step, -w % step
    if ph or pw:
        x = cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return cv2.resize(x, ((w + pw) // step, (h + ph) // step), interpolation=cv2.INTER_AREA)


def _up(x: np.ndarray, step: int, h: int, w: int) -> np.ndarray:
    """_down's grid back to full resolution, bilinear, cropped to h x w."""
    return cv2.resize(x, (x.shape[1] * step, x.shape[0] * step), interpolation=cv2.INTER_LINEAR)[:h, :w]


def _local_mean(xw: np.ndarray, w: np.ndarray, sigma: float, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian normalised convolution on a grid of `step` px: the w-weighted
    local mean of x (xw = x·w given) and the weights' own blur, both at full
    resolution. The block means and the bilinear way back widen the blur by
    about step/2 px, which the grid's sigma leaves out."""
    h, w_ = w.shape
    s = np.sqrt(max(sigma * sigma - step * step / 4, step * step / 16)) / step
    num = cv2.GaussianBlur(_down(xw, step), (0, 0), s)
    den = cv2.GaussianBlur(_down(w, step), (0, 0), s)
    num /= _three(np.maximum(den, 1e-30))    # a weighted mean wherever any weight reached
    return _up(num, step, h, w_), _up(den, step, h, w_)


def partial(alpha: np.ndarray) -> np.ndarray:
    """Where colours matter and are mixed: alpha strictly between its 8-bit ends."""
    return (alpha > PARTIAL[0]) & (alpha < PARTIAL[1])


def band_tiles(alpha: np.ndarray, y0: int = 0, y1: int | None = None) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) boxes of alpha, DECON_TILE columns wide, that hold
    partial pixels in rows y0..y1 (alpha may have context rows around them);
    each is the partial pixels' bounding box in the tile. Opaque and clear
    tiles keep the pixel's own colour, so they are not computed at all."""
    y1 = alpha.shape[0] if y1 is None else y1
    mask = partial(alpha[y0:y1])
    cols = mask.any(0)
    out = []
    for x0 in range(0, alpha.shape[1], DECON_TILE):
        x1 = min(alpha.shape[1], x0 + DECON_TILE)
        if not cols[x0:x1].any():
            continue
        rows = np.flatnonzero(mask[:, x0:x1].any(1))
        xs = np.flatnonzero(cols[x0:x1])
        out.append((y0 + rows[0], y0 + rows[-1] + 1, x0 + xs[0], x0 + xs[-1] + 1))
    return out


def window(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The box DECON_MARGIN px larger each side, clipped to shape, its start
    on a multiple of ALIGN (so every window's coarse grids line up with
    the layer's when the array starts on one): what estimate_tile reads."""
    y0, y1, x0, x1 = box
    m = DECON_MARGIN
    return (max(0, y0 - m) // ALIGN * ALIGN, min(shape[0], y1 + m),
            max(0, x0 - m) // ALIGN * ALIGN, min(shape[1], x1 + m))


def estimate_tile(image: np.ndarray, alpha: np.ndarray, core: tuple[slice, slice],
                  means: tuple[np.ndarray, np.ndarray], prior: np.ndarray | None = None,
                  area: tuple | None = None) -> np.ndarray:
    """Foreground colours of `core` of a window (image float RGB 0..1, alpha,
    the WideMeans, TintPrior and SeeThrough rows of the same pixels; area
    None: none in reach): partial pixels estimated, the others their own
    colour."""
    i = np.ascontiguousarray(image, np.float32)
    a = np.ascontiguousarray(alpha, np.float32)
    h, w = a.shape
    a3 = _three(a)
    f, b = _fuse(i, a, *means, a3=a3)
    f, _ = _fuse(i, a, *_means(i, a, f, b, BF_RADII[-1], a3), background=False, a3=a3)
    if area is not None:
        share, start = area
        fm = _ml_foreground(i, a, start)
        fm -= f
        fm *= _three(np.ascontiguousarray(share, np.float32))
        f += fm
    own = cv2.multiply(a, a)
    cv2.multiply(own, own, dst=own)               # alpha**4: how much a pixel keeps its own estimate
    wgt = cv2.multiply(own, own)                  # alpha**DECON_POWER
    fw = f * _three(wgt)
    thin, den_thin = _local_mean(fw, wgt, DECON_SIGMA, THIN_STEP)
    wide, den_wide = _local_mean(fw, wgt, DECON_WIDE_SIGMA, WIDE_STEP)
    # Where no nearly opaque pixel is in reach, a pixel keeps its own estimate.
    thin = cv2.copyTo(f, (den_thin <= 1e-4).view(np.uint8), thin)
    wide = cv2.copyTo(f, (den_wide <= 1e-4).view(np.uint8), wide)
    # How much of the neighbourhood is soft: ~0 along a crisp outline, 1 inside a blur.
    s = np.sqrt(DECON_WIDE_SIGMA ** 2 - WIDE_STEP ** 2 / 4) / WIDE_STEP
    t = cv2.GaussianBlur(_down(partial(a).view(np.uint8).astype(np.float32), WIDE_STEP), (0, 0), s)
    t = np.clip((_up(t, WIDE_STEP, h, w) - 0.5) / 0.4, 0, 1)
    # f = own·f + (1 - own)·(thin + t·(wide - thin)), in place.
    wide -= thin
    wide *= _three(t)
    wide += thin
    f -= wide
    f *= _three(own)
    f += wide
    if prior is not None:
        f += _three(np.ascontiguousarray(prior[..., 3])) * (prior[..., :3] - f)
    out = i[core].copy()
    return cv2.copyTo(f[core], partial(a[core]).view(np.uint8), out)


def _ml_foreground(i: np.ndarray, a: np.ndarray, start: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """foreground_ml's F for a window, on a grid ML_STEP times coarser,
    its pyramid started from the layer-wide solve's F and B (start: their
    rows for the window, full resolution) at ML_START times coarser still;
    brought back bilinear."""
    h, w = a.shape
    fb = np.concatenate([foreground_ml.planes(_down(x, ML_STEP * ML_START)) for x in start])
    fb = foreground_ml.estimate(_down(i, ML_STEP), _down(a, ML_STEP), ML_OMEGA, fb)
    return _up(cv2.merge(list(fb[:3])), ML_STEP, h, w)


def strip_colours(alpha: np.ndarray, y0: int, y1: int, read: Callable[[int, int, int, int], np.ndarray],
                  means: WideMeans, prior: TintPrior | None, full: tuple[int, int, int],
                  area: SeeThrough | None = None):
    """Decontaminated colours for rows y0..y1 of `alpha` (a strip with
    context rows, starting at full-res row full[2] of a full[0] x full[1]
    layer), tile by tile:
    yields ((y0, y1, x0, x1) in alpha's coordinates, float RGB colours of
    that box). read(b0, b1, c0, c1): the layer's float RGB for a window of
    alpha's coordinates, so only the band is converted."""
    w, h, top = full
    for box in band_tiles(alpha, y0, y1):
        b0, b1, c0, c1 = window(box, alpha.shape)
        core = (slice(box[0] - b0, box[1] - b0), slice(box[2] - c0, box[3] - c0))
        p = None if prior is None else prior.rows(w, h, top + b0, top + b1, c0, c1)
        ar = None if area is None else area.rows(w, h, top + b0, top + b1, c0, c1)
        yield box, estimate_tile(read(b0, b1, c0, c1), alpha[b0:b1, c0:c1], core,
                                 means.rows(w, h, top + b0, top + b1, c0, c1), p, ar)


def layer_colours(matte: np.ndarray, colour: np.ndarray, fmt, fg: np.ndarray, guide: np.ndarray,
                  pool, strip_rows: int, check: Callable[[], None] = lambda: None,
                  progress: Callable[[float], None] = lambda f: None) -> None:
    """The pipeline's decontamination stage, after the matte: fg (h x w x 3,
    holding the pixels' own colours) gets estimated colours on the partial
    band, strip by strip on the pool. matte: as delivered (8/16-bit);
    colour: the layer's colour view as it shows (formats.split); guide: the
    same on the coarse grid, float RGB. The tint prior, the see-through area
    with its layer-wide estimate, and the wide means are taken from the
    delivered matte brought to the guide's grid, so colours
    are estimated for the alpha the user gets (edge controls, layer alpha),
    and only the band's windows are converted to float. strip_rows must be a
    multiple of ALIGN (the windows' grids then line up across strips)."""
    from . import formats

    h, w = matte.shape
    top = float(np.iinfo(matte.dtype).max)
    fmax = float(np.iinfo(fg.dtype).max)
    gh, gw = guide.shape[:2]
    if gh > h or gw > w:   # a layer smaller than the model's grid: no finer grid than its own
        gh, gw = min(gh, h), min(gw, w)
        guide = cv2.resize(guide, (gw, gh), interpolation=cv2.INTER_AREA)
    small = cv2.resize(matte, (gw, gh), interpolation=cv2.INTER_AREA)
    small = np.multiply(small, np.float32(1 / top), dtype=np.float32)
    share = see_through_area(small)   # one measurement for the estimate and the prior
    area = see_through(guide, small, share)
    prior = tint_prior(guide, small, share)
    means = wide_means(guide, small, w)
    starts = range(0, h, strip_rows)
    done = [0]

    def strip(y0: int, y1: int) -> None:
        check()
        a0, a1 = max(0, y0 - DECON_MARGIN), min(h, y1 + DECON_MARGIN)
        a = np.multiply(matte[a0:a1], np.float32(1 / top), dtype=np.float32)

        def read(b0: int, b1: int, c0: int, c1: int) -> np.ndarray:
            return formats.to_float(colour[a0 + b0:a0 + b1, c0:c1], fmt)
        for (r0, r1, c0, c1), est in strip_colours(a, y0 - a0, y1 - a0, read, means, prior, (w, h, a0), area):
            fg[a0 + r0:a0 + r1, c0:c1] = np.clip(est * fmax + 0.5, 0, fmax).astype(fg.dtype)
        done[0] += 1
        progress(done[0] / len(starts))

    for f in [pool.submit(strip, y, min(h, y + strip_rows)) for y in starts]:
        f.result()


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, prior: np.ndarray | None = None,
                        means: tuple[np.ndarray, np.ndarray] | None = None,
                        area: SeeThrough | None = None) -> np.ndarray:
    """Foreground colours without the background mixed in, only where alpha
    is partial (float RGB 0..1 and its matte, same size).

    Blur fusion (Forte & Pitié, ICIP 2021): F and B are local means, F's
    weighted by alpha and B's by 1 - alpha, each corrected by its share of
    the compositing residual I - aF - (1-a)B, over boxes of decreasing
    radius (BF_RADII). Box filters and elementwise steps only: vectorised,
    no compilation step. Real foreground colour at a soft edge varies slowly
    (lens and motion blur spread the object's colour with its coverage; a
    glass has a tint), so F is then averaged locally with weight alpha**8,
    trusting the nearly opaque pixels where I is F, over a reach that grows
    with the width of the soft region; nearly opaque pixels keep most of
    their own estimate. `prior`: TintPrior.rows for the same pixels; its F
    takes over by its strength. `means`: WideMeans.rows, the wide steps
    from the coarse grid (else they are taken here, at full resolution).
    `area`: see_through of the coarse matte, where the multi-level estimate
    takes over from blur fusion. Only tiles that hold partial pixels are
    computed (band_tiles)."""
    if means is None:
        i = np.ascontiguousarray(image, np.float32)
        means = _wide(i, np.ascontiguousarray(alpha, np.float32))
    out = image.copy()
    h, w = alpha.shape
    for box in band_tiles(alpha):
        b0, b1, c0, c1 = window(box, alpha.shape)
        ar = None if area is None else area.rows(w, h, b0, b1, c0, c1)
        core = (slice(box[0] - b0, box[1] - b0), slice(box[2] - c0, box[3] - c0))
        out[box[0]:box[1], box[2]:box[3]] = estimate_tile(
            image[b0:b1, c0:c1], alpha[b0:b1, c0:c1], core,
            (means[0][b0:b1, c0:c1], means[1][b0:b1, c0:c1]),
            None if prior is None else prior[b0:b1, c0:c1], ar)
    return out


def decontaminate(image: np.ndarray, alpha: np.ndarray, grid: int = 1024) -> np.ndarray:
    """The whole-layer path in one call (float RGB 0..1 and its matte), with
    the tint prior taken on a grid of at most `grid` px a side, as the
    pipeline takes it on the model's grid."""
    h, w = alpha.shape
    s = min(1.0, grid / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
             cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)) if s < 1 else (image, alpha)
    share = see_through_area(small[1])
    area = see_through(*small, share)
    prior = tint_prior(*small, share)
    means = wide_means(*small, w).rows(w, h, 0, h)
    return estimate_foreground(image, alpha, None if prior is None else prior.rows(w, h, 0, h), means, area)
