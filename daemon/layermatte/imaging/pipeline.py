"""One layer in, one full-resolution matte out.

decode view → model tensor → inference → guided upsampling + edge controls in
horizontal strips (bounded memory, all cores) → matte (+ foreground colours).
In hq quality, matting on the uncertain band (tiles) runs between the two.
Decontaminated colours follow as a stage of their own, from the delivered
matte (decontaminate.layer_colours). The daemon, the in-process CLI (--local, refine) and the Ray batch all call run().
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from . import backdrop, decontaminate, formats, refeed, refine
from ..models.catalog import ModelSpec
from ..models.engine import LoadedModel
from ..errors import Cancelled, InvalidInput
from .formats import PixelFormat
from .options import QUALITIES, MatteOptions  # noqa: F401 (the pipeline's names)

STRIP_ROWS = 256
COARSE_MAX = 1024   # a provided mask is refined from at most this size, like the model's output
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Coarse:
    """What refinement starts from: the coarse matte (0..1) and the image on
    the same grid. Cached by the daemon so re-refining skips the model."""
    matte: np.ndarray      # h x w float32
    guide: np.ndarray      # h x w x 3 float32 0..1

    @property
    def nbytes(self) -> int:
        return self.matte.nbytes + self.guide.nbytes


@dataclass
class MatteResult:
    matte: np.ndarray                 # HxW uint8 or uint16
    foreground: np.ndarray | None     # HxWx3 uint8/uint16, straight colours
    stage_ms: dict[str, float]
    model_id: str = ""
    provider: str = ""
    coarse: Coarse | None = None


@dataclass(frozen=True)
class ModelInput:
    """The model's input tensor and the guide on the same grid, made once per
    layer. digest identifies the area-averaged colour both are computed from:
    the model sees nothing else, so equal digests mean equal coarse mattes
    (the daemon's re-refine key; hashing ~1 MP instead of the whole layer)."""
    tensor: np.ndarray     # 1x3xSxS float32
    guide: np.ndarray      # SxSx3 float32 0..1
    digest: bytes
    small: np.ndarray | None = None   # what guide is made from, in the layer's dtype
    fmt: PixelFormat | None = None
    padded: bool = False              # the tensor has a backdrop margin (backdrop.pad)
    frame: tuple[float, ...] | None = None   # the tensor is a picture turned upright (backdrop.Frame.grid_map)
    view: refeed.CutOutView | None = None    # a padded cut-out, for another look (refeed.py)

    def coarse(self, matte: np.ndarray) -> np.ndarray:
        """The model's matte on the guide's grid (the margin cropped off, a picture turned back)."""
        return backdrop.to_layer(matte, self.padded, self.frame)


def model_input(pixels: np.ndarray, fmt: PixelFormat, spec: ModelSpec,
                layer_alpha: bool = True, pad: bool = True) -> ModelInput:
    """layer_alpha: the model sees the layer as it shows (backdrop.shown);
    False (ignore_layer_alpha) feeds the colours as stored. A layer shown
    over a backdrop gets a margin of it, a picture on transparency is fed
    turned upright (pad=False: neither); ModelInput.coarse undoes either on
    the model's matte."""
    if layer_alpha:
        pixels = backdrop.shown(pixels, fmt)
    rgb = getattr(pixels, "backdrop", None) if pad else None
    frame = getattr(pixels, "frame", None) if pad else None
    pixels_alpha = getattr(pixels, "alpha", None)
    pixels = np.asarray(pixels)
    pre = spec.preprocess
    s = pre.input_size
    small = _area_colour(pixels, fmt, s, s)
    fed, grid = small, None
    if rgb is not None:
        side = backdrop.inner_box(s)[1]
        fed = backdrop.pad(_area_colour(pixels, fmt, side, side), fmt, rgb, s)
    elif frame is not None:
        fed = _area_colour(frame.upright(pixels), fmt, s, s)
        grid = frame.grid_map(pixels.shape[1], pixels.shape[0], s)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{spec.id}\0{fmt.name}\0{pixels.shape}\0{small.dtype}\0{rgb}\0{grid}\0".encode())
    h.update(memoryview(np.ascontiguousarray(fed)).cast("B"))
    low = formats.to_float(small, fmt)
    tensor = pre.tensor(fed, 255.0 / (1.0 if fmt.dtype.kind == "f" else fmt.max_value))
    view = None if rgb is None else refeed.CutOutView(low, refeed.grid_alpha(pixels_alpha, fmt, s), rgb)
    return ModelInput(tensor, low, h.digest(), small, fmt, rgb is not None, grid, view)


def model_tensor(pixels: np.ndarray, fmt: PixelFormat, spec: ModelSpec,
                 layer_alpha: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(NCHW float32 input tensor, low-res RGB guide 0..1 on the same grid)."""
    mi = model_input(pixels, fmt, spec, layer_alpha, pad=False)   # opaque photos: as fed
    return mi.tensor, mi.guide


def _area_colour(pixels: np.ndarray, fmt: PixelFormat, w: int, h: int) -> np.ndarray:
    """Area-averaged downscale of the colour channels, in the layer's dtype."""
    src = pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    # Integer-factor area averaging first, then the rest. The factors must
    # divide the size exactly: otherwise OpenCV leaves its fast path (6000x4000
    # by 5x3: 60 ms; by 5x2, which divides: 25 ms), and cropping to a multiple
    # would shift the matte against the image.
    fx, fy = _dividing_factor(src.shape[1], w), _dividing_factor(src.shape[0], h)
    if fx >= 2 or fy >= 2:
        src = cv2.resize(src, (src.shape[1] // fx, src.shape[0] // fy), interpolation=cv2.INTER_AREA)
    small = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA) if src.shape[:2] != (h, w) else src
    if small.ndim == 2:
        small = small[..., None]
    return formats.split(small, fmt)[0]


def _dividing_factor(n: int, target: int) -> int:
    """The largest f <= n // target that divides n (1 if none)."""
    f = n // target
    while f >= 2 and n % f:
        f -= 1
    return max(f, 1)


def low_res(pixels: np.ndarray, fmt: PixelFormat, w: int, h: int, layer_alpha: bool = True) -> np.ndarray:
    """Area-averaged downscale of the colour channels to HxWx3 float 0..1
    (of the layer as it shows, like model_input)."""
    if layer_alpha:
        pixels = backdrop.shown(pixels, fmt)
    return formats.to_float(_area_colour(pixels, fmt, w, h), fmt)


def postprocess(raw: np.ndarray, model: LoadedModel) -> np.ndarray:
    m = np.asarray(raw, np.float32).reshape(raw.shape[-2:])
    kind = model.spec.preprocess.output
    if kind == "sigmoid":
        m = 1.0 / (1.0 + np.exp(-m))
    elif kind == "minmax":
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return np.clip(m, 0.0, 1.0)


def coarse_from_mask(pixels: np.ndarray, fmt: PixelFormat, mask: np.ndarray) -> Coarse:
    """A mask from anywhere (any size, 8/16-bit or float; e.g. a model's
    1024x1024 output): refined from at most the layer's size and COARSE_MAX
    px per side, like the model's output. pixels: as the guide should read
    them (run passes the layer as it shows)."""
    h, w = pixels.shape[:2]
    if mask.ndim != 2 or mask.size == 0:
        raise InvalidInput(f"guide mask must be one gray plane, got shape {mask.shape}")
    m = formats.to_float(mask, formats.lookup(formats.code_for_array(mask)))
    lw, lh = min(mask.shape[1], w, COARSE_MAX), min(mask.shape[0], h, COARSE_MAX)
    if (lw, lh) != (mask.shape[1], mask.shape[0]):
        m = cv2.resize(m, (lw, lh), interpolation=cv2.INTER_AREA)
    return Coarse(np.ascontiguousarray(m, np.float32), low_res(pixels, fmt, lw, lh, layer_alpha=False))


def as_shown(pixels: np.ndarray, fmt: PixelFormat, opts: MatteOptions) -> np.ndarray:
    """The layer as the model and the guide read it: over a backdrop where it
    has transparency (backdrop.shown), as stored with ignore_layer_alpha."""
    if fmt.has_alpha and not opts.ignore_layer_alpha:
        return backdrop.shown(pixels, fmt)
    return pixels


def run(pixels: np.ndarray, fmt: PixelFormat, opts: MatteOptions, *,
        model: LoadedModel | None = None, guide_mask: np.ndarray | None = None,
        coarse: Coarse | None = None, prepared: ModelInput | None = None,
        progress: Progress = lambda stage, f: None,
        cancel: threading.Event | None = None, threads: int | None = None,
        pool: ThreadPoolExecutor | None = None, shown: np.ndarray | None = None) -> MatteResult:
    """pixels: HxWxC view in `fmt`. Exactly one of model / guide_mask (any
    size up to the layer's) / coarse (a cached earlier result). `prepared`:
    the model's input when the caller has made it already (the daemon does,
    for its cache key); `shown`: as_shown(pixels, ...) when the caller made
    it already (the same pass, not done twice)."""
    cancel = cancel or threading.Event()
    h, w = pixels.shape[:2]
    timer = _StageTimer()
    if opts.quality not in QUALITIES:
        raise InvalidInput(f"quality must be one of {', '.join(QUALITIES)}, got {opts.quality!r}")

    def check():
        if cancel.is_set():
            raise Cancelled("request cancelled")

    # What the model and the refinement's guide read: the layer as it shows
    # (made once; model_input and coarse_from_mask get it as it is).
    if shown is None:
        shown = as_shown(pixels, fmt, opts)
    plain = np.asarray(shown)   # refinement reads a plain array (shown keeps its backdrop for the model)

    # Coarse matte: from the model, the caller's mask, or a cached one.
    if coarse is not None:
        timer.ms["inference"] = 0.0
    elif model is not None:
        with timer("preprocess"):
            progress("preprocess", 0.1)
            prepared = prepared or model_input(shown, fmt, model.spec, layer_alpha=False)
        check()
        with timer("inference"):
            progress("inference", 0.15)
            def infer(tensor: np.ndarray) -> np.ndarray:
                return postprocess(model.run(tensor, cancel), model)
            matte = prepared.coarse(infer(prepared.tensor))
            if prepared.view is not None:
                matte = refeed.second_look(matte, prepared.view, model.spec.preprocess, infer, check)
            coarse = Coarse(matte, prepared.guide)
    elif guide_mask is not None:
        with timer("preprocess"):
            progress("preprocess", 0.1)
            coarse = coarse_from_mask(plain, fmt, guide_mask)
    else:
        raise InvalidInput("nothing to matte: no model and no guide mask")
    check()
    progress("upsample", 0.6)
    n = threads or os.cpu_count() or 1
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=n)
    try:
        return _refine(pixels, plain, fmt, opts, coarse, model, pool, n, timer, check, progress)
    finally:
        if own_pool:
            pool.shutdown()


def _refine(layer, pixels, fmt, opts, coarse, model, pool, n, timer, check, progress) -> MatteResult:
    """layer: the layer as given (its alpha limits the matte, its colours are
    the plain foreground); pixels: as it shows (what the guide reads)."""
    h, w = pixels.shape[:2]
    colour, _ = formats.split(pixels, fmt)
    own_colour, _ = formats.split(layer, fmt)

    with timer("upsample"):
        coef = None if opts.plain_upsample else refine.upsampling_coefficients(
            coarse.guide, coarse.matte, pool=pool, bands=n)

        # Integer RGB(A) layers: the coefficients apply to the samples as they are.
        direct = coef is not None and fmt.dtype.kind == "u" and fmt.channels >= 3
        if direct:
            top = int(fmt.max_value)
            ab = np.ascontiguousarray(coef.ab[..., [2, 1, 0, 3]]) if fmt.bgr else coef.ab

        out_dtype = np.uint16 if opts.depth16 else np.uint8
        out_max = 65535.0 if opts.depth16 else 255.0
        # Where the output level is sure whatever the colours, it is written, not computed.
        # Worth it when the layer is much larger than the coefficients' grid.
        levels = None
        if direct and opts.quality == "fast" and w * h >= 4 * ab.shape[0] * ab.shape[1]:
            levels = refine.sure_levels(ab, out_max)

        def raw(a0: int, a1: int, guide=None) -> np.ndarray:
            if coef is None:
                return refine.resize_rows(coarse.matte, w, h, a0, a1)
            if direct:
                q = np.empty((a1 - a0, w), np.float32)
                spans = [(0, w, -1)] if levels is None else refine.sure_spans(levels, w, h, a0, a1)
                for x0, x1, level in spans:
                    if level >= 0:
                        q[:, x0:x1] = level
                    else:
                        refine.apply_guided_int(ab, refine.with_unit(pixels[a0:a1, x0:x1], top), top,
                                                w, h, a0, a1, x0, x1, out=q[:, x0:x1])
                return q
            return refine.apply_guided(coef, guide if guide is not None else
                                       formats.to_float(colour[a0:a1], fmt), w, h, a0, a1)

        full = None
        if opts.quality == "hq" and coef is not None:
            full = np.empty((h, w), np.float32)

            def fill(y0: int, y1: int) -> None:
                check()
                full[y0:y1] = raw(y0, y1)
            _all(pool, fill, [(y, min(h, y + STRIP_ROWS)) for y in range(0, h, STRIP_ROWS)])
            _band_matting(pool, full, colour, fmt, refine.hq_weight(coarse.matte, coef.gate), check, progress)

        matte = np.empty((h, w), out_dtype)
        fg = None
        if opts.return_foreground:
            fg = np.empty((h, w, 3), np.uint8 if fmt.dtype == np.uint8 else np.uint16)
        # Rows of context each strip reads: the edge controls' reach.
        halo = opts.edges.halo()
        decon = opts.decontaminate and fg is not None
        span = 0.08 if decon else 0.15    # progress share of the matte strips
        strips = [(y, min(h, y + STRIP_ROWS)) for y in range(0, h, STRIP_ROWS)]
        done = [0]
        lock = threading.Lock()

        def strip(y0: int, y1: int) -> None:
            check()
            a0, a1 = max(0, y0 - halo), min(h, y1 + halo)
            # The float image only where the coefficients need it (decontamination
            # converts the partial band's windows itself, afterwards).
            need = full is None and coef is not None and not direct
            guide = formats.to_float(colour[a0:a1], fmt) if need else None
            q = full[a0:a1] if full is not None else raw(a0, a1, guide)
            q = refine.edge_controls(q, opts.edges)
            if fmt.has_alpha and not opts.ignore_layer_alpha:
                q = backdrop.limit(q, layer[a0:a1], fmt)
            q = q[y0 - a0: y0 - a0 + (y1 - y0)]
            if out_dtype == np.uint8:   # q is in 0..1: OpenCV's rounding conversion, one pass
                matte[y0:y1] = cv2.convertScaleAbs(q, alpha=255.0)
            else:
                matte[y0:y1] = (q * out_max + 0.5).astype(out_dtype)
            if fg is not None:
                # The layer's own colours (gray broadcast to RGB); with
                # decontamination the colours as shown, whose partial band
                # layer_colours replaces below.
                if colour.dtype == fg.dtype:
                    fg[y0:y1] = (colour if decon else own_colour)[y0:y1]
                else:
                    g = formats.to_float(colour[y0:y1], fmt) if guide is None else guide[y0 - a0: y0 - a0 + (y1 - y0)]
                    fmax = 255.0 if fg.dtype == np.uint8 else 65535.0
                    fg[y0:y1] = np.clip(g * fmax + 0.5, 0, fmax).astype(fg.dtype)
            with lock:
                done[0] += 1
                progress("refine", 0.8 + span * done[0] / len(strips))

        _all(pool, strip, strips)
    check()
    if decon:
        with timer("decontaminate"):
            decontaminate.layer_colours(matte, colour, fmt, fg, coarse.guide, pool, STRIP_ROWS, check,
                                        lambda f: progress("refine", 0.88 + 0.07 * f))
        check()
    return MatteResult(matte=matte, foreground=fg, stage_ms=timer.ms, coarse=coarse,
                       model_id=model.spec.id if model else "", provider=model.provider if model else "")


def _all(pool: ThreadPoolExecutor, fn, args: list[tuple]) -> None:
    for f in [pool.submit(fn, *a) for a in args]:
        f.result()


def _band_matting(pool, full: np.ndarray, colour: np.ndarray, fmt: PixelFormat,
                  weight_low: np.ndarray, check, progress) -> None:
    """hq: re-estimate alpha on the uncertain band, tile by tile (in place).
    Each tile reads a margin of context; results are written to the tile's
    own area only, after all tiles have read theirs."""
    h, w = full.shape
    tiles = refine.hq_tiles(weight_low, w, h)
    m = refine.HQ_MARGIN
    done = [0]
    lock = threading.Lock()

    def tile(y0: int, y1: int, x0: int, x1: int):
        check()
        b0, b1, c0, c1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        img = formats.to_float(colour[b0:b1, c0:c1], fmt)
        wgt = refine.resize_rows(weight_low, w, h, b0, b1, c0, c1)
        a = refine.hq_tile(img, full[b0:b1, c0:c1], wgt)
        with lock:
            done[0] += 1
            progress("refine", 0.6 + 0.2 * done[0] / max(1, len(tiles)))
        return a[y0 - b0:y1 - b0, x0 - c0:x1 - c0]

    futures = [(t, pool.submit(tile, *t)) for t in tiles]
    results = [(t, f.result()) for t, f in futures]
    for (y0, y1, x0, x1), a in results:
        full[y0:y1, x0:x1] = a


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
