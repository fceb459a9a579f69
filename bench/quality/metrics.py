"""Matting error measures, as defined by Rhemann et al., "A perceptually
motivated online benchmark for image matting" (CVPR 2009), and computed the
way the Deep Image Matting evaluation code does (Xu et al., CVPR 2017):
alphas in 0..1, SAD and gradient reported /1000, MSE as is.

Plus a halo score for cut-outs: the cut-out composited on plain white and
plain black against the ground-truth composite, in the edge band.
"""
from __future__ import annotations

import cv2
import numpy as np

SIGMA = 1.4  # Gaussian-derivative scale of the gradient error (Rhemann et al.)


def unknown_band(gt: np.ndarray, radius: int) -> np.ndarray:
    """The trimap's unknown region: pixels within `radius` of partial alpha
    (what a user would paint as 'unknown')."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    fg = (gt >= 0.99).astype(np.uint8)
    bg = (gt <= 0.01).astype(np.uint8)
    return (cv2.erode(fg, k) == 0) & (cv2.erode(bg, k) == 0)


def edge_fringe(gt: np.ndarray, radius: int) -> np.ndarray:
    """Partial-alpha pixels within `radius` of a fully opaque or fully clear
    one: where a halo shows along an outline. Unlike the unknown band it
    leaves out the middle of a wide see-through body (a glass), whose
    colours are a separation problem of their own rather than a fringe."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    sure = ((gt <= 0.02) | (gt >= 0.98)).astype(np.uint8)
    return (cv2.dilate(sure, k) > 0) & (gt > 0.02) & (gt < 0.98)


def sad(pred, gt, mask) -> float:
    return float(np.abs(pred - gt)[mask].sum(dtype=np.float64) / 1000)


def mse(pred, gt, mask) -> float:
    return float(np.square(pred - gt)[mask].mean(dtype=np.float64)) if mask.any() else 0.0


def _grad_mag(a: np.ndarray) -> np.ndarray:
    # Gaussian first-derivative filters (separable), radius 3 sigma.
    r = int(np.ceil(3 * SIGMA))
    x = np.arange(-r, r + 1, dtype=np.float32)
    g = np.exp(-x ** 2 / (2 * SIGMA ** 2))
    g /= g.sum()
    dg = -x / SIGMA ** 2 * g
    dg /= np.abs(dg).sum() / 2
    gx = cv2.sepFilter2D(a, cv2.CV_32F, dg, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(a, cv2.CV_32F, g, dg, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def gradient(pred, gt, mask) -> float:
    d = _grad_mag(pred) - _grad_mag(gt)
    return float(np.square(d)[mask].sum(dtype=np.float64) / 1000)


def _largest_cc(m: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(m.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def connectivity_map(pred, gt, step: float = 0.1) -> np.ndarray:
    """Per-pixel connectivity error: how far each pixel's alpha is from the
    level at which it stops being connected to the main foreground body."""
    levels = np.arange(0, 1 + step, step)
    l_map = np.full(pred.shape, -1.0, np.float32)
    for i in range(1, len(levels)):
        omega = _largest_cc((pred >= levels[i]) & (gt >= levels[i]))
        l_map[(l_map == -1) & ~omega] = levels[i - 1]
    l_map[l_map == -1] = 1
    pd, gd = pred - l_map, gt - l_map
    pred_phi = 1 - pd * (pd >= 0.15)
    gt_phi = 1 - gd * (gd >= 0.15)
    return np.abs(pred_phi - gt_phi)


def all_errors(pred: np.ndarray, gt: np.ndarray, band: np.ndarray) -> dict:
    whole = np.ones_like(band)
    conn = connectivity_map(pred, gt)
    out = {}
    for name, m in (("", whole), ("band_", band)):
        out[name + "sad"] = sad(pred, gt, m)
        out[name + "mse"] = mse(pred, gt, m)
        out[name + "grad"] = gradient(pred, gt, m)
        out[name + "conn"] = float(conn[m].sum(dtype=np.float64) / 1000)
    return out


def halo(colours: np.ndarray, alpha: np.ndarray, fg_gt: np.ndarray, gt: np.ndarray,
         band: np.ndarray) -> float:
    """Mean absolute error (0..255 scale) of the cut-out composited on white
    and on black vs the ground-truth composite, over the edge band."""
    a, g = alpha[..., None], gt[..., None]
    c, f = colours.astype(np.float32), fg_gt.astype(np.float32)
    err = 0.0
    for back in (255.0, 0.0):
        ours = c * a + back * (1 - a)
        truth = f * g + back * (1 - g)
        err += float(np.abs(ours - truth)[band].mean(dtype=np.float64))
    return err / 2
