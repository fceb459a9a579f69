"""The tint prior: a smooth foreground colour for wide see-through areas.

Inside a glass, a veil or smoke, I = aF + (1-a)B alone cannot say how much
of a slow colour change is the object's tint and how much is the
background behind it, so the answer depends on a prior. tint_prior measures
that prior on the layer itself: how much the colour varies between pixels a
fixed distance apart where F is seen unmixed (opaque) and where B is
(clear). F and B are solved jointly on a coarse grid with smoothness
weights in that ratio; decontaminate.estimate_tile lets F from that solve
replace the edge estimate in the middle of the area: fully once the
object's colour varies 4x less than the background's, not at all when it
varies as much or more.

Where those areas are (see_through_area) and a multi-level F and B of the
whole layer on a coarse grid (see_through, SeeThrough) are measured here
too: decontamination's see-through tiles start their own estimate from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import foreground_ml
from .refine import resize_rows

TINT_GRID = 160       # long side of the joint solve's grid
TINT_WIDE = 3.0       # grid px from the nearest sure pixel where an area counts as wide
TINT_ROUGH = (0.015, 0.03)  # alpha's departure from its own blur: see-through below, strands above
TINT_MIN_PIXELS = 64  # wide soft pixels (on the given grid) worth a solve
TINT_RATIO = (1.0, 4.0)    # variance ratio B/F: no prior at or below, full weight at or above
TINT_RATIO_CAP = 1000.0    # beyond this the solve is already as smooth as it gets
TINT_LAMBDA = 0.01    # smoothness weight of B against the data term (F gets ratio times it)
TINT_MIN_PAIRS = 32   # pixel pairs each variance needs
TINT_RTOL, TINT_MAXITER = 1e-6, 3000   # the joint solve's conjugate gradients
TINT_LEVELS = 1       # half-size grids solved first, each starting the next one's iterations
ML_GRID = 256     # long side of the layer-wide multi-level solve (SeeThrough)
ML_OMEGA = 0.1    # its smoothness per unit of alpha change (decontaminate.py says why)
_LAPLACE = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float64)
_CROSS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float64)


@dataclass(frozen=True)
class TintPrior:
    """F from the joint solve and how far to trust it (channel 3, 0..1), on
    the grid tint_prior was given; rows() brings it to full resolution."""

    field: np.ndarray    # h x w x 4 float32: F (3 channels) and strength

    def rows(self, full_w: int, full_h: int, y0: int, y1: int,
             x0: int = 0, x1: int | None = None) -> np.ndarray:
        return resize_rows(self.field, full_w, full_h, y0, y1, x0, x1)


def _variance_at(x: np.ndarray, mask: np.ndarray, d: int) -> tuple[float, int]:
    """Mean squared colour difference of mask pixels d apart (4 directions);
    x: h x w x 3 float32, mask: h x w uint8 0/1."""
    h, w = mask.shape
    total, n = 0.0, 0
    for dy, dx in ((0, d), (d, 0), (d, d), (d, -d)):
        if dy >= h or abs(dx) >= w:
            continue
        xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        a, b = (slice(0, h - dy), xa), (slice(dy, h), xb)
        both = cv2.bitwise_and(mask[a], mask[b])    # uint8 0/1: cv2.mean's mask
        k = cv2.countNonZero(both)
        if k:   # OpenCV on the shifted views: boolean indexing copied ~1 MP of colours per direction
            diff = cv2.subtract(x[a], x[b])
            total += sum(cv2.mean(cv2.multiply(diff, diff), mask=both)[:3]) * k
            n += k
    return (total / n if n else 0.0), n


def _variance_ratio(image: np.ndarray, alpha: np.ndarray) -> float | None:
    """How much more the background's colour varies than the foreground's,
    at an eighth of the area's size; None when either is barely seen."""
    clear = alpha <= 0.05
    clear &= cv2.distanceTransform(clear.astype(np.uint8), cv2.DIST_L2, 3) > 1.5
    d = max(2, round(max(alpha.shape) / 8))
    vf, nf = _variance_at(image, (alpha >= 0.95).view(np.uint8), d)
    vb, nb = _variance_at(image, clear.view(np.uint8), d)
    if nf < TINT_MIN_PAIRS or nb < TINT_MIN_PAIRS:
        return None
    return min(TINT_RATIO_CAP, vb / max(vf, 1e-9))


