"""Full-resolution edge work: guided upsampling and the designer's edge controls.

Edge-aware upsampling is the Fast Guided Filter (He & Sun 2015,
arXiv:1505.00996): the guided-filter coefficients (He, Sun & Tang, ECCV 2010)
are solved at the model's resolution against a downscaled guide, then
upsampled and applied to the full-resolution image. The matte thus follows the
real image edges at every pixel while the costly solve stays at ~1 MP.
OpenCV's ximgproc guidedFilter (contrib) only filters at one resolution, which
is why the low-res/high-res split is written here. hq's band matting is in
hq.py (re-exported here), edge colours
(decontamination) are in decontaminate.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .options import EdgeOptions  # noqa: F401 (refine.EdgeOptions is its historic name)
from .hq import HQ_MARGIN, HQ_TAU, HQ_TILE, hq_tile, hq_tiles, hq_weight  # noqa: F401 (the pipeline's names)


@dataclass
class GuidedCoefficients:
    """Per-pixel linear model q = a·I + b at low resolution (a: HxWx3)."""

    a: np.ndarray
    b: np.ndarray
    gate: np.ndarray | None = None   # the edge gate folded in (see upsampling_coefficients)
    ab: np.ndarray | None = None     # HxWx4: a and b side by side (a, b are views of it)
    evidence: np.ndarray | None = None   # 0..1: colour explains the matte here (see _evidence)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


# Coefficients are solved on a grid of at most GRID pixels per side with
# window radius RADIUS: measured on bench/quality's known-alpha cases (hair,
# fur, glass, solid; 2K-6000x4000 with the matte at 1024), 448 with radius 2
# and eps 1e-5 beat 384/512/768/1024 grids and eps 1e-4 (bench/quality/RESULTS.md).
GRID = 448
RADIUS = 2
EPS = 1e-5
# Edge-width gate (in coarse-matte pixels): edges the coarse matte resolves
# (wider than GATE_HI) are upsampled bilinearly, sub-resolution ones
# (narrower than GATE_LO) get the guided filter. See edge_gate().
GATE_LO, GATE_HI = 2.6, 4.0


def guided_coefficients(guide: np.ndarray, p: np.ndarray, radius: int = RADIUS,
                        eps: float = EPS, grid: int = GRID, pool=None, bands: int = 1) -> GuidedCoefficients:
    """Colour guided filter coefficients, with the 3x3 solve done in closed form.
    With a thread pool the solve runs in `bands` row bands: each band
    reads 2·radius + DILATE rows of context (two box filters and the evidence's
    dilation deep), so the result is the
    same as in one piece, and numpy's elementwise work is spread over the cores."""
    h, w = p.shape
    if max(h, w) > grid:
        size = (min(w, grid), min(h, grid))
        guide = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
        p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
    h = p.shape[0]
    n = bands if pool is not None else 1
    if n < 2 or h < 64:
        return _solve(guide, p, radius, eps)
    m, cuts = 2 * radius + DILATE, [h * i // n for i in range(n + 1)]

    def band(y0: int, y1: int) -> GuidedCoefficients:
        b0, b1 = max(0, y0 - m), min(h, y1 + m)
        c = _solve(guide[b0:b1], p[b0:b1], radius, eps)
        s = slice(y0 - b0, y1 - b0)
        return GuidedCoefficients(c.a[s], c.b[s], evidence=c.evidence[s])
    parts = [f.result() for f in [pool.submit(band, cuts[i], cuts[i + 1]) for i in range(n)]]
    return GuidedCoefficients(np.concatenate([c.a for c in parts]), np.concatenate([c.b for c in parts]),
                              evidence=np.concatenate([c.evidence for c in parts]))


def _solve(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> GuidedCoefficients:
    # float64: variances of a smooth guide are ~eps, and float32 box sums
    # lose them to cancellation (unstable a: 8- vs 16-bit input disagreed).
    I = guide.astype(np.float64)
    p = p.astype(np.float64)
    mean_I = _box(I, radius)
    mean_p = _box(p, radius)
    cov_Ip = _box(I * p[..., None], radius) - mean_I * mean_p[..., None]
    # Symmetric covariance of the guide, regularised by eps.
    idx = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    v = {}
    for i, j in idx:
        v[i, j] = _box(I[..., i] * I[..., j], radius) - mean_I[..., i] * mean_I[..., j]
        if i == j:
            v[i, j] += eps
    a00, a01, a02, a11, a12, a22 = (v[k] for k in idx)
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    inv_det = 1.0 / det
    cx, cy, cz = cov_Ip[..., 0], cov_Ip[..., 1], cov_Ip[..., 2]
    a = np.stack([(c00 * cx + c01 * cy + c02 * cz) * inv_det,
                  (c01 * cx + c11 * cy + c12 * cz) * inv_det,
                  (c02 * cx + c12 * cy + c22 * cz) * inv_det], axis=-1)
    b = mean_p - (a[..., 0] * mean_I[..., 0] + a[..., 1] * mean_I[..., 1] + a[..., 2] * mean_I[..., 2])
    explained = a[..., 0] * cx + a[..., 1] * cy + a[..., 2] * cz
    var_p = _box(p * p, radius) - mean_p * mean_p
    return GuidedCoefficients(_box(a, radius).astype(np.float32), _box(b, radius).astype(np.float32),
                              evidence=_box(_evidence(explained, var_p, mean_p), radius).astype(np.float32))


# Evidence test (issue 21): the guided filter's own local fit says whether
# colour explains the coarse matte. Per window, R² = a·cov(I,p) / var(p)
# (the part of the matte's variance the linear colour model explains);
# 3 colour regressors on a 5x5 window explain ~0.12 of pure noise by chance.
# The explained variance must also stand above the coarse matte's noise
# floor (8-bit steps and the model's own grain, NOISE): on a flat partial
# plateau (a veil, a shadow, tinted glass) colour structure is texture, not
# alpha. An edge from clear to opaque (local span 2·σ(p) >= SPAN1) is
# trusted whatever its R² (colour contrast there is the whole F-B), and that
# trust reaches DILATE grid pixels further (the toes of the edge); so does
# the noise test. Near-opaque windows keep the filter (sub-pixel holes the
# coarse matte cannot show). Measured on bench/quality (RESULTS.md): R² 0.3-0.7,
# span 0.3-0.45, noise 1/255, near-opaque 0.02.
FIT_R0, FIT_R1 = 0.3, 0.7
SPAN0, SPAN1 = 0.3, 0.45
NOISE = 1.0 / 255
DILATE = 2
OPAQUE = 0.02


def _evidence(explained: np.ndarray, var_p: np.ndarray, mean_p: np.ndarray) -> np.ndarray:
    """0..1 per window: image structure is evidence for alpha here (1) or
    only texture over a matte the coarse grid already draws (0)."""
    fit = np.clip((explained / np.maximum(var_p, 1e-12) - FIT_R0) / (FIT_R1 - FIT_R0), 0, 1)
    span = np.clip((2 * np.sqrt(np.maximum(var_p, 0)) - SPAN0) / (SPAN1 - SPAN0), 0, 1)
    signal = explained / (explained + NOISE * NOISE)
    k = np.ones((2 * DILATE + 1, 2 * DILATE + 1), np.uint8)
    span = cv2.dilate(span.astype(np.float32), k)
    signal = cv2.dilate(signal.astype(np.float32), k)
    t = np.maximum(fit, span) * signal
    opaque = np.clip((OPAQUE - (1 - mean_p)) / (OPAQUE / 2), 0, 1)
    return (t + (1 - t) * opaque).astype(np.float32)


def edge_gate(coarse: np.ndarray) -> np.ndarray:
    """0..1 per coarse pixel: 1 where the matte's edge is narrower than the
    coarse grid can resolve (hair, fur, hard edges), 0 where the coarse matte
    already draws a wide, smooth transition (defocus, motion blur, the inside
    of glass). There the guided filter can only copy the image's texture into
    the matte; bilinear is what is left to do.

    Edge width ~ sum|grad p| / sum|laplacian p| over a window: for a step
    blurred by a Gaussian of sigma s the ratio is ~1.25 s, so it measures
    how many coarse pixels an edge spans. The gate is eroded so the toes of
    a smooth ramp (where the ratio dips) stay bilinear too."""
    # OpenCV calls writing in place where they can: at 1024² each fresh
    # array is 4 MB of pages to fault in.
    ps = cv2.GaussianBlur(coarse, (0, 0), 0.8)
    gx = cv2.Sobel(ps, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(ps, cv2.CV_32F, 0, 1, ksize=3)
    grad = _box(cv2.magnitude(gx, gy, gx), 5)
    lap = cv2.Laplacian(ps, cv2.CV_32F, dst=gy, ksize=1)
    lap = _box(np.abs(lap, out=lap), 5)
    lap += 1e-4
    g = cv2.divide(grad, lap, dst=grad, scale=0.125)    # edge width, then the ramp:
    g *= np.float32(-1.0 / (GATE_HI - GATE_LO))
    g += np.float32(GATE_HI / (GATE_HI - GATE_LO))
    np.clip(g, 0, 1, out=g)
    return _box(cv2.erode(g, np.ones((7, 7), np.uint8), borderType=cv2.BORDER_REFLECT), 3)


# Flat coarse matte (issue 21): where the coarse matte changes by less than
# FLAT_LO (fully) to FLAT_HI (not at all) over 3x3 coarse pixels, it already
# draws what is there: the inside of a plateau, the background, the inside
# of the subject, the toes of an edge. The filter's windows (5x5 on the
# <=448 grid: ~11 coarse pixels at 1024) reach into such places from a
# nearby edge and wrote the image's texture there; on a 20% plateau that
# cost more than its outline gained. A hole or strand the coarse matte
# shows by more than a few levels is not flat. The evidence test (_evidence)
# is needed only within the filter's reach of a flat *partial* plateau
# (veil, shadow, tinted glass: texture behind alpha); elsewhere (hair, fur,
# solid outlines) it cost up to 4% of the gain and is not applied.
# Measured on bench/quality (RESULTS.md, SEE_THROUGH.md): 1.5-4 levels, smoothed over 5x5.
FLAT_LO, FLAT_HI = 1.5 / 255, 4.0 / 255


def coarse_gates(coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per coarse pixel, 0..1: the gate from the coarse matte alone (edge
    width times flatness: 0 where the matte is flat, nothing for the image
    to add), and how near a flat partial plateau it is (1: within the
    filter's reach, where the evidence test applies)."""
    k = np.ones((3, 3), np.uint8)
    rng = cv2.dilate(coarse, k)
    rng -= cv2.erode(coarse, k)                          # local range
    plateau = ((rng < FLAT_HI) & (coarse > OPAQUE) & (coarse < 1 - OPAQUE)).astype(np.uint8)
    r = round(max(1.0, max(coarse.shape) / GRID) * (2 * RADIUS + DILATE))   # coarse px
    plateau = cv2.dilate(plateau, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    flat = np.clip((rng - np.float32(FLAT_LO)) * np.float32(1.0 / (FLAT_HI - FLAT_LO)), 0, 1, out=rng)
    gate = cv2.multiply(edge_gate(coarse), _box(flat, 2))
    return gate, _box(plateau.astype(np.float32), 2)


def upsampling_coefficients(guide_low: np.ndarray, coarse: np.ndarray,
                            gate: np.ndarray | None = None, pool=None, bands: int = 1) -> GuidedCoefficients:
    """Guided-filter coefficients on the coarse matte's grid with the gate
    folded in (a·g, b·g + p·(1-g)), so applying them costs the same and
    gives plain bilinear wherever the gate is 0. The gate is coarse_gates'
    (edge width, flatness) times, near flat partial plateaus, the fit's
    evidence (_evidence): all must say the image knows more than the coarse
    matte. With a thread pool, the gates
    are computed beside the solve (both are mostly OpenCV, which drops the GIL)."""
    pending = pool.submit(coarse_gates, coarse) if pool is not None else None
    coef = guided_coefficients(guide_low, coarse, pool=pool, bands=bands)
    # One 4-channel array (a_r, a_g, a_b, b), contiguous all the way: OpenCV
    # resizes, multiplies and later warps 4 channels in one SIMD pass (a
    # 3-channel warp plus a 1-channel one, or numpy writes into a strided
    # channel slice, each cost several times more).
    ab = cv2.merge([coef.a[..., 0], coef.a[..., 1], coef.a[..., 2], coef.b])
    if ab.shape[:2] != coarse.shape:
        ab = cv2.resize(ab, (coarse.shape[1], coarse.shape[0]), interpolation=cv2.INTER_LINEAR)
    own, near = pending.result() if pending else coarse_gates(coarse)
    g = own if gate is None else gate.copy()   # the caller's gate is not written
    ev = coef.evidence
    if ev.shape != coarse.shape:
        ev = cv2.resize(ev, (coarse.shape[1], coarse.shape[0]), interpolation=cv2.INTER_LINEAR)
    ev -= 1                     # evidence only near plateaus: 1 - near·(1 - ev)
    ev *= near
    ev += 1
    cv2.multiply(g, ev, dst=g)
    # In place, one scratch array: each fresh 4-channel array is 16 MB at 1024²
    # whose pages the kernel must fault in, which costs as much as the arithmetic.
    scratch = cv2.merge([g, g, g, g])
    cv2.multiply(ab, scratch, dst=ab)
    zero = np.zeros_like(coarse)
    cv2.merge([zero, zero, zero, coarse - coarse * g], dst=scratch)
    cv2.add(ab, scratch, dst=ab)
    return GuidedCoefficients(ab[..., :3], ab[..., 3], g, ab)


def resize_rows(low: np.ndarray, full_w: int, full_h: int, y0: int, y1: int,
                x0: int = 0, x1: int | None = None) -> np.ndarray:
    """Bilinear upsampling of `low` to full_w x full_h, but only rows y0..y1
    (and columns x0..x1).

    Same pixel-centre convention as cv2.resize, so strips join seamlessly.
    At scale 1 (layer as small as the model's grid) it is a read-only view.
    """
    x1 = full_w if x1 is None else x1
    if low.shape[:2] == (full_h, full_w):
        return low[y0:y1, x0:x1]
    sx = low.shape[1] / full_w
    sy = low.shape[0] / full_h
    m = np.array([[sx, 0, (x0 + 0.5) * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]], np.float64)
    return cv2.warpAffine(low, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def apply_guided(coef: GuidedCoefficients, guide_rows: np.ndarray, full_w: int, full_h: int,
                 y0: int, y1: int) -> np.ndarray:
    ab = resize_rows(coef.ab, full_w, full_h, y0, y1)
    q = ab[..., 0] * guide_rows[..., 0]
    q += ab[..., 1] * guide_rows[..., 1]
    q += ab[..., 2] * guide_rows[..., 2]
    q += ab[..., 3]
    return np.clip(q, 0.0, 1.0, out=q)


def with_unit(rows: np.ndarray, top: int) -> np.ndarray:
    """Integer RGB(A) rows as 4 channels, the 4th set to `top` (the sample
    maximum), so a·I + b is one 4-channel product and a channel sum."""
    if rows.shape[2] == 4:
        return cv2.bitwise_or(rows, (0, 0, 0, top))
    return cv2.cvtColor(rows, cv2.COLOR_RGB2RGBA)   # alpha = the depth's maximum


def apply_guided_int(ab: np.ndarray, rows4: np.ndarray, top: int, full_w: int, full_h: int,
                     y0: int, y1: int, x0: int = 0, x1: int | None = None,
                     out: np.ndarray | None = None) -> np.ndarray:
    """apply_guided on the layer's own integer samples (rows4 from with_unit,
    channels in ab's order; columns x0..x1): OpenCV scales and multiplies in
    one SIMD pass, without a float copy of the image (which cost as much as
    the rest)."""
    q4 = resize_rows(ab, full_w, full_h, y0, y1, x0, x1)
    own = ab.shape[:2] != (full_h, full_w)   # a fresh warp; at scale 1 a view of ab
    q4 = cv2.multiply(q4, rows4, dst=q4 if own else None, scale=1.0 / top, dtype=cv2.CV_32F)
    # The channel sum as three strided numpy adds: half the time of a BLAS
    # dot, cv2.transform or cv2.reduce with two strips running at once.
    q = np.add(q4[..., 0], q4[..., 1], out=out)
    q += q4[..., 2]
    q += q4[..., 3]
    return np.clip(q, 0.0, 1.0, out=q)


# Where a·I + b rounds to an empty (0) or full output level for any colour I
# in 0..1 (the background and the inside of the subject: most of a layer),
# the full-resolution product is skipped and the level written. The slack
# covers float32 rounding. Partial levels are left alone: a span is seldom
# one of them throughout.
LEVEL_SLACK = 0.02
SKIP_COLS = 128   # columns per skip decision: ~45% of a 6000x4000 photo's spans are sure
_HALF_A_PLUS_B = np.array([[0.5, 0.5, 0.5, 1.0]], np.float32)
_HALF_A = np.array([[0.5, 0.5, 0.5, 0.0]], np.float32)


def sure_levels(ab: np.ndarray, out_max: float) -> np.ndarray:
    """Per coarse pixel (int8): 0 or 1 where every full-res pixel
    interpolated from it is empty or full whatever the image, -1 where it
    depends on the image. Bilinear interpolation mixes neighbours convexly,
    so a full-res pixel whose neighbours agree on a sure level has it."""
    centre = cv2.transform(ab, _HALF_A_PLUS_B)        # b + Σa/2
    reach = cv2.transform(np.abs(ab), _HALF_A)        # Σ|a|/2: a·I spans centre ± reach
    t = np.float32((0.5 - LEVEL_SLACK) / out_max)
    empty = cv2.add(centre, reach) < t                # the highest a·I + b still rounds to 0
    full = cv2.subtract(centre, reach) > 1 - t        # the lowest still rounds to the top
    return empty.view(np.int8) - 1 + 2 * full.view(np.int8)


def _low_span(i0: int, i1: int, full: int, low: int) -> tuple[int, int]:
    """Coarse indices (inclusive, one of margin for OpenCV's fixed-point
    coordinates) that full-res indices i0..i1-1 interpolate from."""
    s = low / full
    return (max(0, int(np.floor((i0 + 0.5) * s - 0.5)) - 1),
            min(low - 1, int(np.floor((i1 - 0.5) * s - 0.5)) + 2))


def sure_spans(levels: np.ndarray, full_w: int, full_h: int, y0: int, y1: int,
               cols: int = SKIP_COLS) -> list[tuple[int, int, int]]:
    """Rows y0..y1 cut into column spans (x0, x1, level): level 0 or 1 where
    the whole span is empty or full, -1 where it must be computed (runs of
    equal spans merged, so the computing calls stay few)."""
    lh, lw = levels.shape
    r0, r1 = _low_span(y0, y1, full_h, lh)
    rows = levels[r0:r1 + 1]
    lo, hi = rows.min(0), rows.max(0)
    spans: list[tuple[int, int, int]] = []
    for x0 in range(0, full_w, cols):
        x1 = min(full_w, x0 + cols)
        c0, c1 = _low_span(x0, x1, full_w, lw)
        mn, mx = int(lo[c0:c1 + 1].min()), int(hi[c0:c1 + 1].max())
        level = mn if mn == mx and mn >= 0 else -1
        if spans and spans[-1][2] == level:
            spans[-1] = (spans[-1][0], x1, level)
        else:
            spans.append((x0, x1, level))
    return spans


def edge_controls(alpha: np.ndarray, opts: EdgeOptions) -> np.ndarray:
    """Designer-facing edge controls, in the order Photoshop's Select and Mask
    applies them: smooth, feather, contrast, shift."""
    out = alpha
    if opts.smooth > 0:
        r = max(1, int(round(opts.smooth * 8)))
        out = cv2.GaussianBlur(out, (0, 0), r / 2)
        out = np.clip((out - 0.5) * (1 + opts.smooth) + 0.5, 0, 1)
    if opts.feather_px > 0:
        out = cv2.GaussianBlur(out, (0, 0), opts.feather_px / 2)
    if opts.contrast:
        c = float(np.clip(opts.contrast, -1, 0.99))
        gain = 1 / (1 - c) if c >= 0 else 1 + c
        out = np.clip((out - 0.5) * gain + 0.5, 0, 1)
    if opts.shift_px:
        r = int(round(abs(opts.shift_px)))
        if r:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            out = cv2.dilate(out, k) if opts.shift_px > 0 else cv2.erode(out, k)
    return out
