"""layermatte refine: a matte from anywhere (another tool, a hand-painted
mask, a model's 1024x1024 output) refined against its image at full size.

Runs pipeline.run in this process with the matte as the coarse input: the
same code the daemon runs for MATTE_SOURCE_PROVIDED and for its model's
output, without a daemon. No model is involved, so there is nothing for a
resident daemon to save, and the matte may be smaller than the image (the
daemon's guide-mask plane must be the layer's size) without being streamed
in at full size first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInput
from .common import add_edge_options, check_input, check_output, matte_options


def register(sub):
    p = sub.add_parser("refine", help="refine an existing matte against its image (no model)",
                       description="Refine MATTE (any size) against IMAGE at full size and write the "
                                   "refined matte, or with --cutout the cut-out. No model, no daemon.")
    p.add_argument("image", type=Path, help="the photo the matte belongs to")
    p.add_argument("matte", type=Path, help="grayscale matte (an image with alpha: its alpha); "
                   "any size, upsampled as part of refinement")
    p.add_argument("output", type=Path, help="refined matte, same size as IMAGE (.png, .webp, .tif); "
                   "with --cutout an RGBA cut-out")
    g = p.add_argument_group("refinement")
    add_edge_options(g)
    g.add_argument("--cutout", action="store_true",
                   help="write a cut-out (RGBA) instead of the matte")
    g.add_argument("--decontaminate", action=argparse.BooleanOptionalAction, default=None,
                   help="remove background colour from edge pixels of the cut-out (default: on, "
                        "as for cut; given alone it also means --cutout)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.set_defaults(run=run)


def matte_plane(pixels):
    """Gray: as is; gray+alpha or RGBA: the alpha; RGB: Rec. 601 luma."""
    import numpy as np
    c = pixels.shape[2]
    if c in (2, 4):
        return np.ascontiguousarray(pixels[..., -1])
    if c == 1:
        return np.ascontiguousarray(pixels[..., 0])
    luma = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(luma).astype(pixels.dtype)


def run(args) -> int:
    import numpy as np

    from ..imaging import formats, imageio, pipeline
    from .cut import ProgressBar
    for path in (args.image, args.matte):
        check_input(path)
    imageio.output_format(args.output)  # fail before any work on a bad extension
    check_output(args.output, [args.image, args.matte])
    image = imageio.read(args.image)
    mask = matte_plane(imageio.read(args.matte).pixels)
    if min(mask.shape) < 4:
        raise InvalidInput(f"{args.matte}: a {mask.shape[1]}x{mask.shape[0]} matte is too small to refine")
    cutout = args.cutout or args.decontaminate is True
    args.decontaminate = args.decontaminate is not False
    opts = matte_options(args, return_foreground=cutout,
                         depth16=image.pixels.dtype == np.uint16)
    fmt = formats.lookup(formats.code_for_array(image.pixels))
    bar = ProgressBar(args.image.name, enabled=sys.stderr.isatty())
    try:
        r = pipeline.run(image.pixels, fmt, opts, guide_mask=mask, progress=bar, threads=args.threads)
    finally:
        bar.close()
    out = np.dstack([r.foreground, r.matte.astype(r.foreground.dtype)]) if cutout else r.matte
    imageio.write(args.output, out, image.icc_profile)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
