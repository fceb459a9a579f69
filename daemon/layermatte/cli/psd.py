"""layermatte psd: the daemon's mattes written as layer masks of a Photoshop document."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InvalidInput
from .common import (add_connection, add_matte_options, check_input, check_output, connect,
                     matte_options)

EXIT_SKIPPED = 3


def register(sub):
    p = sub.add_parser("psd", help="add AI layer masks to the layers of a PSD/PSB file",
                       description="For each chosen pixel layer, send its pixels to the daemon and write "
                                   "the matte as that layer's layer mask. Everything else is kept. "
                                   "The merged composite (what previews and viewers show) is re-rendered "
                                   "only when psd-tools reproduces the file's own composite; otherwise it "
                                   "is kept as stored (showing the document without the new masks) and "
                                   "the output says which. "
                                   f"Exit code 0: all done; {EXIT_SKIPPED}: some layers were skipped "
                                   "(listed); 2: error, nothing written.")
    p.add_argument("input", type=Path, nargs="?", help="input .psd or .psb")
    p.add_argument("output", type=Path, nargs="?", help="output file (omit with --in-place)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--layers", nargs="+", action="extend", metavar="NAME",
                     help="layers to mask, by name or Group/Layer path (the files may follow: "
                          "trailing .psd/.psb names are taken as INPUT and OUTPUT)")
    sel.add_argument("--all", action="store_true", help="every pixel layer (default)")
    sel.add_argument("--visible", action="store_true", help="visible pixel layers only")
    p.add_argument("--replace-masks", action="store_true",
                   help="replace existing layer masks (default: skip layers that have one)")
    p.add_argument("--in-place", action="store_true",
                   help="overwrite INPUT, keeping a backup (NAME.bak.psd)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (output, masked and skipped layers, what the composite "
                        "shows) to stdout")
    add_matte_options(p, decontaminate=None)   # masks only: no colours are written
    add_connection(p)
    p.set_defaults(run=run)


class LayerBar:
    """tqdm bar over layers; the daemon's stage of the current layer as postfix."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="layer", disable=not self.enabled, leave=False)

    def progress(self, label: str, stage: str, fraction: float) -> None:
        if self.bar is not None:
            self.bar.set_description_str(label, refresh=False)
            self.bar.set_postfix_str(stage)

    def layer_done(self, outcome) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _files_after_layers(args) -> None:
    """`--layers A B in.psd out.psd`: argparse gave the files to --layers."""
    if args.input is not None or not args.layers:
        return
    files = []
    while args.layers and Path(args.layers[-1]).suffix.lower() in (".psd", ".psb") and len(files) < 2:
        files.insert(0, Path(args.layers.pop()))
    if not files or not args.layers:
        raise InvalidInput("give the input file: `layermatte psd IN.psd OUT.psd --layers NAME...`")
    args.input = files[0]
    if len(files) == 2:
        if args.output is not None:
            raise InvalidInput(f"too many files: {files[0]}, {files[1]} and {args.output}")
        args.output = files[1]


def run(args) -> int:
    from ..psd import document as psd  # psd-tools loads only when this command runs
    _files_after_layers(args)
    if args.input is None:
        raise InvalidInput("give the input file: `layermatte psd IN.psd OUT.psd`")
    check_input(args.input)
    if args.output is not None:
        check_output(args.output, [args.input])
    from ..jobs.batch import DaemonMatter
    mode = "names" if args.layers else "visible" if args.visible else "all"
    matter = DaemonMatter(lambda: connect(args), model_id=args.model)
    bar = LayerBar(enabled=sys.stderr.isatty() and not args.json)
    try:
        result = psd.process(args.input, args.output, matter, matte_options(args, return_foreground=False),
                             mode=mode, names=args.layers or (), replace_masks=args.replace_masks,
                             in_place=args.in_place, progress=bar.progress, on_layer=bar.layer_done,
                             on_plan=bar.start)
    finally:
        bar.close()
        matter.close()
    for o in result.skipped:
        print(f"skipped layer {o.label!r}: {o.reason}", file=sys.stderr)
    n = len(result.masked)
    note = f" (backup: {result.backup})" if result.backup else ""
    print(f"wrote {result.output}: {n} layer mask{'s' if n != 1 else ''} added, "
          f"{len(result.skipped)} layer{'s' if len(result.skipped) != 1 else ''} skipped{note}; "
          f"{result.composite}", file=sys.stderr)
    if args.json:
        import json
        print(json.dumps({"input": str(args.input), "output": str(result.output),
                          "backup": str(result.backup) if result.backup else None,
                          "masked": [{"layer": o.label, "mask": o.slot} for o in result.outcomes if o.masked],
                          "skipped": [{"layer": o.label, "reason": o.reason} for o in result.skipped],
                          "composite": {"rerendered": result.composite_rerendered,
                                        "detail": result.composite}}), flush=True)
    return EXIT_SKIPPED if result.skipped else 0
