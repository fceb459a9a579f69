"""layermatte cut: one image file in, cut-out (or matte) file out."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import imageio
from .common import add_connection, add_matte_options, connect, matte_options


def register(sub):
    p = sub.add_parser("cut", help="remove the background of an image file")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path, help=".png, .webp, .tif or .tiff")
    p.add_argument("--mask-only", action="store_true", help="write the grayscale matte only")
    p.add_argument("--local", action="store_true", help="run in this process, without a daemon")
    add_matte_options(p)
    add_connection(p)
    p.set_defaults(run=run)


class ProgressBar:
    """tqdm bar fed by the daemon's progress events (stage shown as the label)."""

    def __init__(self, label: str, enabled: bool = True):
        self.bar = tqdm(total=1000, desc=label, disable=not enabled, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.done = 0

    def __call__(self, stage: str, fraction: float) -> None:
        target = int(fraction * 1000)
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target
        self.bar.set_postfix_str(stage, refresh=False)

    def close(self):
        self.bar.close()


def matte_file(args, image: imageio.LoadedImage, want_foreground: bool, progress):
    depth16 = image.pixels.dtype == np.uint16
    opts = matte_options(args, return_foreground=want_foreground, depth16=depth16)
    if args.local:
        from .. import formats, pipeline
        from ..catalog import Catalog
        from ..engine import Engine
        model, _ = Engine(Catalog()).load(args.model or None)
        fmt = formats.lookup(formats.code_for_array(image.pixels))
        r = pipeline.run(image.pixels, fmt, opts, model=model, progress=progress)
        return r.matte, r.foreground
    with connect(args) as client:
        r = client.matte(image.pixels, model_id=args.model, options=opts, progress=progress)
        return r.matte, r.foreground


def run(args) -> int:
    imageio.output_format(args.output)  # fail before any work on a bad extension
    image = imageio.read(args.input)
    bar = ProgressBar(args.input.name, enabled=sys.stderr.isatty())
    try:
        matte, fg = matte_file(args, image, not args.mask_only, bar)
    finally:
        bar.close()
    out = matte if args.mask_only else np.dstack([fg, matte.astype(fg.dtype)])
    imageio.write(args.output, out, image.icc_profile)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
