"""layermatte cut: image files in, cut-outs (or mattes) out.

`cut IN OUT`, `cut IN` (NAME.cut.png beside it), `cut IN... FOLDER` (FOLDER/NAME.png),
`-` for stdin/stdout. Everything that can be checked is checked for every
input before the first one is worked on.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, LayermatteError
from .common import (add_connection, add_matte_options, check_input, check_output, connect,
                     is_std, matte_options, warn)

FORMATS = ("png", "webp", "tif", "jpg")
EXIT_SOME_FAILED = 3


def register(sub):
    p = sub.add_parser(
        "cut", help="remove the background of image files",
        description="Cut out each INPUT. Forms: `cut IN OUT`; `cut IN` (writes NAME.cut.png, or "
                    "NAME.matte.png with --mask-only, beside IN); `cut IN... FOLDER` (FOLDER/NAME.png). "
                    "`-` reads the image from stdin / writes it to stdout. Exit code 0: all done; "
                    f"{EXIT_SOME_FAILED}: some inputs failed (listed); 2: error, nothing written.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="INPUT [OUTPUT], or INPUT... FOLDER (an existing folder); - is stdin/stdout")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output type for stdout, a FOLDER or a default name (default: png); a named "
                        "OUTPUT's suffix decides otherwise (.png .webp .tif .tiff .jpg .jpeg)")
    p.add_argument("--mask-only", action="store_true", help="write the grayscale matte only")
    p.add_argument("--bg-color", metavar="COLOR",
                   help="composite the cut-out on this colour (#rrggbb, R,G,B or a name such as "
                        "white) instead of transparency; JPEG outputs get white unless given")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per input on stdout (output, size, model, timings)")
    p.add_argument("--local", action="store_true", help="run in this process, without a daemon")
    add_matte_options(p)
    add_connection(p)
    p.set_defaults(run=run)


class ProgressBar:
    """tqdm bar fed by the daemon's progress events (stage shown as the label)."""

    def __init__(self, label: str, enabled: bool = True):
        from tqdm import tqdm
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


@dataclass
class Task:
    source: Path          # "-": stdin
    output: Path          # "-": stdout


def plan(args) -> list[Task]:
    """Inputs and outputs from the positional paths, all checked before any work."""
    paths = list(args.paths)
    ext = "." + (args.format or "png")
    folder = None
    if len(paths) >= 3 or (len(paths) == 2 and paths[1].is_dir()):
        folder = paths.pop()
        if not folder.is_dir():
            raise InvalidInput(f"with several inputs the last path is the output folder; {folder} "
                               + ("is not a folder" if folder.exists() else "does not exist: create it first"))
        if any(is_std(p) for p in paths):
            raise InvalidInput("`-` (stdin) is for a single input; give file names with an output folder")
        tasks = [Task(p, folder / (p.stem + ext)) for p in paths]
    elif len(paths) == 2:
        tasks = [Task(paths[0], paths[1])]
    elif is_std(paths[0]):
        tasks = [Task(paths[0], Path("-"))]
    else:
        src = paths[0]
        tasks = [Task(src, src.with_name(f"{src.stem}.{'matte' if args.mask_only else 'cut'}{ext}"))]
    from ..imaging import imageio
    seen: dict[Path, Path] = {}
    for t in tasks:
        check_input(t.source)
        if not is_std(t.output):
            imageio.output_format(t.output)
        check_output(t.output, [x.source for x in tasks])
        key = t.output.absolute()
        if key in seen:
            raise InvalidInput(f"{seen[key]} and {t.source} would both be written to {t.output}; "
                               "cut them into different folders")
        seen[key] = t.source
        if not is_std(t.source):
            _warn_if_animated(t.source)
    if args.json and any(is_std(t.output) for t in tasks):
        raise InvalidInput("--json prints to stdout, which `-` already uses for the image")
    return tasks


def _warn_if_animated(path: Path) -> None:
    from PIL import Image
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
    except Exception:   # not an image: read() says so properly, in order
        return
    if frames > 1:
        warn(f"{path} is animated ({frames} frames); only the first frame is cut")


def parse_color(text: str) -> tuple[int, int, int]:
    from PIL import ImageColor
    try:
        if text.count(",") == 2:
            rgb = tuple(int(v) for v in text.split(","))
            if all(0 <= v <= 255 for v in rgb):
                return rgb
            raise ValueError
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise InvalidInput(f"--bg-color {text!r}: not a colour; use #rrggbb, R,G,B (0..255) "
                           "or a name such as white") from None


def flatten(fg, matte, rgb):
    """The cut-out over a solid colour: colour = fg * a + bg * (1 - a)."""
    import numpy as np
    top = 65535 if fg.dtype == np.uint16 else 255
    a = (matte.astype(np.float32) / (65535 if matte.dtype == np.uint16 else 255))[..., None]
    bg = np.asarray(rgb, np.float32) * (top / 255)
    return np.clip(np.round(fg * a + bg * (1 - a)), 0, top).astype(fg.dtype)


