"""What a caller can ask of a matte: plain dataclasses with no numpy or
OpenCV behind them, so clients (the CLI, wire.py) name options without
importing the pipeline, the ONNX runtime or the refinement code."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

QUALITIES = ("fast", "hq")


@dataclass(frozen=True)
class EdgeOptions:
    feather_px: float = 0.0
    shift_px: float = 0.0
    smooth: float = 0.0
    contrast: float = 0.0

    def halo(self) -> int:
        """Rows of context a strip needs so strip seams are invisible."""
        return int(math.ceil(3 * self.feather_px + abs(self.shift_px) + 12 * self.smooth)) + 2


@dataclass(frozen=True)
class MatteOptions:
    edges: EdgeOptions = field(default_factory=EdgeOptions)
    decontaminate: bool = False
    plain_upsample: bool = False
    ignore_layer_alpha: bool = False
    depth16: bool = False
    return_foreground: bool = False
    quality: str = "fast"             # "fast" (guided upsampling) or "hq" (+ matting on the band)
