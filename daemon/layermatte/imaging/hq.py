"""hq quality: alpha re-estimated on the uncertain band after guided
upsampling (refine.py), tile by tile. Its own module so refine.py stays
about the filter and its gates; refine re-exports these names."""
from __future__ import annotations

import cv2
import numpy as np


# -- hq mode: matting on the uncertain band ----------------------------------
# After guided upsampling, alpha is re-estimated on the band from the colour
# model I = aF + (1-a)B (Porter & Duff 1984): F and B are estimated from the
# upsampled matte by blur fusion (Forte & Pitié 2021, decontaminate.py),
# then alpha is the projection of I - B on F - B, as in sampling-based
# matting (Chuang et al., CVPR 2001; Gastal & Oliveira 2010). Where F and B
# are close in colour the projection is unreliable, so it is weighted by
# |F-B|^2 / (|F-B|^2 + HQ_TAU). Tiled so memory stays bounded and both cores
# work (OpenCV's filters release the GIL; nothing is JIT-compiled, so the
# first request costs what any does). Closed-form matting (Levin et al. 2008)
# on the same band was measured too: ~7 s/MP for a smaller gain.
HQ_TILE = 512
HQ_MARGIN = 24
HQ_TAU = 0.1   # blur fusion separates F and B more than a global solve: trust it less


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


def hq_tile(image: np.ndarray, alpha: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Alpha re-estimated by colour-line projection on one tile (with context)."""
    from .decontaminate import foreground_background

    F, B = foreground_background(image, alpha)
    d = F - B
    n2 = np.einsum("ijk,ijk->ij", d, d)
    proj = np.einsum("ijk,ijk->ij", image - B, d) / (n2 + 1e-4)
    np.clip(proj, 0, 1, out=proj)
    c = weight * (n2 / (n2 + HQ_TAU))
    return alpha + c * (proj - alpha)