def _cg(image: np.ndarray, alpha: np.ndarray, lam_f: float, lam_b: float,
        x: np.ndarray | None) -> np.ndarray:
    """Conjugate gradients for the joint solve's normal equations on one
    grid, all three channels at once (each stops at its own tolerance), with
    a Jacobi preconditioner. x: (2, 3, h, w), F then B, or None for F = B = I.
    The Laplacian is a 3x3 stencil (cv2.filter2D; a replicated border is the
    grid graph's free boundary), so no sparse matrix is built."""
    a = alpha.astype(np.float64)
    b = 1 - a
    aa, ab, bb = a * a, a * b, b * b
    lam = np.array([lam_f, lam_b]).reshape(2, 1, 1, 1)

    def mul(v: np.ndarray) -> np.ndarray:
        out = np.empty(v.shape)
        for k in range(2):
            for c in range(3):
                cv2.filter2D(v[k, c], -1, _LAPLACE, dst=out[k, c], borderType=cv2.BORDER_REPLICATE)
        out *= lam
        out[0] += aa * v[0] + ab * v[1]
        out[1] += ab * v[0] + bb * v[1]
        return out

    degree = cv2.filter2D(np.ones_like(a), -1, _CROSS, borderType=cv2.BORDER_CONSTANT)
    inv_diag = 1.0 / np.stack([aa + lam_f * degree, bb + lam_b * degree])[:, None]
    i = np.ascontiguousarray(np.moveaxis(image.astype(np.float64), -1, 0))
    rhs = np.stack([a * i, b * i])
    x = np.stack([i, i]) if x is None else np.array(x, np.float64, order="C")

    def dot(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.einsum("kcij,kcij->c", p, q)

    r = rhs - mul(x)
    z = inv_diag * r
    p = z.copy()
    rz = dot(r, z)
    stop = TINT_RTOL * np.sqrt(dot(rhs, rhs))
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(TINT_MAXITER):
            active = np.sqrt(dot(r, r)) > stop
            if not active.any():
                break
            ap = mul(p)
            step = np.where(active, rz / dot(p, ap), 0.0)[:, None, None]
            x += step * p
            r -= step * ap
            z = inv_diag * r
            rz_next = dot(r, z)
            p = z + np.where(active, rz_next / rz, 0.0)[:, None, None] * p
            rz = rz_next
    return x


def _joint_solve(image: np.ndarray, alpha: np.ndarray, ratio: float) -> np.ndarray:
    """argmin over F, B of |aF + (1-a)B - I|² + λ(ratio·|∇F|² + |∇B|²), per channel.
    Solved on a half-size grid first (λ/4: a gradient's energy is the same
    at any grid size, the data term's a quarter): conjugate gradients are
    slowest on the smooth part of the error, which the coarse solve already
    removes (258 iterations from F = B = I, 148 from the coarse solution on
    the astronaut; a direct factorisation needed ~390 MB at 256²)."""
    h, w = alpha.shape
    x = None
    for level in range(TINT_LEVELS, -1, -1):
        s = 0.5 ** level
        size = (max(2, round(w * s)), max(2, round(h * s))) if level else (w, h)
        im = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if level else image
        al = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA) if level else alpha
        if x is not None:    # the coarser solution, bilinear onto this grid
            x = np.stack([np.moveaxis(cv2.resize(np.moveaxis(x[k], 0, -1), size,
                                                 interpolation=cv2.INTER_LINEAR), -1, 0) for k in range(2)])
        x = _cg(im, al, TINT_LAMBDA * ratio * s * s, TINT_LAMBDA * s * s, x)
    return np.clip(np.moveaxis(x[0], 0, -1), 0, 1).astype(np.float32)


def see_through_area(alpha: np.ndarray) -> np.ndarray:
    """0..1 on alpha's grid (a coarse matte): how much a pixel lies inside a
    wide see-through area. 0 on the soft region's outline and over strands,
    1 from TINT_WIDE grid px into smooth partial alpha."""
    a = np.asarray(alpha, np.float32)
    soft = ((a > 0.02) & (a < 0.98)).astype(np.uint8)
    inside = cv2.distanceTransform(soft, cv2.DIST_L2, 3)
    # A see-through area's alpha is smooth; over hair or fur it is a mesh of
    # strands, whose colours the edge estimate keeps far better.
    rough = cv2.boxFilter(np.abs(a - cv2.GaussianBlur(a, (0, 0), 1.5)), -1, (5, 5))
    lo, hi = TINT_ROUGH
    return np.clip(inside / TINT_WIDE, 0, 1) * np.clip((hi - rough) / (hi - lo), 0, 1)


def tint_prior(image: np.ndarray, alpha: np.ndarray, area: np.ndarray | None = None) -> TintPrior | None:
    """A smooth foreground colour for the layer's wide see-through areas,
    from a coarse image and matte (the model's grid); None where there is no
    such area or its colour is not measurably steadier than the background's.
    area: see_through_area(alpha) when the caller has it."""
    a = np.asarray(alpha, np.float32)
    area = see_through_area(a) if area is None else area
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


@dataclass(frozen=True)
class SeeThrough:
    """see_through_area on the coarse grid, and F and B of a
    multi-level solve of the whole layer on a grid of at most ML_GRID px
    (where the tiles' own solves start: a see-through body can be wider
    than a tile's reach); rows() brings each to full resolution. Made only
    where some pixel has a share (see_through)."""

    area: np.ndarray    # h x w float32 0..1
    fg: np.ndarray      # H x W x 3 float32 (the ML_GRID grid)
    bg: np.ndarray

    def rows(self, full_w: int, full_h: int, y0: int, y1: int, x0: int = 0,
             x1: int | None = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None:
        """(area, (F, B)) for the rows, None where the area has no share."""
        share = resize_rows(self.area, full_w, full_h, y0, y1, x0, x1)
        if share.max() <= 0:
            return None
        return share, (resize_rows(self.fg, full_w, full_h, y0, y1, x0, x1),
                       resize_rows(self.bg, full_w, full_h, y0, y1, x0, x1))


def see_through(image: np.ndarray, alpha: np.ndarray, area: np.ndarray | None = None) -> SeeThrough | None:
    """The see-through area of a coarse matte (image: the layer on the same
    grid, float RGB), None when it has none. area: see_through_area(alpha)
    when the caller has it."""
    area = see_through_area(alpha) if area is None else area
    if area.max() <= 0:
        return None
    h, w = alpha.shape
    s = min(1.0, ML_GRID / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    i = np.ascontiguousarray(image, np.float32)
    a = np.ascontiguousarray(alpha, np.float32)
    if s < 1:
        i = cv2.resize(i, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 3)
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0])
    fb = foreground_ml.estimate(i, a, ML_OMEGA)
    return SeeThrough(area, cv2.merge(list(fb[:3])), cv2.merge(list(fb[3:])))