class Matter:
    """One model for all inputs: the daemon's (one connection) or, --local, this process's."""

    def __init__(self, args):
        self.args, self.model, self.client = args, None, None

    def __call__(self, pixels, opts, progress):
        if self.args.local:
            from ..imaging import formats, pipeline
            if self.model is None:
                from ..models.catalog import Catalog
                from ..models.engine import Engine
                self.model, _ = Engine(Catalog()).load(self.args.model or None)
            fmt = formats.lookup(formats.code_for_array(pixels))
            r = pipeline.run(pixels, fmt, opts, model=self.model, progress=progress)
            return r.matte, r.foreground, {"model_id": self.model.spec.id,
                                           "provider": self.model.provider, "stage_ms": r.stage_ms}
        if self.client is None:
            self.client = connect(self.args)
        r = self.client.matte(pixels, model_id=self.args.model, options=opts, progress=progress)
        return r.matte, r.foreground, r.summary

    def close(self):
        if self.client is not None:
            self.client.close()


def _read(source: Path, tmp: Path):
    from ..imaging import imageio
    if not is_std(source):
        return imageio.read(source)
    data = sys.stdin.buffer.read()
    if not data:
        raise InvalidInput("stdin is empty; pipe an image into `layermatte cut -`")
    path = tmp / "stdin"
    path.write_bytes(data)
    try:
        return imageio.read(path)
    except InvalidInput as e:
        raise InvalidInput(str(e).replace(str(path), "stdin")) from None


def _write(output: Path, pixels, icc, fmt: str, tmp: Path) -> None:
    from ..imaging import imageio
    if not is_std(output):
        imageio.write(output, pixels, icc)
        return
    path = tmp / f"stdout.{fmt}"
    imageio.write(path, pixels, icc)
    sys.stdout.buffer.write(path.read_bytes())
    sys.stdout.buffer.flush()


def cut_one(args, task: Task, matter: Matter, tmp: Path) -> dict:
    import numpy as np
    t0 = time.perf_counter()
    image = _read(task.source, tmp)
    name = "stdin" if is_std(task.source) else task.source.name
    suffix = (args.format or "png") if is_std(task.output) else task.output.suffix.lstrip(".").lower()
    jpeg = suffix in ("jpg", "jpeg")
    pixels = image.pixels
    if jpeg and pixels.dtype == np.uint16:   # JPEG holds 8 bits
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    opts = matte_options(args, return_foreground=not args.mask_only, depth16=pixels.dtype == np.uint16)
    bar = ProgressBar(name, enabled=sys.stderr.isatty() and not args.json)
    try:
        matte, fg, summary = matter(pixels, opts, bar)
    finally:
        bar.close()
    if args.mask_only:
        out = matte
    elif args.bg_color or jpeg:
        out = flatten(fg, matte, parse_color(args.bg_color or "white"))
    else:
        import cv2   # merge: one pass, ~3x numpy's dstack at 4096²
        out = cv2.merge([fg, matte.astype(fg.dtype, copy=False)])
    _write(task.output, out, image.icc_profile, suffix, tmp)
    seconds = time.perf_counter() - t0
    stages = summary.get("stage_ms", {})
    if args.verbose:
        print(f"{name}: {seconds:.2f} s (" + ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items())
              + ")", file=sys.stderr)
    h, w = pixels.shape[:2]
    return {"input": str(task.source), "output": str(task.output), "ok": True, "width": w,
            "height": h, "model": summary.get("model_id", ""), "provider": summary.get("provider", ""),
            "seconds": round(seconds, 3), "stage_ms": {k: round(v, 1) for k, v in stages.items()}}


def run(args) -> int:
    import json
    import tempfile

    from ..errors import TooLarge
    if args.mask_only and args.bg_color:
        raise InvalidInput("--bg-color colours a cut-out; --mask-only writes the matte alone")
    if args.bg_color:
        parse_color(args.bg_color)
    tasks = plan(args)
    matter = Matter(args)
    failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="layermatte-cut-") as tmp:
            for task in tasks:
                try:
                    record = cut_one(args, task, matter, Path(tmp))
                except (InvalidInput, TooLarge) as e:   # this input only: the others go on
                    if len(tasks) == 1:
                        raise
                    failed += 1
                    record = {"input": str(task.source), "output": str(task.output), "ok": False,
                              "error": str(e)}
                    print(f"layermatte: failed {task.source}: {e}", file=sys.stderr)
                if args.json:
                    print(json.dumps(record), flush=True)
                elif record["ok"] and not is_std(task.output):
                    print(f"wrote {task.output}", file=sys.stderr)
    finally:
        matter.close()
    if failed:
        if failed == len(tasks):
            raise LayermatteError(f"all {failed} inputs failed (listed above)")
        print(f"layermatte: {len(tasks) - failed} of {len(tasks)} done, {failed} failed", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
