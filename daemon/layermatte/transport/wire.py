"""The one place where protobuf messages become plain Python values and back."""
from __future__ import annotations

from dataclasses import dataclass

from ..imaging import formats
from ..errors import InvalidInput
from ..imaging.options import MatteOptions
from ..proto.layermatte.v1 import matting_pb2 as pb
from ..imaging.options import EdgeOptions

MAX_REQUEST_ID = 128
QUALITY = {pb.REFINEMENT_QUALITY_FAST: "fast", pb.REFINEMENT_QUALITY_HQ: "hq"}
QUALITY_CODE = {v: k for k, v in QUALITY.items()}


@dataclass(frozen=True)
class MatteJob:
    request_id: str
    width: int
    height: int
    format: formats.PixelFormat
    model_id: str
    options: MatteOptions
    use_model: bool
    pixels_file: str = ""   # the unix-socket fast path (localfile.py); "" = chunks follow
    result_file: str = ""   # the same for the answer; "" = chunks back

    @property
    def pixel_bytes(self) -> int:
        return self.width * self.height * self.format.bytes_per_pixel

    @property
    def guide_bytes(self) -> int:
        return 0 if self.use_model else self.width * self.height


def _bounded(name: str, value: float, lo: float, hi: float) -> float:
    if not (lo <= value <= hi):  # also rejects NaN
        raise InvalidInput(f"refinement.{name} must be within {lo}..{hi}, got {value}")
    return float(value)


def job_from_header(h: pb.MatteHeader) -> MatteJob:
    if len(h.request_id) > MAX_REQUEST_ID or not h.request_id.isprintable():
        raise InvalidInput(f"request_id must be at most {MAX_REQUEST_ID} printable characters")
    if h.width < 1 or h.height < 1:
        raise InvalidInput(f"layer size must be at least 1x1, got {h.width}x{h.height}")
    fmt = formats.lookup(h.format)
    if h.matte_depth not in (pb.MATTE_DEPTH_U8, pb.MATTE_DEPTH_U16):
        raise InvalidInput(f"unknown matte_depth {h.matte_depth}")
    if h.source not in (pb.MATTE_SOURCE_MODEL, pb.MATTE_SOURCE_PROVIDED):
        raise InvalidInput(f"unknown source {h.source}")
    r = h.refinement
    if r.quality not in QUALITY:
        raise InvalidInput(f"unknown refinement.quality {r.quality}")
    edges = EdgeOptions(feather_px=_bounded("feather_px", r.feather_px, 0, 250),
                        shift_px=_bounded("shift_px", r.shift_px, -100, 100),
                        smooth=_bounded("smooth", r.smooth, 0, 1),
                        contrast=_bounded("contrast", r.contrast, -1, 1))
    opts = MatteOptions(edges=edges, decontaminate=r.decontaminate, plain_upsample=r.plain_upsample,
                        quality=QUALITY[r.quality],
                        ignore_layer_alpha=h.ignore_layer_alpha,
                        depth16=h.matte_depth == pb.MATTE_DEPTH_U16,
                        return_foreground=h.return_foreground)
    return MatteJob(request_id=h.request_id, width=h.width, height=h.height, format=fmt,
                    model_id=h.model_id, options=opts, use_model=h.source == pb.MATTE_SOURCE_MODEL,
                    pixels_file=h.pixels_file, result_file=h.result_file)


def header_from_job(*, width: int, height: int, format_code: int, model_id: str = "",
                    request_id: str = "", options: MatteOptions = MatteOptions(),
                    use_model: bool = True) -> pb.MatteHeader:
    e = options.edges
    return pb.MatteHeader(
        request_id=request_id, width=width, height=height, format=format_code, model_id=model_id,
        refinement=pb.Refinement(feather_px=e.feather_px, shift_px=e.shift_px, smooth=e.smooth,
                                 contrast=e.contrast, decontaminate=options.decontaminate,
                                 plain_upsample=options.plain_upsample,
                                 quality=QUALITY_CODE[options.quality]),
        matte_depth=pb.MATTE_DEPTH_U16 if options.depth16 else pb.MATTE_DEPTH_U8,
        source=pb.MATTE_SOURCE_MODEL if use_model else pb.MATTE_SOURCE_PROVIDED,
        ignore_layer_alpha=options.ignore_layer_alpha, return_foreground=options.return_foreground)
