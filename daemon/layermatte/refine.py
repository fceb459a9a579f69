"""Full-resolution edge work: guided upsampling, edge controls, decontamination.

Edge-aware upsampling is the Fast Guided Filter (He & Sun 2015,
arXiv:1505.00996): the guided-filter coefficients (He, Sun & Tang, ECCV 2010)
are solved at the model's resolution against a downscaled guide, then
upsampled and applied to the full-resolution image. The matte thus follows the
real image edges at every pixel while the costly solve stays at ~1 MP.
OpenCV's ximgproc guidedFilter (contrib) only filters at one resolution, which
is why the low-res/high-res split is written here.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class EdgeOptions:
    feather_px: float = 0.0
    shift_px: float = 0.0
    smooth: float = 0.0
    contrast: float = 0.0

    def halo(self) -> int:
        """Rows of context a strip needs so strip seams are invisible."""
        return int(np.ceil(3 * self.feather_px + abs(self.shift_px) + 12 * self.smooth)) + 2


@dataclass
class GuidedCoefficients:
    """Per-pixel linear model q = a·I + b at low resolution (a: HxWx3)."""

    a: np.ndarray
    b: np.ndarray


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


# Coefficients are solved on a grid of at most this many pixels per side: on a
# synthetic known-alpha test (tests/test_server.py) 512² with radius 2 was both
# 4x cheaper and closer to the truth than 1024² with radius 4.
GRID = 512


def guided_coefficients(guide: np.ndarray, p: np.ndarray, radius: int = 2,
                        eps: float = 1e-4, grid: int = GRID) -> GuidedCoefficients:
    """Colour guided filter coefficients, with the 3x3 solve done in closed form."""
    h, w = p.shape
    if max(h, w) > grid:
        size = (min(w, grid), min(h, grid))
        guide = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
        p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
    I = guide.astype(np.float32)
    p = p.astype(np.float32)
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
    return GuidedCoefficients(_box(a, radius), _box(b, radius))


def resize_rows(low: np.ndarray, full_w: int, full_h: int, y0: int, y1: int) -> np.ndarray:
    """Bilinear upsampling of `low` to full_w x full_h, but only rows y0..y1.

    Same pixel-centre convention as cv2.resize, so strips join seamlessly.
    """
    sx = low.shape[1] / full_w
    sy = low.shape[0] / full_h
    m = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]], np.float64)
    return cv2.warpAffine(low, m, (full_w, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def apply_guided(coef: GuidedCoefficients, guide_rows: np.ndarray, full_w: int, full_h: int,
                 y0: int, y1: int) -> np.ndarray:
    a = resize_rows(coef.a, full_w, full_h, y0, y1)
    b = resize_rows(coef.b, full_w, full_h, y0, y1)
    q = a[..., 0] * guide_rows[..., 0]
    q += a[..., 1] * guide_rows[..., 1]
    q += a[..., 2] * guide_rows[..., 2]
    q += b
    return np.clip(q, 0.0, 1.0, out=q)


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


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours without the background mixed in (pymatting's
    multi-level method, Germer et al. 2020), only where alpha is partial."""
    from pymatting import estimate_foreground_ml

    partial = (alpha > 0.004) & (alpha < 0.996)
    if not partial.any():
        return image
    fg = estimate_foreground_ml(image.astype(np.float64), alpha.astype(np.float64))
    out = image.copy()
    out[partial] = fg[partial].astype(np.float32)
    return out
