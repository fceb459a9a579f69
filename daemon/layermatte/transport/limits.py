"""The daemon's limits, in a module of their own so `layermatte serve --help`
can show the defaults without importing the daemon (numpy, onnxruntime)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 250_000_000     # a 12000x9000 layer is 108 MP
    concurrency: int = 1              # inference uses every core already
    queue_depth: int = 8              # admitted but waiting
    deadline_s: float = 600.0
    idle_release_s: float = 60.0      # idle this long: inference memory goes back (0: never)
