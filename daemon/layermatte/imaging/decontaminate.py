"""Decontamination: the foreground's own colours where alpha is partial,
without the old background mixed in (I = aF + (1-a)B, Porter & Duff 1984).

Two estimates, for two kinds of soft region:
- Along edges (strands, outlines, blur ramps): blur fusion (Forte & Pitié,
  ICIP 2021; box filters, no compiled kernels, so no first-use compilation),
  averaged locally toward the nearly opaque pixels (estimate_foreground),
  only on tiles that hold partial alpha.
- Inside wide see-through areas (glass, veils, smoke): I alone cannot say how
  much of a slow colour change is the object's tint and how much is the
  background behind it, so the answer depends on a prior. tint_prior measures
  that prior on the layer itself: how much the colour varies between
  pixels a fixed distance apart where F is seen unmixed (opaque) and where
  B is (clear). F and B are solved jointly on a coarse grid with smoothness
  weights in that ratio, and F from that solve replaces the edge estimate in
  the middle of the area: fully once the object's colour varies 4x less than
  the background's, not at all when it varies as much or more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .refine import resize_rows

DECON_SIGMA = 4.0     # px: reach of the foreground-colour averaging on a thin edge
DECON_WIDE_SIGMA = 12.0  # px: the same where the soft region is wide (blur, glass)
DECON_POWER = 8       # weight alpha**8: nearly opaque pixels speak for the colour
DECON_MARGIN = 32     # px of context each side of a strip or tile
DECON_TILE = 256      # columns per tile: only tiles with partial pixels are computed
BF_RADII = (90, 30, 6)   # blur fusion's box radii, full-res px: all but the last on the coarse grid
HQ_RADII = (6, 2) + (1,) * 8   # hq's last steps: small boxes so B follows the background's texture
PARTIAL = (0.004, 0.996)   # alpha strictly inside these: mixed colours (about 1/255 from either end)

TINT_GRID = 160       # long side of the joint solve's grid
TINT_WIDE = 3.0       # grid px from the nearest sure pixel where an area counts as wide
TINT_ROUGH = (0.015, 0.03)  # alpha's departure from its own blur: see-through below, strands above
TINT_MIN_PIXELS = 64  # wide soft pixels (on the given grid) worth a solve
TINT_RATIO = (1.0, 4.0)    # variance ratio B/F: no prior at or below, full weight at or above
TINT_RATIO_CAP = 1000.0    # beyond this the solve is already as smooth as it gets
TINT_LAMBDA = 0.01    # smoothness weight of B against the data term (F gets ratio times it)
TINT_MIN_PAIRS = 32   # pixel pairs each variance needs
TINT_RTOL, TINT_MAXITER = 1e-6, 3000   # the joint solve's conjugate gradients


@dataclass(frozen=True)
class TintPrior:
    """F from the joint solve and how far to trust it (channel 3, 0..1), on
    the grid tint_prior was given; rows() brings it to full resolution."""

    field: np.ndarray    # h x w x 4 float32: F (3 channels) and strength

    def rows(self, full_w: int, full_h: int, y0: int, y1: int,
             x0: int = 0, x1: int | None = None) -> np.ndarray:
        return resize_rows(self.field, full_w, full_h, y0, y1, x0, x1)


def _variance_at(x: np.ndarray, mask: np.ndarray, d: int) -> tuple[float, int]:
    """Mean squared colour difference of mask pixels d apart (4 directions)."""
    h, w = mask.shape
    total, n = 0.0, 0
    for dy, dx in ((0, d), (d, 0), (d, d), (d, -d)):
        if dy >= h or abs(dx) >= w:
            continue
        xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        a, b = (slice(0, h - dy), xa), (slice(dy, h), xb)
        both = mask[a] & mask[b]
        diff = x[a][both] - x[b][both]
        total += float(np.einsum("ij,ij->", diff, diff))
        n += diff.shape[0]
    return (total / n if n else 0.0), n


def _variance_ratio(image: np.ndarray, alpha: np.ndarray) -> float | None:
    """How much more the background's colour varies than the foreground's,
    at an eighth of the area's size; None when either is barely seen."""
    clear = alpha <= 0.05
    clear &= cv2.distanceTransform(clear.astype(np.uint8), cv2.DIST_L2, 3) > 1.5
    d = max(2, round(max(alpha.shape) / 8))
    vf, nf = _variance_at(image, alpha >= 0.95, d)
    vb, nb = _variance_at(image, clear, d)
    if nf < TINT_MIN_PAIRS or nb < TINT_MIN_PAIRS:
        return None
    return min(TINT_RATIO_CAP, vb / max(vf, 1e-9))


