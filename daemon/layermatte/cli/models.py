"""layermatte models list|pull|verify|path|add."""
from __future__ import annotations

from pathlib import Path


def register(sub):
    p = sub.add_parser("models", help="list, download and check models")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="catalogue with local state")
    ls.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    some = "catalogue id (default: the default model)"
    pull = msub.add_parser("pull", help="download and verify a model (default: the default model)")
    pull.add_argument("id", nargs="?", help=some)
    pull.add_argument("--force", action="store_true", help="download again even if cached")
    pull.add_argument("--allow-unverified", action="store_true",
                      help="accept a model without a published sha256 and pin its hash")
    verify = msub.add_parser("verify", help="re-check a cached model's sha256")
    verify.add_argument("id", nargs="?", help=some)
    path = msub.add_parser("path", help="print a model's file path")
    path.add_argument("id", nargs="?", help=some)
    add = msub.add_parser("add", help="register your own ONNX file")
    add.add_argument("id", help="the id to give it (letters, digits, - and _)")
    add.add_argument("onnx", type=Path, help="the .onnx file (copied into the model cache)")
    add.add_argument("--size", type=int, default=1024, help="square input size")
    add.add_argument("--mean", type=float, nargs=3, default=(128.0, 128.0, 128.0), help="0..255 units")
    add.add_argument("--std", type=float, nargs=3, default=(256.0, 256.0, 256.0), help="0..255 units")
    add.add_argument("--output", choices=["none", "sigmoid", "minmax"], default="none",
                     help="what the model's output needs to become a 0..1 matte (default: none)")
    p.set_defaults(run=run)


def _list(cat, as_json: bool) -> None:
    rows = [{"id": s.id, "default": s.id == cat.default_id, "pulled": cat.is_pulled(s),
             "size_bytes": s.size_bytes or None, "license": s.license, "title": s.title} for s in cat.entries()]
    if as_json:
        import json
        print(json.dumps(rows, indent=2))
        return
    # Columns as wide as their longest entry: nothing is cut (a licence is worth reading whole).
    table = [(r["id"] + ("*" if r["default"] else ""), "pulled" if r["pulled"] else "-",
              f"{r['size_bytes'] / 1e6:.0f} MB" if r["size_bytes"] else "?", r["license"], r["title"])
             for r in rows]
    head = ("ID", "STATE", "SIZE", "LICENCE", "TITLE")
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(4)]
    for row in [head, *table]:
        print("  ".join(f"{v:>{w}}" if i == 2 else f"{v:<{w}}" for i, (v, w) in enumerate(zip(row, widths)))
              + "  " + row[4])
    print("* default model")


def run(args) -> int:
    from ..models.catalog import Catalog, Preprocess
    cat = Catalog()
    if args.action == "list":
        _list(cat, args.json)
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
