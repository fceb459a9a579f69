"""layermatte batch: every image of a folder tree through the daemon, resumable."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InvalidInput
from .common import add_connection, add_matte_options, connect, matte_options

EXIT_FAILURES = 3
FORMATS = ("png", "webp", "tiff", "psd")  # batch.OUTPUT_SUFFIX; not imported here to keep --help fast


def _folder(s: str):
    return s if "://" in s else Path(s)   # URLs (s3://...) are for --ray; Path would mangle them


def register(sub):
    p = sub.add_parser("batch", help="remove the background of every image in a folder (recursive)",
                       description="Cut out every image under INPUT_DIR into OUTPUT_DIR, keeping relative "
                                   "paths. Outputs that already exist are skipped (resume) unless --force. "
                                   f"Exit code 0: all done; {EXIT_FAILURES}: some images failed (listed); "
                                   "2: error.")
    p.add_argument("input_dir", type=_folder, help="folder of images (searched recursively)")
    p.add_argument("output_dir", type=_folder, nargs="?",
                   help="where the outputs go, same relative paths (made if missing; its parent must exist)")
    p.add_argument("--format", choices=FORMATS, default="png",
                   help="png/webp/tiff cut-outs, or psd: original + masked cut-out layer (default: png)")
    p.add_argument("--mask-only", action="store_true", help="write grayscale mattes instead of cut-outs")
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="requests in flight at once; the daemon queues them (default: 2)")
    p.add_argument("--force", action="store_true", help="redo images whose output exists")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (pip install 'layermatte[ray]'), ADDRESS as ray.init takes it "
                        "(auto, HOST:6379, ray://HOST:10001); none: a local Ray instance. Folders may then "
                        "be s3:// (or other pyarrow/fsspec) URLs. `--ray IN OUT` is a local Ray instance")
    add_matte_options(p)
    add_connection(p)
    p.set_defaults(run=run)


def _folders(args) -> None:
    """`--ray IN OUT`: argparse gave IN to --ray as its address; it is a folder."""
    if args.output_dir is None:
        if not args.ray:
            raise InvalidInput("give INPUT_DIR and OUTPUT_DIR (see `layermatte batch --help`)")
        args.input_dir, args.output_dir, args.ray = _folder(args.ray), args.input_dir, ""


def _check_local(args) -> None:
    """Before any work: the input is a folder, the output can be made and written."""
    from .common import check_output
    if not args.input_dir.is_dir():
        raise InvalidInput(f"{args.input_dir} is " + ("a file, not a folder (`layermatte cut` does files)"
                                                      if args.input_dir.exists() else "not there: no such folder"))
    out = args.output_dir
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} is a file, not a folder; choose another OUTPUT_DIR")
    check_output(out / "x" if out.is_dir() else out)   # the folder it is in, or that it makes


def run(args) -> int:
    from tqdm import tqdm

    _folders(args)
    if args.mask_only and args.format == "psd":
        raise InvalidInput("--mask-only writes grayscale images; use --format png, webp or tiff")
    if args.ray is not None:
        if args.mask_only:
            raise InvalidInput("--mask-only is not available with --ray yet")
        from ..jobs import raybatch
        return raybatch.main(args, matte_options(args, return_foreground=True))
    if isinstance(args.input_dir, str) or isinstance(args.output_dir, str):
        raise InvalidInput("URL folders need --ray")
    _check_local(args)
    from ..jobs import batch
    from ..jobs.batch import DaemonMatter
    jobs = batch.plan(args.input_dir, args.output_dir, args.format)
    if not jobs:
        print(f"batch: no images under {args.input_dir}", file=sys.stderr)
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    matter = DaemonMatter(lambda: connect(args), model_id=args.model)
    bar = tqdm(total=len(jobs), unit="img", disable=not sys.stderr.isatty(), leave=False)
    failures = [0]

    def on_outcome(o: batch.Outcome) -> None:
        if o.status == "failed":
            failures[0] += 1
            bar.set_postfix_str(f"{failures[0]} failed")
        bar.update(1)

    try:
        summary = batch.run(jobs, matter, args.format, matte_options(args, return_foreground=True),
                            workers=args.jobs, force=args.force, on_outcome=on_outcome,
                            mask_only=args.mask_only)
    finally:
        bar.close()
        matter.close()
    for o in summary.failed:
        print(f"failed {o.job.relative}: {o.error}", file=sys.stderr)
    print(f"batch: {summary.line()} (of {len(jobs)}) -> {args.output_dir}", file=sys.stderr)
    if summary.aborted:
        print(f"layermatte: error: batch stopped: {summary.aborted}", file=sys.stderr)
        return 2
    return EXIT_FAILURES if summary.failed else 0
