"""PSDs written by `layermatte psd` opened in real GIMP 3 and real Krita 5 (Debian trixie root,
headless): the layer masks are there, where they belong, with the daemon's matte as pixels.

One module fixture does the work: builds an 8-bit and a 16-bit PSD from real photos with
psd-tools (offsets on and off the canvas, a group, a hidden layer, an existing offset mask),
runs the real CLI against the real daemon, then one GIMP batch and one kritarunner call dump
every layer and mask they see.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from layermatte.imaging.pipeline import MatteOptions
from root import bind, editor_root, run_in_root

pytestmark = pytest.mark.editor

CANVAS = (400, 300)
MASKED = ("photo", "cat", "coffee")

GIMP_BATCH = r'''
import json, traceback
import gi
gi.require_version('Gimp', '3.0')
gi.require_version('Gegl', '0.4')
from gi.repository import Gimp, Gegl, Gio
out = {}

def dump(dr, fmt, fn):
    rect = Gegl.Rectangle.new(0, 0, dr.get_width(), dr.get_height())
    open(D + '/' + fn, 'wb').write(bytes(dr.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)))
    return fn

def walk(layers, prefix, tag, fmt):
    for L in layers:
        name = prefix + L.get_name()
        _, ox, oy = L.get_offsets()
        rec = {'w': L.get_width(), 'h': L.get_height(), 'offsets': [ox, oy], 'visible': L.get_visible(),
               'group': L.is_group(), 'mask': None}
        if L.get_mask() is not None:
            rec['mask'] = dump(L.get_mask(), fmt, 'gimp-%s-%s.raw' % (tag, name.replace('/', '_')))
        out[tag]['layers'][name] = rec
        if L.is_group():
            walk(L.get_children(), name + '/', tag, fmt)

for tag, fn, fmt in (('8', 'out8.psd', 'Y u8'), ('16', 'out16.psd', 'Y u16')):
    try:
        img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(D + '/' + fn))
        out[tag] = {'precision': img.get_precision().value_nick, 'size': [img.get_width(), img.get_height()],
                    'layers': {}}
        walk(img.get_layers(), '', tag, fmt)
        img.delete()
    except Exception:
        out[tag] = {'error': traceback.format_exc()}
open(D + '/gimp.json', 'w').write(json.dumps(out))
'''

KRITA_MODULE = r'''
import json, traceback

def main(args):
    d, = args
    jobs = json.load(open(d + '/krita-jobs.json'))
    out = {}
    try:
        from krita import Krita
        app = Krita.instance()
        for tag, job in jobs.items():
            doc = app.openDocument(d + '/' + job['file'])
            res = out[tag] = {'size': [doc.width(), doc.height()], 'depth': doc.colorDepth(), 'layers': {}}

            def walk(node, prefix):
                for n in node.childNodes():
                    if n.type() == 'transparencymask':
                        continue
                    name = prefix + n.name()
                    masks = [c for c in n.childNodes() if c.type() == 'transparencymask']
                    rec = res['layers'][name] = {'type': n.type(), 'visible': n.visible(), 'masks': len(masks)}
                    if masks and name in job['rects']:
                        x, y, w, h = job['rects'][name]
                        fn = 'krita-%s-%s.raw' % (tag, name.replace('/', '_'))
                        open(d + '/' + fn, 'wb').write(bytes(masks[0].pixelData(x, y, w, h)))
                        rec['mask'] = fn
                    walk(n, name + '/')
            walk(doc.rootNode(), '')
            doc.close()
    except Exception:
        out['error'] = traceback.format_exc()
    open(d + '/krita.json', 'w').write(json.dumps(out))
'''


def build(path: Path, photos, depth: int) -> dict:
    """Layers: photo (RGB, canvas corner), cat (RGBA, runs off the canvas), grp/coffee (hidden,
    negative offset), masked (existing mask smaller than the layer, offset from it)."""
    to = (lambda a: a.astype(np.uint16) * 257) if depth == 16 else (lambda a: a)
    opaque = lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])  # noqa: E731
    src = {"photo": (photos["astronaut"][::2, ::2], 0, 0),
           "cat": (opaque(photos["cat"][:200, :250]), 150, 230),
           "coffee": (opaque(photos["coffee"][::2, ::2][:150, :200]), -30, -40),
           "masked": (np.ascontiguousarray(photos["astronaut"][200:320, 100:240]), 160, 40)}
    psd = PSDImage.new("RGB", CANVAS, depth=depth)
    for name in ("photo", "cat"):
        arr, top, left = src[name]
        psd.create_pixel_layer_from_array(to(arr), name=name, top=top, left=left)
    arr, top, left = src["coffee"]
    group = psd.create_group(name="grp")
    group.create_pixel_layer_from_array(to(arr), name="coffee", top=top, left=left).visible = False
    arr, top, left = src["masked"]
    masked = psd.create_pixel_layer_from_array(to(arr), name="masked", top=top, left=left)
    masked.create_mask(Image.fromarray(np.tile(np.linspace(40, 230, 90, dtype=np.uint8), (70, 1))),
                       top=top + 20, left=left + 30)
    psd.save(path)
    return {k: (to(a), t, x) for k, (a, t, x) in src.items()}


def clip(top: int, left: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a layer rectangle inside the canvas."""
    return max(top, 0), max(left, 0), min(top + h, CANVAS[1]), min(left + w, CANVAS[0])