def _joint_solve(image: np.ndarray, alpha: np.ndarray, ratio: float) -> np.ndarray:
    """argmin over F, B of |aF + (1-a)B - I|² + λ(ratio·|∇F|² + |∇B|²), per channel."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg

    h, w = alpha.shape
    n = h * w
    idx = np.arange(n).reshape(h, w)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1].ravel(), idx[1:].ravel())]
    i0 = np.concatenate([p[0] for p in pairs])
    i1 = np.concatenate([p[1] for p in pairs])
    k = np.arange(len(i0))
    grad = sp.csr_matrix((np.r_[np.ones(len(k)), -np.ones(len(k))], (np.r_[k, k], np.r_[i0, i1])),
                         shape=(len(k), n))
    lap = (grad.T @ grad).tocsr()
    a = alpha.ravel().astype(np.float64)
    da, db = sp.diags(a), sp.diags(1 - a)
    system = sp.bmat([[da @ da + TINT_LAMBDA * ratio * lap, da @ db],
                      [db @ da, db @ db + TINT_LAMBDA * lap]]).tocsr()
    # Conjugate gradients (the system is symmetric positive definite), from
    # F = B = I, with a Jacobi preconditioner: a direct solve of a 256² grid
    # needed ~390 MB for its factors, this needs a few vectors.
    inv_diag = sp.diags(1.0 / system.diagonal())
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        i = image[..., c].ravel().astype(np.float64)
        x, _ = cg(system, np.r_[a * i, (1 - a) * i], x0=np.r_[i, i], rtol=TINT_RTOL,
                  maxiter=TINT_MAXITER, M=inv_diag)
        out[..., c] = x[:n].reshape(h, w)
    return np.clip(out, 0, 1, out=out)


def tint_prior(image: np.ndarray, alpha: np.ndarray) -> TintPrior | None:
    """A smooth foreground colour for the layer's wide see-through areas,
    from a coarse image and matte (the model's grid); None where there is no
    such area or its colour is not measurably steadier than the background's."""
    a = np.asarray(alpha, np.float32)
    soft = ((a > 0.02) & (a < 0.98)).astype(np.uint8)
    inside = cv2.distanceTransform(soft, cv2.DIST_L2, 3)
    # A see-through area's alpha is smooth; over hair or fur it is a mesh of
    # strands, whose colours the edge estimate keeps far better.
    rough = cv2.boxFilter(np.abs(a - cv2.GaussianBlur(a, (0, 0), 1.5)), -1, (5, 5))
    lo, hi = TINT_ROUGH
    area = np.clip(inside / TINT_WIDE, 0, 1) * np.clip((hi - rough) / (hi - lo), 0, 1)
    wide = area >= 1
    if wide.sum() < TINT_MIN_PIXELS:
        return None
    h, w = a.shape
    ys, xs = np.nonzero(wide)
    m = max(8, round(0.05 * max(h, w)))       # room to see F and B unmixed around the area
    y0, y1 = max(0, ys.min() - m), min(h, ys.max() + m + 1)
    x0, x1 = max(0, xs.min() - m), min(w, xs.max() + m + 1)
    s = min(1.0, TINT_GRID / max(y1 - y0, x1 - x0))
    size = (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s)))
    crop_i = np.ascontiguousarray(image[y0:y1, x0:x1], np.float32)
    crop_a = np.ascontiguousarray(a[y0:y1, x0:x1])
    ratio = _variance_ratio(crop_i, crop_a)   # on the given grid: a thin rim must not vanish
    if ratio is None:
        return None
    small_i = cv2.resize(crop_i, size, interpolation=cv2.INTER_AREA) if s < 1 else crop_i
    small_a = cv2.resize(crop_a, size, interpolation=cv2.INTER_AREA) if s < 1 else crop_a
    lo, hi = TINT_RATIO
    weight = float(np.clip(np.log(ratio / lo) / np.log(hi / lo), 0, 1))
    if weight == 0:
        return None
    f = _joint_solve(small_i, small_a, ratio)
    if s < 1:
        f = cv2.resize(f, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    field = np.zeros((h, w, 4), np.float32)
    field[y0:y1, x0:x1, :3] = f
    # Strength: 0 on the area's outline and over strands (the edge estimate is
    # better there), full TINT_WIDE px into smooth alpha; nothing outside the solve.
    field[y0:y1, x0:x1, 3] = area[y0:y1, x0:x1] * weight
    return TintPrior(field)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _means(image: np.ndarray, a: np.ndarray, f: np.ndarray, b: np.ndarray,
           r: int) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion mean step: F weighted by alpha, B by 1 - alpha, box radius r."""
    a3 = a[..., None]
    ka = _box(a, r)[..., None]
    fh = _box(f * a3, r) / np.maximum(ka, 1e-5)
    bh = _box(b * (1 - a3), r) / np.maximum(1 - ka, 1e-5)
    return fh, bh


def _fuse(image: np.ndarray, a: np.ndarray, fh: np.ndarray, bh: np.ndarray,
          background: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """F and B from their local means and the compositing residual
    (F = F̂ + a·r, B = B̂ + (1-a)·r, r = I - aF̂ - (1-a)B̂)."""
    a3 = a[..., None]
    res = image - a3 * fh - (1 - a3) * bh
    f = np.clip(fh + a3 * res, 0, 1)
    return f, (np.clip(bh + (1 - a3) * res, 0, 1) if background else None)


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


def _local_mean(x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian normalised convolution: the w-weighted local mean of x."""
    num = cv2.GaussianBlur(x * w[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)[..., None]
    return np.where(den > 1e-4, num / np.maximum(den, 1e-4), x)


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
    """The box DECON_MARGIN px larger each side, clipped to shape: what estimate_tile reads."""
    y0, y1, x0, x1 = box
    m = DECON_MARGIN
    return max(0, y0 - m), min(shape[0], y1 + m), max(0, x0 - m), min(shape[1], x1 + m)


def estimate_tile(image: np.ndarray, alpha: np.ndarray, core: tuple[slice, slice],
                  means: tuple[np.ndarray, np.ndarray], prior: np.ndarray | None = None) -> np.ndarray:
    """Foreground colours of `core` of a window (image float RGB 0..1, alpha,
    the WideMeans and TintPrior rows of the same pixels): partial pixels
    estimated, the others their own colour."""
    i = np.ascontiguousarray(image, np.float32)
    a = np.ascontiguousarray(alpha, np.float32)
    f, b = _fuse(i, a, *means)
    f, _ = _fuse(i, a, *_means(i, a, f, b, BF_RADII[-1]), background=False)
    own = a ** (DECON_POWER // 2)                  # how much a pixel keeps its own estimate
    wgt = own * own                                # alpha**DECON_POWER
    thin, wide = _local_mean(f, wgt, DECON_SIGMA), _local_mean(f, wgt, DECON_WIDE_SIGMA)
    # How much of the neighbourhood is soft: ~0 along a crisp outline, 1 inside a blur.
    t = cv2.GaussianBlur(partial(a).astype(np.float32), (0, 0), DECON_WIDE_SIGMA)
    t = np.clip((t - 0.5) / 0.4, 0, 1)[..., None]
    own = own[..., None]
    f = own * f + (1 - own) * (thin + t * (wide - thin))
    if prior is not None:
        f += prior[..., 3:] * (prior[..., :3] - f)
    return np.where(partial(a[core])[..., None], f[core], i[core])


def strip_colours(alpha: np.ndarray, y0: int, y1: int, read: Callable[[int, int, int, int], np.ndarray],
                  means: WideMeans, prior: TintPrior | None, full: tuple[int, int, int]):
    """Decontaminated colours for rows y0..y1 of `alpha` (a strip with
    context rows, starting at full-res row full[2] of a full[0] x full[1]
    layer), tile by tile: yields ((y0, y1, x0, x1) in alpha's coordinates,
    float RGB colours of that box). read(b0, b1, c0, c1): the layer's float
    RGB for a window of alpha's coordinates, so only the band is converted."""
    w, h, top = full
    for box in band_tiles(alpha, y0, y1):
        b0, b1, c0, c1 = window(box, alpha.shape)
        core = (slice(box[0] - b0, box[1] - b0), slice(box[2] - c0, box[3] - c0))
        p = None if prior is None else prior.rows(w, h, top + b0, top + b1, c0, c1)
        yield box, estimate_tile(read(b0, b1, c0, c1), alpha[b0:b1, c0:c1], core,
                                 means.rows(w, h, top + b0, top + b1, c0, c1), p)


def foreground_background(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F and B by blur fusion at full resolution over a tile (float RGB 0..1,
    its matte): hq's colour model, numpy and OpenCV only, so nothing is
    compiled on a user's first request."""
    i = np.ascontiguousarray(image, np.float32)
    a = np.ascontiguousarray(alpha, np.float32)
    f, b = _fuse(i, a, *_wide(i, a))
    for r in HQ_RADII:
        f, b = _fuse(i, a, *_means(i, a, f, b, r))
    return f, b


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, prior: np.ndarray | None = None,
                        means: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
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
    Only tiles that hold partial pixels are computed (band_tiles)."""
    if means is None:
        i = np.ascontiguousarray(image, np.float32)
        means = _wide(i, np.ascontiguousarray(alpha, np.float32))
    out = image.copy()
    for box in band_tiles(alpha):
        b0, b1, c0, c1 = window(box, alpha.shape)
        core = (slice(box[0] - b0, box[1] - b0), slice(box[2] - c0, box[3] - c0))
        out[box[0]:box[1], box[2]:box[3]] = estimate_tile(
            image[b0:b1, c0:c1], alpha[b0:b1, c0:c1], core,
            (means[0][b0:b1, c0:c1], means[1][b0:b1, c0:c1]),
            None if prior is None else prior[b0:b1, c0:c1])
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
    prior = tint_prior(*small)
    means = wide_means(*small, w).rows(w, h, 0, h)
    return estimate_foreground(image, alpha, None if prior is None else prior.rows(w, h, 0, h), means)
