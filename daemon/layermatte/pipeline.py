"""One layer in, one full-resolution matte out.

decode view → model tensor → inference → guided upsampling + edge controls in
horizontal strips (bounded memory, all cores) → matte (+ foreground colours).
The daemon, the in-process CLI (--local) and the Ray batch all call run().
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from . import formats, refine
from .engine import LoadedModel
from .errors import Cancelled, InvalidInput
from .formats import PixelFormat

STRIP_ROWS = 256
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class MatteOptions:
    edges: refine.EdgeOptions = field(default_factory=refine.EdgeOptions)
    decontaminate: bool = False
    plain_upsample: bool = False
    ignore_layer_alpha: bool = False
    depth16: bool = False
    return_foreground: bool = False


@dataclass
class MatteResult:
    matte: np.ndarray                 # HxW uint8 or uint16
    foreground: np.ndarray | None     # HxWx3 uint8/uint16, straight colours
    stage_ms: dict[str, float]
    model_id: str = ""
    provider: str = ""


def model_tensor(pixels: np.ndarray, fmt: PixelFormat, model: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """(NCHW float32 input tensor, low-res RGB guide 0..1 on the same grid)."""
    pre = model.spec.preprocess
    s = pre.input_size
    low = low_res(pixels, fmt, s, s)
    rgb255 = low * 255.0
    if pre.channel_order == "BGR":
        rgb255 = rgb255[..., ::-1]
    t = (rgb255 - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(t.transpose(2, 0, 1)[None], dtype=np.float32), low


def low_res(pixels: np.ndarray, fmt: PixelFormat, w: int, h: int) -> np.ndarray:
    """Area-averaged downscale of the colour channels to HxWx3 float 0..1."""
    src = pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    # Integer-factor area averaging first (OpenCV's fast path), then the rest.
    fx, fy = src.shape[1] // w, src.shape[0] // h
    if fx >= 2 and fy >= 2:
        src = cv2.resize(src, (src.shape[1] // fx, src.shape[0] // fy), interpolation=cv2.INTER_AREA)
    small = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = small[..., None]
    colour, _ = formats.split(small, fmt)
    return formats.to_float(colour, fmt)


def _postprocess(raw: np.ndarray, model: LoadedModel) -> np.ndarray:
    m = np.asarray(raw, np.float32).reshape(raw.shape[-2:])
    kind = model.spec.preprocess.output
    if kind == "sigmoid":
        m = 1.0 / (1.0 + np.exp(-m))
    elif kind == "minmax":
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return np.clip(m, 0.0, 1.0)


def run(pixels: np.ndarray, fmt: PixelFormat, opts: MatteOptions, *,
        model: LoadedModel | None = None, guide_mask: np.ndarray | None = None,
        progress: Progress = lambda stage, f: None, cancel: threading.Event | None = None,
        threads: int | None = None) -> MatteResult:
    """pixels: HxWxC view in `fmt`. Exactly one of model / guide_mask."""
    cancel = cancel or threading.Event()
    h, w = pixels.shape[:2]
    timer = _StageTimer()

    def check():
        if cancel.is_set():
            raise Cancelled("request cancelled")

    # Coarse matte: from the model, or from the caller's existing mask.
    if model is not None:
        with timer("preprocess"):
            progress("preprocess", 0.1)
            tensor, guide_low = model_tensor(pixels, fmt, model)
        check()
        with timer("inference"):
            progress("inference", 0.15)
            coarse = _postprocess(model.run(tensor, cancel), model)
    elif guide_mask is not None:
        if guide_mask.shape != (h, w):
            raise InvalidInput(f"guide mask is {guide_mask.shape[1]}x{guide_mask.shape[0]}, layer is {w}x{h}")
        with timer("preprocess"):
            progress("preprocess", 0.1)
            lw, lh = min(w, 1024), min(h, 1024)
            guide_low = low_res(pixels, fmt, lw, lh)
            coarse = cv2.resize(guide_mask, (lw, lh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    else:
        raise InvalidInput("nothing to matte: no model and no guide mask")
    check()
    progress("upsample", 0.6)

    with timer("upsample"):
        coef = None if opts.plain_upsample else refine.guided_coefficients(guide_low, coarse)
        colour, alpha = formats.split(pixels, fmt)
        out_dtype = np.uint16 if opts.depth16 else np.uint8
        out_max = 65535.0 if opts.depth16 else 255.0
        matte = np.empty((h, w), out_dtype)
        fg = None
        if opts.return_foreground:
            fg_dtype = np.uint8 if fmt.dtype == np.uint8 else np.uint16
            fg = np.empty((h, w, 3), fg_dtype)
        halo = opts.edges.halo()
        strips = [(y, min(h, y + STRIP_ROWS)) for y in range(0, h, STRIP_ROWS)]
        done = [0]
        lock = threading.Lock()

        def strip(y0: int, y1: int) -> None:
            check()
            a0, a1 = max(0, y0 - halo), min(h, y1 + halo)
            guide = formats.to_float(colour[a0:a1], fmt)
            if coef is None:
                q = refine.resize_rows(coarse, w, h, a0, a1)
            else:
                q = refine.apply_guided(coef, guide, w, h, a0, a1)
            q = refine.edge_controls(q, opts.edges)
            if alpha is not None and not opts.ignore_layer_alpha:
                q = q * (alpha[a0:a1].astype(np.float32) * (1.0 / fmt.max_value))
            q = q[y0 - a0: y0 - a0 + (y1 - y0)]
            matte[y0:y1] = (q * out_max + 0.5).astype(out_dtype)
            if fg is not None:
                g = guide[y0 - a0: y0 - a0 + (y1 - y0)]
                if opts.decontaminate:
                    g = refine.estimate_foreground(g, q)
                fmax = 255.0 if fg.dtype == np.uint8 else 65535.0
                fg[y0:y1] = np.clip(g * fmax + 0.5, 0, fmax).astype(fg.dtype)
            with lock:
                done[0] += 1
                progress("refine", 0.6 + 0.35 * done[0] / len(strips))

        n = threads or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=n) as pool:
            for f in [pool.submit(strip, y0, y1) for y0, y1 in strips]:
                f.result()
    check()
    return MatteResult(matte=matte, foreground=fg, stage_ms=timer.ms,
                       model_id=model.spec.id if model else "", provider=model.provider if model else "")


class _StageTimer:
    def __init__(self):
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.ms[stage] = timer.ms.get(stage, 0.0) + (time.perf_counter() - self.t0) * 1000
        return _Ctx()
