"""layermatte doctor: what this machine offers and what is set up."""
from __future__ import annotations

import shutil

import onnxruntime as ort

from .. import __version__, paths
from ..catalog import Catalog
from ..client import Client, resolve_address
from ..engine import choose_provider
from ..errors import LayermatteError
from ..server import probe


def register(sub):
    p = sub.add_parser("doctor", help="check providers, GPU, cache, daemon and editors")
    p.add_argument("--socket")
    p.add_argument("--address")
    p.set_defaults(run=run)


def _gpu() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "no NVIDIA driver tools found"
    import subprocess
    out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or out.stderr.strip()


def run(args) -> int:
    rows = [("layermatte", __version__), ("onnxruntime", ort.__version__),
            ("providers available", ", ".join(ort.get_available_providers()))]
    try:
        name, why = choose_provider(None)
        rows.append(("provider chosen", f"{name} ({why})"))
    except LayermatteError as e:
        rows.append(("provider chosen", f"error: {e}"))
    rows.append(("GPU", _gpu()))
    cat = Catalog()
    rows.append(("model cache", str(cat.cache)))
    pulled = [s.id for s in cat.entries() if cat.is_pulled(s)]
    rows.append(("models pulled", ", ".join(pulled) or "none (run `layermatte models pull`)"))
    address = resolve_address(args.socket, args.address)
    rows.append(("daemon address", address))
    if probe(address):
        with Client(address, timeout=10) as c:
            loaded = [f"{m['id']} on {m['provider']}" for m in c.list_models() if m["loaded"]]
        rows.append(("daemon", "running; loaded: " + (", ".join(loaded) or "nothing yet")))
    else:
        rows.append(("daemon", "not running (it starts on first use, or run `layermatte serve`)"))
    from .. import plugin_install
    for editor in ("gimp", "krita"):
        found = plugin_install.report(editor)
        for r in found:
            state = (f"plug-in {r['version']}" + ("" if r["current"] else f" (this is {__version__}: run "
                     f"`layermatte install {editor}` again)")) if r["installed"] else "plug-in not installed"
            rows.append((r["label"], f"{state}; {r['folder']}"))
        if not found:
            rows.append((editor, f"no profile found (`layermatte install {editor}` after the first start)"))
    rows.append(("runtime dir", str(paths.runtime_dir())))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
