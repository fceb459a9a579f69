"""layermatte models list|pull|verify|path|add."""
from __future__ import annotations

from pathlib import Path

from ..catalog import Catalog, Preprocess


def register(sub):
    p = sub.add_parser("models", help="list, download and check models")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="catalogue with local state")
    pull = msub.add_parser("pull", help="download and verify a model (default: the default model)")
    pull.add_argument("id", nargs="?")
    pull.add_argument("--force", action="store_true", help="download again even if cached")
    pull.add_argument("--allow-unverified", action="store_true",
                      help="accept a model without a published sha256 and pin its hash")
    verify = msub.add_parser("verify", help="re-check a cached model's sha256")
    verify.add_argument("id", nargs="?")
    path = msub.add_parser("path", help="print a model's file path")
    path.add_argument("id", nargs="?")
    add = msub.add_parser("add", help="register your own ONNX file")
    add.add_argument("id")
    add.add_argument("onnx", type=Path)
    add.add_argument("--size", type=int, default=1024, help="square input size")
    add.add_argument("--mean", type=float, nargs=3, default=(128.0, 128.0, 128.0), help="0..255 units")
    add.add_argument("--std", type=float, nargs=3, default=(256.0, 256.0, 256.0), help="0..255 units")
    add.add_argument("--output", choices=["none", "sigmoid", "minmax"], default="none")
    p.set_defaults(run=run)


def run(args) -> int:
    cat = Catalog()
    if args.action == "list":
        print(f"{'ID':24} {'STATE':8} {'SIZE':>9}  {'LICENCE':34} TITLE")
        for s in cat.entries():
            state = "pulled" if cat.is_pulled(s) else "-"
            mark = "*" if s.id == cat.default_id else " "
            size = f"{s.size_bytes / 1e6:.0f} MB" if s.size_bytes else "?"
            print(f"{s.id + mark:24} {state:8} {size:>9}  {s.license[:34]:34} {s.title}")
        print("* default model")
    elif args.action == "pull":
        path = cat.pull(args.id, force=args.force, allow_unverified=args.allow_unverified)
        print(f"{cat.get(args.id).id}: {path}")
    elif args.action == "verify":
        digest = cat.verify(args.id)
        print(f"{cat.get(args.id).id}: ok (sha256 {digest})")
    elif args.action == "path":
        print(cat.path(cat.get(args.id)))
    elif args.action == "add":
        if not args.onnx.is_file():
            from ..errors import InvalidInput
            raise InvalidInput(f"{args.onnx}: no such file")
        spec = cat.add_custom(args.id, args.onnx, Preprocess(
            input_size=args.size, mean=tuple(args.mean), std=tuple(args.std), output=args.output))
        print(f"added {spec.id} -> {spec.source.path}")
    return 0