@pytest.fixture(scope="module")
def editors(daemon, photos, tmp_path_factory):
    editor_root()  # skips with the reason when the root cannot be built here
    d = tmp_path_factory.mktemp("psd-editors")
    d.chmod(0o755)
    res = {"dir": d, "src": {}, "want": {}}
    for depth in (8, 16):
        src = build(d / f"in{depth}.psd", photos, depth)
        p = subprocess.run([sys.executable, "-m", "layermatte", "psd", str(d / f"in{depth}.psd"),
                            str(d / f"out{depth}.psd"), "--socket", str(daemon.socket), "--no-autostart"],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 3 and "'masked': already has a layer mask" in p.stderr, p.stderr
        res["src"][depth] = src
        with daemon.client() as c:
            res["want"][depth] = {n: c.matte(src[n][0], options=MatteOptions(depth16=depth == 16)).matte
                                  for n in MASKED}
    # Krita reads a mask over any rectangle: ask for each layer's on-canvas part.
    rects = {"grp/coffee" if n == "coffee" else n: (x0, y0, x1 - x0, y1 - y0)
             for n, (a, top, left) in res["src"][8].items()
             for y0, x0, y1, x1 in [clip(top, left, *a.shape[:2])]}
    (d / "krita-jobs.json").write_text(json.dumps({t: {"file": f"out{t}.psd", "rects": rects} for t in ("8", "16")}))
    (d / "gimp_batch.py").write_text(f"D = {str(d)!r}\n" + GIMP_BATCH)
    (d / "psdcheck.py").write_text(KRITA_MODULE)
    with bind(d):
        g = run_in_root(["gimp-console-3.0", "-i", "--quit", "--batch-interpreter=python-fu-eval",
                         "-b", f"exec(open('{d}/gimp_batch.py').read())"], home=d / "home", timeout=300)
        k = run_in_root(["kritarunner", "-s", "psdcheck", "-f", "main", str(d)], home=d / "home",
                        env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(d)}, timeout=300)
    for name, p in (("gimp", g), ("krita", k)):
        log = f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-4000:]}"
        assert (d / f"{name}.json").is_file(), f"{name} wrote no results:\n{log}"
        res[name] = json.loads((d / f"{name}.json").read_text())
        res[name + "_log"] = log
    yield res
    shutil.rmtree(d, ignore_errors=True)


def expected_region(res, depth: int, name: str) -> np.ndarray:
    """What the mask must hold over the layer's on-canvas rectangle."""
    arr, top, left = res["src"][depth][name]
    h, w = arr.shape[:2]
    if name in MASKED:
        full = res["want"][depth][name].astype(np.float64)
    else:  # the existing mask, kept: ramp at its own offset, background 0 around it
        scale = 257.0 if depth == 16 else 1.0
        ramp = np.tile(np.linspace(40, 230, 90, dtype=np.uint8), (70, 1)).astype(np.float64) * scale
        full = np.zeros((h, w))
        full[20:90, 30:120] = ramp
    y0, x0, y1, x1 = clip(top, left, h, w)
    return full[y0 - top:y1 - top, x0 - left:x1 - left]


@pytest.mark.parametrize("depth", [8, 16])
def test_gimp_opens_layer_masks(editors, depth):
    g = editors["gimp"][str(depth)]
    assert "error" not in g, g.get("error", "") + editors["gimp_log"]
    assert g["size"] == list(CANVAS) and g["precision"].startswith(f"u{depth}")
    layers = g["layers"]
    assert set(layers) == {"photo", "cat", "grp", "grp/coffee", "masked"}
    assert layers["grp"]["group"] and not layers["grp/coffee"]["visible"]
    dtype, tol = (np.uint8, 1) if depth == 8 else (np.uint16, 257)
    for name in ("photo", "cat", "grp/coffee", "masked"):
        rec, short = layers[name], name.split("/")[-1]
        arr, top, left = editors["src"][depth][short]
        assert rec["mask"], f"GIMP sees no mask on {name}"
        mask = np.frombuffer((editors["dir"] / rec["mask"]).read_bytes(), dtype).reshape(rec["h"], rec["w"])
        ox, oy = rec["offsets"]
        # GIMP may crop a layer to the canvas on import: compare the on-canvas part.
        y0, x0, y1, x1 = clip(top, left, *arr.shape[:2])
        got = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(np.float64)
        assert np.abs(got - expected_region(editors, depth, short)).max() <= tol, name


@pytest.mark.parametrize("depth", [8, 16])
def test_krita_opens_layer_masks(editors, depth):
    k = editors["krita"]
    assert "error" not in k, k.get("error", "") + editors["krita_log"]
    doc = k[str(depth)]
    assert doc["size"] == list(CANVAS) and doc["depth"] == f"U{depth}"
    layers = doc["layers"]
    assert layers["grp"]["type"] == "grouplayer" and not layers["grp/coffee"]["visible"]
    for name in ("photo", "cat", "grp/coffee", "masked"):
        short = name.split("/")[-1]
        assert layers[name]["masks"] == 1 and layers[name].get("mask"), f"Krita sees no mask on {name}"
        # Krita keeps every transparency mask at 8 bits (Alpha8), whatever the image depth.
        want = expected_region(editors, depth, short) / (257.0 if depth == 16 else 1.0)
        got = np.frombuffer((editors["dir"] / layers[name]["mask"]).read_bytes(), np.uint8).reshape(want.shape)
        assert np.abs(got.astype(np.float64) - want).max() <= 1.0, name
