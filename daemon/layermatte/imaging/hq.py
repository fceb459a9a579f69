"""hq quality: alpha re-estimated on the uncertain band after guided
upsampling (refine.py), tile by tile. Its own module so refine.py stays
about the filter and its gates; refine re-exports these names."""
from __future__ import annotations

import cv2
import numpy as np

from .foreground_ml import planes, estimate


# -- hq mode: matting on the uncertain band ----------------------------------
# After guided upsampling, alpha is re-estimated on the band from the colour
# model I = aF + (1-a)B (Porter & Duff 1984): F and B are estimated from the
# upsampled matte by multi-level estimation (Germer et al., ICPR 2020;
# foreground_ml.py, vectorised), then alpha is the projection t of I - B on
# F - B, as in sampling-based matting (Chuang et al., CVPR 2001; Gastal &
# Oliveira 2010). The projection is blended with the upsampled matte by its
# confidence, inverse-variance style: t's error is about
# (noise + (1-t)^2 var(B)) / |F-B|^2, so the weight is
# |F-B|^2 / (|F-B|^2 + HQ_TAU + HQ_TEXTURE (1-t)^2 var(B)), where var(B) is
# the local variance of the image over the clear side (weights (1-a)^2,
# radius HQ_TEXTURE_R): an interpolated B is only as good as the background
# is smooth (a busy background behind a faint plateau or dense fur). It is
# weighted down again by the residual off the F-B line, |I - B - t(F-B)|^2,
# with HQ_RESIDUAL: where the colour lies off the line through F and B the
# model does not hold there. The constants were tuned on bench/quality's
# hair, fur, solid and see-through cases (hair gains most from a low HQ_TAU,
# a 20% plateau over gravel needs HQ_TEXTURE, fur HQ_RESIDUAL). Tiled so memory stays bounded and both cores work
# (OpenCV's filters and numpy's large array operations release the GIL;
# nothing is JIT-compiled, so the first request costs what any does).
# Closed-form matting (Levin et al. 2008) on the same band was measured
# too: ~7 s/MP for a smaller gain.
HQ_TILE = 512
HQ_MARGIN = 24
HQ_TAU = 0.005        # colour noise, relative to the upsampled matte's own error
HQ_TEXTURE = 6.0
HQ_TEXTURE_R = 4      # px
HQ_RESIDUAL = 1e-3


def hq_weight(coarse: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """Low-res map of where hq re-estimates alpha: the coarse matte's
    uncertain band (trimap unknown), where the edge is sub-resolution."""
    unknown = ((coarse > 0.01) & (coarse < 0.99)).astype(np.uint8)
    unknown = cv2.dilate(unknown, np.ones((3, 3), np.uint8))
    return (gate * unknown).astype(np.float32)


def hq_tiles(weight_low: np.ndarray, w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Full-res tiles (y0, y1, x0, x1) that touch the band."""
    sy, sx = weight_low.shape[0] / h, weight_low.shape[1] / w
    tiles = []
    for y0 in range(0, h, HQ_TILE):
        for x0 in range(0, w, HQ_TILE):
            y1, x1 = min(h, y0 + HQ_TILE), min(w, x0 + HQ_TILE)
            ly0, lx0 = int(y0 * sy), int(x0 * sx)
            ly1, lx1 = int(np.ceil(y1 * sy)) + 1, int(np.ceil(x1 * sx)) + 1
            if weight_low[ly0:ly1, lx0:lx1].max(initial=0) > 0:
                tiles.append((y0, y1, x0, x1))
    return tiles


def _background_texture(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Local variance of the image over the clear side (summed over channels)."""
    k = (2 * HQ_TEXTURE_R + 1, 2 * HQ_TEXTURE_R + 1)
    wgt = np.square(1 - alpha)
    norm = cv2.boxFilter(wgt, -1, k, borderType=cv2.BORDER_REFLECT)
    norm += 1e-6
    var = np.zeros_like(alpha)
    for c in range(image.shape[2]):
        x = np.ascontiguousarray(image[..., c])
        wx = wgt * x
        m = cv2.boxFilter(wx, -1, k, borderType=cv2.BORDER_REFLECT)
        m /= norm
        m2 = cv2.boxFilter(wx * x, -1, k, borderType=cv2.BORDER_REFLECT)
        m2 /= norm
        var += np.maximum(m2 - m * m, 0)
    return var


def hq_tile(image: np.ndarray, alpha: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Alpha re-estimated by colour-line projection on one tile (with context)."""
    alpha = np.ascontiguousarray(alpha, np.float32)
    fb = estimate(image, alpha)
    d = fb[:3] - fb[3:]
    ib = planes(np.asarray(image, np.float32)) - fb[3:]
    n2 = (d * d).sum(0)
    t = (ib * d).sum(0) / (n2 + 1e-4)
    res = np.maximum((ib * ib).sum(0) - t * t * n2, 0)
    np.clip(t, 0, 1, out=t)
    tau = np.square(1 - t) * _background_texture(image, alpha)
    tau *= HQ_TEXTURE
    tau += HQ_TAU
    c = weight * (n2 / (n2 + tau)) * (HQ_RESIDUAL / (HQ_RESIDUAL + res))
    return alpha + c * (t - alpha)
