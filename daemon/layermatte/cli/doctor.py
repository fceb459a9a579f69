"""layermatte doctor: what this machine offers and what is set up."""
from __future__ import annotations

import os
import shutil
import sys


def register(sub):
    p = sub.add_parser("doctor", help="check providers, GPU, cache, daemon and editors",
                       description="Report the ONNX runtime and its providers, the GPU, the model "
                                   "cache, the daemon's folder and state, and the editor plug-ins. "
                                   "Exit code 0 even when something is missing: each line says what to do.")
    p.add_argument("--socket", help="the daemon socket to check (default: $LAYERMATTE_SOCKET or the "
                                    "user's own daemon)")
    p.add_argument("--address", help="a TCP daemon to check instead, such as 127.0.0.1:50051")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the slow checks: the GPU tool and asking the daemon what it has loaded")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=run)


def _gpu() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "no NVIDIA driver tools found"
    import subprocess
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return out.stdout.strip() or out.stderr.strip()


def _runtime_folder(folder) -> str:
    """The daemon's folder must be creatable and writable, or no daemon can start."""
    from ..system import lifecycle
    from ..errors import LayermatteError
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK | os.X_OK):
            return f"{folder} (made on first start)"
        return (f"problem: {folder} cannot be created ({parent} is not writable): set "
                "LAYERMATTE_RUNTIME_DIR to a folder of yours")
    try:
        lifecycle.prepare_folder(folder)
    except LayermatteError as e:
        return f"problem: {e}"
    return str(folder)


def _daemon(args) -> tuple[str, str]:
    from ..system import lifecycle
    from ..transport.rawclient import default_token, probe, resolve_address   # no numpy: cheap
    address = resolve_address(args.socket, args.address)
    if address.startswith("unix:"):
        try:
            lifecycle.check_socket_path(address[len("unix:"):])
        except Exception as e:
            return address, f"problem: {e}"
    token = default_token(address)
    if not probe(address, token=token):
        return address, "not running (it starts on first use, or run `layermatte serve`)"
    pid = None
    if address.startswith("unix:"):
        pid = lifecycle.running_pid(lifecycle.files_for(address[len("unix:"):]))
    state = "running" + (f" (pid {pid})" if pid else "")
    if args.no_probe:
        return address, state
    from ..transport.client import Client
    with Client(address, token=token, timeout=10) as c:
        loaded = [f"{m['id']} on {m['provider']}" for m in c.list_models() if m["loaded"]]
    return address, f"{state}; loaded: " + (", ".join(loaded) or "nothing yet")


def _editors() -> list[tuple[str, str]]:
    from .. import __version__
    from ..system import plugin_install
    rows = []
    for editor in ("gimp", "krita"):
        found = plugin_install.report(editor)
        for r in found:
            state = (f"plug-in {r['version']}" + ("" if r["current"] else f" (this is {__version__}: run "
                     f"`layermatte install {editor}` again)")) if r["installed"] else "plug-in not installed"
            rows.append((r["label"], f"{state}; {r['folder']}"))
        if not found:
            rows.append(({"gimp": "GIMP", "krita": "Krita"}[editor], f"no profile found (`layermatte install {editor}` after the first start)"))
    return rows


def run(args) -> int:
    from .. import __version__
    from ..system import platforms
    from ..models.catalog import Catalog
    from ..models.providers import choose_provider, runtime_info
    from ..errors import LayermatteError
    rows = [("layermatte", __version__), ("python", sys.version.split()[0])]
    try:
        version, available = runtime_info()
        rows += [("onnxruntime", version), ("providers available", ", ".join(available))]
        name, why = choose_provider(None, available)
        rows.append(("provider chosen", f"{name} ({why})"))
    except LayermatteError:
        rows.append(("onnxruntime", "problem: not installed: pip install 'layermatte[cpu]' (or [gpu])"))
    if not args.no_probe:
        rows.append(("GPU", _gpu()))
    cat = Catalog()
    rows.append(("model cache", str(cat.cache)))
    pulled = [s.id for s in cat.entries() if cat.is_pulled(s)]
    rows.append(("models pulled", ", ".join(pulled) or "none (run `layermatte models pull`)"))
    rows.append(("runtime dir", _runtime_folder(platforms.runtime_dir())))
    address, state = _daemon(args)
    rows += [("daemon address", address), ("daemon", state)]
    rows += _editors()
    if args.json:
        import json
        print(json.dumps({"checks": [{"name": k, "value": v, "problem": v.startswith("problem:")}
                                     for k, v in rows]}, indent=2))
        return 0
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
