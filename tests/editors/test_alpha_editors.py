"""Layers with transparency in real GIMP and Krita (issue 20, point 3): the mask keeps what the layer
shows. Runs in the newest root of each editor only (root.NEWEST: GIMP 3.2 in forky, Krita 6 in
krita6); the pipeline rule itself is the same for every client and is covered in tests/test_alpha.py.

Two layers as RGBA PNG files: a flat-colour logo (one colour everywhere, the shape only in alpha: the
stored colours show no shape; before the fix its mask was empty) and the astronaut cut out by the
model's own matte with random colours under the transparent pixels.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from root import NEWEST, ROOTS, bind, editor_root, run_in_root
from test_gimp import BATCH_HEAD, _gimp_batch

pytestmark = pytest.mark.editor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_alpha import assert_keeps_what_it_shows, flat_layer  # noqa: E402


@pytest.fixture(scope="module")
def layers(daemon, photos) -> dict[str, np.ndarray]:
    rgb = photos["astronaut"]
    with daemon.client() as c:
        subject = c.matte(rgb).matte > 127
    cut = np.dstack([rgb, np.where(subject, 255, 0).astype(np.uint8)])
    cut[~subject, :3] = np.random.default_rng(20).integers(0, 256, (int((~subject).sum()), 3))
    return {"logo": flat_layer((220, 30, 30)), "cutout": cut}


def _inputs(d: Path, layers: dict) -> None:
    for name, arr in layers.items():
        Image.fromarray(arr, "RGBA").save(d / f"{name}.png")


def _installed(editor: str, dest: Path) -> None:
    exe = Path(sys.executable).with_name("layermatte")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "layermatte"]
    p = subprocess.run(cmd + ["install", editor, "--dest", str(dest)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


GIMP_BODY = r'''
@case
def alpha():
    out = {}
    for n in ('logo', 'cutout'):
        img = load(n + '.png'); L = img.get_layers()[0]
        out[n] = {'has_alpha': L.has_alpha(), 'w': L.get_width(), 'h': L.get_height(),
                  'remove': run(REMOVE, img, [L])}
        out[n]['mask'] = dump(n + '-mask', L.get_mask(), 'Y u8') if L.get_mask() else None
    return out
'''


def test_gimp_layer_with_alpha_keeps_what_it_shows(daemon, layers, tmp_path_factory):
    root = NEWEST["gimp"]
    editor_root(root)
    d = tmp_path_factory.mktemp("gimp-alpha")
    d.chmod(0o755)
    home = d / "home"
    config = home / ".config" / "GIMP" / ROOTS[root].gimp
    plugdir = config / "plug-ins" / "layermatte"
    _installed("gimp", plugdir.parent)
    (plugdir / "layermatte_lite.json").write_text(json.dumps({"socket": str(daemon.socket)}))
    (config / "gimprc").write_text("(show-welcome-dialog no)\n")
    _inputs(d, layers)
    with bind(d, root=root), bind(daemon.workdir, root=root):
        res = _gimp_batch(root, d, "alpha", GIMP_BODY, home, {"LAYERMATTE_SOCKET": str(daemon.socket)})
    for name, want in layers.items():
        r = res["alpha"][name]
        assert r["has_alpha"] and r["remove"]["status"] == "success", r
        mask = np.frombuffer((d / r["mask"]).read_bytes(), np.uint8).reshape(r["h"], r["w"])
        assert_keeps_what_it_shows(mask, want[..., 3])


KRITA_DRIVER = r'''
import json, os, traceback
from krita import Krita

def main(args):
    D = args[0]
    R = {}
    app = Krita.instance()
    app.setBatchmode(True)
    try:
        import layermatte_krita
        for n in ("logo", "cutout"):
            doc = app.openDocument(os.path.join(D, n + ".png"))
            doc.setBatchmode(True)
            node = doc.rootNode().childNodes()[0]
            r = node.bounds()
            box = [r.x(), r.y(), r.width(), r.height()]
            mask = layermatte_krita.generate_mask(doc, node)
            doc.waitForDone()
            open(os.path.join(D, n + ".mask"), "wb").write(bytes(mask.pixelData(*box)))
            R[n] = {"bounds": box, "mask_type": mask.type()}
            doc.close()
    except Exception:
        R["error"] = traceback.format_exc()
    R["finished"] = True
    json.dump(R, open(os.path.join(D, "results.json"), "w"))
'''


def test_krita_layer_with_alpha_keeps_what_it_shows(daemon, layers):
    root = NEWEST["krita"]
    editor_root(root)
    work = Path(tempfile.mkdtemp(prefix="lmk-alpha-", dir="/tmp"))
    work.chmod(0o755)
    home = work / "home"
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    _installed("krita", pykrita)
    _inputs(work, layers)
    (work / "lm_alpha.py").write_text(KRITA_DRIVER)
    with bind(work, root=root), bind(daemon.socket.parent, root=root):
        p = run_in_root(["kritarunner", "-s", "lm_alpha", "-f", "main", str(work)], home=home, root=root,
                        env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": f"{work}:{pykrita}",
                             "LAYERMATTE_SOCKET": str(daemon.socket)}, timeout=600)
    results = work / "results.json"
    assert results.exists(), f"kritarunner wrote no results:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    r = json.loads(results.read_text())
    assert r.get("finished") and "error" not in r, r.get("error")
    for name, want in layers.items():
        x, y, w, h = r[name]["bounds"]
        assert r[name]["mask_type"] == "transparencymask"
        mask = np.frombuffer((work / f"{name}.mask").read_bytes(), np.uint8).reshape(h, w)
        full = np.zeros(want.shape[:2], np.uint8)   # Krita bounds a layer by its non-transparent pixels
        full[y:y + h, x:x + w] = mask
        assert_keeps_what_it_shows(full, want[..., 3])
