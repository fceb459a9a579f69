"""layermatte pipe: raw pixels on stdin, raw matte on stdout.

The plug-ins' fallback when the editor's Python has no usable grpc: one JSON
object per line on stderr ({"stage", "progress"}, {"summary"} or {"error"}).
"""
from __future__ import annotations

import json
import sys

import numpy as np

from .. import formats
from ..errors import InvalidInput, LayermatteError
from .common import add_connection, connect
from ..pipeline import QUALITIES, MatteOptions
from ..refine import EdgeOptions


def register(sub):
    p = sub.add_parser("pipe", help="raw pixels in, raw matte out (for editor plug-ins)")
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--format", required=True, choices=sorted(formats.BY_NAME))
    p.add_argument("--model", default="")
    p.add_argument("--feather", type=float, default=0.0)
    p.add_argument("--shift", type=float, default=0.0)
    p.add_argument("--smooth", type=float, default=0.0)
    p.add_argument("--contrast", type=float, default=0.0)
    p.add_argument("--quality", choices=QUALITIES, default="fast")
    p.add_argument("--guide", action="store_true", help="a GRAY8 mask to refine follows the pixels")
    p.add_argument("--depth16", action="store_true", help="write a 16-bit little-endian matte")
    p.add_argument("--foreground", action="store_true",
                   help="after the matte, write the cut-out colours (RGB8, or RGB16 little-endian "
                        "for deeper formats)")
    p.add_argument("--decontaminate", action="store_true", help="remove background colour from edges")
    add_connection(p)
    p.set_defaults(run=run)


def _event(**kv) -> None:
    sys.stderr.write(json.dumps(kv) + "\n")
    sys.stderr.flush()


def _read_exact(stream, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise InvalidInput(f"stdin ended after {got} of {n} bytes")
        got += k
    return buf


def run(args) -> int:
    try:
        code = formats.BY_NAME[args.format]
        fmt = formats.lookup(code)
        if args.width < 1 or args.height < 1:
            raise InvalidInput(f"layer size must be at least 1x1, got {args.width}x{args.height}")
        pixels = formats.as_array(_read_exact(sys.stdin.buffer, args.width * args.height * fmt.bytes_per_pixel),
                                  args.width, args.height, fmt)
        guide = None
        if args.guide:
            guide = np.frombuffer(_read_exact(sys.stdin.buffer, args.width * args.height),
                                  np.uint8).reshape(args.height, args.width)
        opts = MatteOptions(edges=EdgeOptions(args.feather, args.shift, args.smooth, args.contrast),
                            depth16=args.depth16, quality=args.quality,
                            return_foreground=args.foreground,
                            decontaminate=args.foreground and args.decontaminate)
        with connect(args) as client:
            reply = client.matte(pixels, format_code=code, model_id=args.model, options=opts,
                                 guide_mask=guide, progress=lambda s, f: _event(stage=s, progress=f))
        for plane in (reply.matte, reply.foreground):
            if plane is not None:
                sys.stdout.buffer.write(np.ascontiguousarray(plane, plane.dtype.newbyteorder("<")).tobytes())
        sys.stdout.buffer.flush()
        _event(summary=reply.summary)
        return 0
    except LayermatteError as e:
        _event(error=str(e))
        return 2
