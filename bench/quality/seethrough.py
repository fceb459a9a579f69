"""See-through ground-truth kinds: where image structure is *not* evidence
for alpha (issue 21).

Each is a layered composite with known alpha and foreground colour, over a
real photo background chosen per case (several per kind):
  plateauNN  a shape of uniform partial alpha NN% (20, 50, 80), antialiased
             outline, coloured by a slowly varying tint: flat alpha in front
             of a busy background, whose texture the matte must not take on
  veil       an opaque subject under a 45% veil that reaches well past it,
             the veil's border soft-blurred (sigma 6/1000 of the short side)
  lace       a mesh of opaque threads with holes near the model's
             resolution (period 3.5 coarse pixels), warped like cloth
  shadow     an opaque subject over its own soft shadow (55% dark, penumbra
             sigma 10/1000 of the short side)
  fabric     chiffon: alpha 0.4-0.7 varying with the folds, a crisp outline,
             its colour shaded by the same folds
Layers are composited front to back with the over operator, so alpha and
the premultiplied colour are exact: a = 1 - (1-a1)(1-a2),
aF = a1·F1 + (1-a1)·a2·F2 (Porter & Duff 1984).
"""
from __future__ import annotations

import cv2
import numpy as np

PLATEAUS = {"plateau20": 0.2, "plateau50": 0.5, "plateau80": 0.8}
KINDS = (*PLATEAUS, "veil", "lace", "shadow", "fabric")
FG_PHOTOS = {**{k: "astronaut" for k in PLATEAUS}, "veil": "coffee", "lace": "chelsea",
             "shadow": "rocket", "fabric": "coffee"}
BACKGROUNDS = ("gravel", "astronaut", "brick")   # busy, photographic, regular


def layers(case, rng, blob, fill_aa, textured, smooth) -> tuple[np.ndarray, np.ndarray]:
    """(alpha float32 HxW, foreground float32 HxWx3 in 0..255) of a see-through case."""
    w, h = case.width, case.height
    u = min(w, h) / 1000.0
    c = max(w, h) / 1024.0            # one coarse (model) pixel, in full-res pixels
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    photo = textured(FG_PHOTOS[case.kind], w, h, max(256, min(w, h) // 3)).astype(np.float32)
    tint = smooth(photo, 150 * u)     # a colour that changes only across the object
    if case.kind in PLATEAUS:
        a = PLATEAUS[case.kind] * fill_aa(w, h, blob(w, h, rng, cx, cy, 330 * u, 260 * u, wobble=0.15))
        return a, tint
    if case.kind == "veil":
        body = fill_aa(w, h, blob(w, h, rng, cx, cy, 150 * u, 220 * u))
        veil = fill_aa(w, h, blob(w, h, rng, cx + 60 * u, cy - 40 * u, 380 * u, 300 * u, wobble=0.12))
        veil = 0.45 * cv2.GaussianBlur(veil, (0, 0), 2.5 * u)
        light = 0.4 * tint + 0.6 * np.float32([235, 230, 220])
        return _over(veil, light, body, photo)
    if case.kind == "lace":
        inside = fill_aa(w, h, blob(w, h, rng, cx, cy, 320 * u, 250 * u, wobble=0.1))
        lace = 0.35 * tint + 0.65 * np.float32([245, 240, 235])
        return inside * _mesh(w, h, 3.5 * c, 1.2 * c, rng), lace
    if case.kind == "shadow":
        body = fill_aa(w, h, blob(w, h, rng, cx, cy - 60 * u, 200 * u, 230 * u))
        cast = fill_aa(w, h, blob(w, h, rng, cx + 90 * u, cy + 30 * u, 260 * u, 200 * u))
        cast = 0.55 * cv2.GaussianBlur(cast, (0, 0), 10 * u)
        dark = np.zeros_like(photo) + np.float32([22, 20, 28])
        return _over(body, photo, cast, dark)
    if case.kind == "fabric":
        inside = fill_aa(w, h, blob(w, h, rng, cx, cy, 340 * u, 270 * u, wobble=0.2))
        folds = _folds(w, h, 90 * u, rng)
        a = inside * (0.55 + 0.15 * folds)
        shade = (0.85 + 0.15 * folds)[..., None]
        return a.astype(np.float32), np.clip(tint * shade, 0, 255)
    raise ValueError(case.kind)


def _over(a1, f1, a2, f2) -> tuple[np.ndarray, np.ndarray]:
    """Layer 1 over layer 2 (straight colours in, straight colour out)."""
    a = 1 - (1 - a1) * (1 - a2)
    pre = a1[..., None] * f1 + ((1 - a1) * a2)[..., None] * f2
    f = np.where(a[..., None] > 1e-6, pre / np.maximum(a, 1e-6)[..., None], f1)
    return a.astype(np.float32), f.astype(np.float32)


def _folds(w: int, h: int, period: float, rng) -> np.ndarray:
    """-1..1, smooth waves of cloth folds across a random direction."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    t = xx * np.cos(ang) + yy * np.sin(ang)
    t += 0.3 * period * np.sin(yy / (2.7 * period) + rng.uniform(0, 6.3))
    return np.sin(2 * np.pi * t / period).astype(np.float32)


def _mesh(w: int, h: int, period: float, thread: float, rng, ss: int = 4) -> np.ndarray:
    """Coverage of two crossing families of threads (diamond holes), each
    `thread` px wide every `period` px, gently warped; evaluated on an ss x ss
    grid per pixel in bands, area-averaged."""
    ang = rng.uniform(0.3, 0.6)
    dirs = [(np.cos(ang), np.sin(ang)), (np.cos(ang + np.pi / 2.2), np.sin(ang + np.pi / 2.2))]
    out = np.zeros((h, w), np.float32)
    band = max(8, (1 << 21) // (w * ss * ss))
    sub = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    xs = (np.arange(w, dtype=np.float32)[:, None] + sub[None]).reshape(-1)
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + sub[None]).reshape(-1)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        xx = xx + 0.4 * period * np.sin(yy / (9 * period))
        cov = np.zeros(yy.shape, bool)
        for dx, dy in dirs:
            t = (xx * dx + yy * dy) % period
            cov |= np.abs(t - period / 2) > (period - thread) / 2
        out[y0:y1] = cov.reshape(y1 - y0, ss, w, ss).mean(axis=(1, 3))
    return out
