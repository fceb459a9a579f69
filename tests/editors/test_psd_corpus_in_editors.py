"""`layermatte psd --replace-masks` on the real Photoshop files of ../shared/psd-corpus, opened in
real GIMP and Krita (headless, in the Debian roots): what each editor shows as the replaced layer's
mask, and that every other layer shows the same mask as when the input file is opened.

Cases (one layer or two replaced per file, the rest left as controls):
- mask-density-layervectormask.psd: pixel mask + vector mask (a real/user pair), "Layer 1" with
  mask density, "Layer 1 copy 3" without mask parameters; "Layer 1 copy"/"copy 2" untouched;
- mask_parameters.psd: a real/user pair with density and feather for both masks ("Rectangle 1");
- mask.psd: a plain pixel mask ("Background copy").

What the editors show, found by running them (2026-12):
- GIMP 3.0 and 3.2 show channel -2, never -3. Beside a vector mask, Photoshop's -2 is the pixel
  mask (-3) clipped by the vector mask (flags bit 3, "rendered"), so layermatte renders -2 again
  from the new matte (psd/masks.py): GIMP shows the daemon's matte where the vector mask covers the
  layer and 0 where it does not. Density and feather are not applied (GIMP shows the raw mask).
- Krita 5.2, 5.3 and 6.0 do not open either real/user-pair file at all -- the inputs as saved by
  Photoshop no more than the outputs ("Could not read extra blending data": Krita reads the mask
  parameters before the real-mask fields, Photoshop writes them after). So Krita is checked to
  treat input and output alike, and on mask.psd to show the daemon's matte as a transparency mask.

Editor time: one GIMP batch and one kritarunner call per root for all files (inputs and outputs).
Every check runs on the newest editors (forky: GIMP 3.2 and Krita 5.3; krita6: Krita 6) and on
Krita 5.2 (trixie: one kritarunner call, the same checks); GIMP 3.0 (trixie) is a smoke run: the
real/user-pair output only.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from psd_tools import PSDImage

from root import bind, editor_root, run_in_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psd_bytecheck as B  # noqa: E402
from layermatte.psd import document  # noqa: E402
from layermatte.psd import sections as S  # noqa: E402

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "psd-corpus" / "tests" / "psd_files"
pytestmark = [pytest.mark.editor, pytest.mark.skipif(not CORPUS.is_dir(),
                                                     reason=f"PSD corpus not found at {CORPUS} (../shared is absent)")]
CASES = {"pair": ("mask-density-layervectormask.psd", ["Layer 1", "Layer 1 copy 3"]),
         "params": ("mask_parameters.psd", ["Rectangle 1"]),
         "user": ("mask.psd", ["Background copy"])}
# root -> (files GIMP opens, files Krita opens); None: that editor is not run there.
PLAN = {"forky": ([f"{io}-{c}" for c in CASES for io in ("in", "out")],) * 2,
        "krita6": (None, [f"{io}-{c}" for c in CASES for io in ("in", "out")]),
        "trixie": (["out-pair"], [f"{io}-{c}" for c in CASES for io in ("in", "out")])}

GIMP_BATCH = r'''
import json, traceback
import gi
gi.require_version('Gimp', '3.0')
gi.require_version('Gegl', '0.4')
from gi.repository import Gimp, Gegl, Gio
out = {}
for tag in TAGS:
    try:
        img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(D + '/' + tag + '.psd'))
        res = out[tag] = {'layers': {}}
        def walk(layers, prefix):
            for L in layers:
                name = prefix + L.get_name()
                _, ox, oy = L.get_offsets()
                rec = res['layers'][name] = {'w': L.get_width(), 'h': L.get_height(), 'offsets': [ox, oy]}
                m = L.get_mask()
                if m is not None:
                    rect = Gegl.Rectangle.new(0, 0, m.get_width(), m.get_height())
                    fn = 'gimp-%s-%s-%d.raw' % (ROOT, tag, len(res['layers']))
                    open(D + '/' + fn, 'wb').write(bytes(m.get_buffer().get(rect, 1.0, 'Y u8',
                                                                           Gegl.AbyssPolicy.CLAMP)))
                    rec['mask'] = fn
                if L.is_group():
                    walk(L.get_children(), name + '/')
        walk(img.get_layers(), '')
        img.delete()
    except Exception:
        out[tag] = {'error': traceback.format_exc()}
open(D + '/gimp-' + ROOT + '.json', 'w').write(json.dumps(out))
'''

KRITA_MODULE = r'''
import json, traceback

def main(args):
    d, root = args
    out = {}
    try:
        from krita import Krita
        app = Krita.instance()
        app.setBatchmode(True)  # a file Krita cannot read gives None, not a dialog that waits
        for tag in json.load(open(d + '/krita-' + root + '-tags.json')):
            doc = app.openDocument(d + '/' + tag + '.psd')
            if doc is None:
                out[tag] = {'opened': False}
                continue
            W, H = doc.width(), doc.height()
            res = out[tag] = {'opened': True, 'layers': {}}
            def walk(node, prefix):
                for n in node.childNodes():
                    name = prefix + n.name()
                    if n.type() == 'transparencymask':
                        fn = 'krita-%s-%s-%d.raw' % (root, tag, len(res['layers']))
                        open(d + '/' + fn, 'wb').write(bytes(n.pixelData(0, 0, W, H)))
                        res['layers'][prefix.rstrip('/')]['masks'].append(fn)
                        continue
                    res['layers'][name] = {'type': n.type(), 'masks': []}
                    walk(n, name + '/')
            walk(doc.rootNode(), '')
            doc.close()
    except Exception:
        out['error'] = traceback.format_exc()
    open(d + '/krita-' + root + '.json', 'w').write(json.dumps(out))
'''

@pytest.fixture(scope="module")
def outputs(daemon, tmp_path_factory):
    """Each case through the real CLI and daemon; per replaced layer, the daemon's matte for its
    pixels (asked again: the daemon's cache answers) and the input's and output's records."""
    d = tmp_path_factory.mktemp("psd-corpus-editors")
    d.chmod(0o755)
    res = {"dir": d, "cases": {}, "shown": {}}
    for case, (name, layers) in CASES.items():
        src, out = d / f"in-{case}.psd", d / f"out-{case}.psd"
        shutil.copyfile(CORPUS / name, src)
        p = subprocess.run([sys.executable, "-m", "layermatte", "psd", str(src), str(out), "--replace-masks",
                            "--json", "--socket", str(daemon.socket), "--no-autostart", "--layers", *layers],
                           capture_output=True, text=True, env=daemon.env, timeout=600)
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert sorted(m["layer"] for m in report["masked"]) == sorted(layers), report
        psd = PSDImage.open(src)
        records = list(psd._record._get_layer_info().layer_records)
        want = {}
        with daemon.client() as c:
            for layer in psd.descendants():
                if layer.name in layers:
                    i = next(k for k, r in enumerate(records) if r is layer._record)
                    want[layer.name] = (i, c.matte(document.layer_pixels(layer, psd.depth)).matte)
        res["cases"][case] = {"in": S.read(src.read_bytes()), "out": S.read(out.read_bytes()), "want": want,
                              "kinds": {m["layer"]: m["mask"] for m in report["masked"]}}
    yield res
    shutil.rmtree(d, ignore_errors=True)


def shown(outputs, root: str) -> dict:
    """One GIMP batch and one kritarunner call in `root` (as PLAN says), once per module."""
    if root in outputs["shown"]:
        return outputs["shown"][root]
    editor_root(root)
    d, (gimp_tags, krita_tags) = outputs["dir"], PLAN[root]
    got, home = {}, d / f"home-{root}"
    with bind(d, root=root):
        if gimp_tags:
            (d / f"gimp-{root}.py").write_text(f"D = {str(d)!r}\nTAGS = {gimp_tags!r}\nROOT = {root!r}\n"
                                               + GIMP_BATCH)
            got["gimp_run"] = run_in_root(["gimp-console", "-i", "--quit", "--batch-interpreter=python-fu-eval",
                                           "-b", f"exec(open('{d}/gimp-{root}.py').read())"],
                                          home=home, root=root, timeout=300)
        if krita_tags:
            (d / f"krita-{root}-tags.json").write_text(json.dumps(krita_tags))
            (d / "psdcorpuscheck.py").write_text(KRITA_MODULE)
            got["krita_run"] = run_in_root(["kritarunner", "-s", "psdcorpuscheck", "-f", "main", str(d), root],
                                           home=home, root=root, timeout=300,
                                           env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(d)})
    for editor in ("gimp", "krita"):
        if f"{editor}_run" in got:
            p, f = got[f"{editor}_run"], d / f"{editor}-{root}.json"
            log = f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
            assert f.is_file(), f"{editor} in {root} wrote no results:\n{log}"
            got[editor] = json.loads(f.read_text())
            assert "error" not in got[editor], got[editor]["error"] + log
    outputs["shown"][root] = got
    return got


def raw(outputs, fn: str, h: int, w: int) -> np.ndarray:
    return np.frombuffer((outputs["dir"] / fn).read_bytes(), np.uint8).reshape(h, w).astype(np.int64)


def expected(case: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(value, known) over the layer's rectangle: what an editor that shows channel -2 must show
    for a replaced layer. A plain mask: the matte everywhere. A real/user pair: the matte where the
    input's -2 equalled its -3 (> 0: inside the vector mask), 0 where the input's -2 was 0 under a
    -3 > 0 (outside it); pixels the vector covers in part are not judged."""
    i, matte = case["want"][name]
    matte = matte.astype(np.int64)
    if case["kinds"][name] == "user":
        return matte, np.ones(matte.shape, bool)
    rec = case["in"].layers[i]
    s = case["in"]
    old2, old3 = (B._channel_on(rec, c, s.depth, s.version, rec.rect) for c in (B.USER, B.REAL))
    inside, outside = (old2 == old3) & (old3 > 0), (old2 == 0) & (old3 > 0)
    assert inside.any()
    return np.where(inside, matte, 0), inside | outside


def test_outputs_hold_the_daemons_matte(outputs):
    """What the editors are compared with: the written pixel mask is the daemon's matte."""
    for case in outputs["cases"].values():
        for name, (i, matte) in case["want"].items():
            assert np.array_equal(B.pixel_mask(case["out"], i)[0], matte), name


@pytest.mark.parametrize("root", ["forky", "trixie"])
def test_gimp_shows_the_new_matte(outputs, root):
    """GIMP shows -2: the new matte (clipped by the vector mask beside one); the other layers'
    masks as GIMP shows them for the input file."""
    g = shown(outputs, root)["gimp"]
    for tag in PLAN[root][0]:
        io, case = tag.split("-")
        assert "error" not in g[tag], g[tag]["error"]
        if io == "in":
            continue
        c = outputs["cases"][case]
        for name, rec in g[tag]["layers"].items():
            if name in c["want"]:
                i = c["want"][name][0]
                t, l, b, r = c["out"].layers[i].rect
                assert rec["mask"] and rec["offsets"] == [l, t] and (rec["h"], rec["w"]) == (b - t, r - l), rec
                value, known = expected(c, name)
                got = raw(outputs, rec["mask"], rec["h"], rec["w"])
                assert np.array_equal(got[known], value[known]), f"{case}/{name}: GIMP {root} shows another mask"
                assert known.mean() > 0.9, name
            elif f"in-{case}" in g:
                before = g[f"in-{case}"]["layers"][name]
                assert rec.keys() == before.keys(), name
                if "mask" in rec:
                    h, w = rec["h"], rec["w"]
                    assert np.array_equal(raw(outputs, rec["mask"], h, w), raw(outputs, before["mask"], h, w)), name
        if f"in-{case}" in g:
            assert g[tag]["layers"].keys() == g[f"in-{case}"]["layers"].keys()


@pytest.mark.parametrize("root", ["forky", "krita6", "trixie"])
def test_krita_shows_the_new_matte(outputs, root):
    """Krita opens an output exactly when it opens the input (not the real/user-pair files, see
    the module's docstring); where it does, the replaced layer's transparency mask is the matte
    and the other layers' masks are as Krita shows them for the input."""
    k = shown(outputs, root)["krita"]
    assert not k["in-pair"]["opened"] and not k["in-params"]["opened"]   # Photoshop's own files
    for case, c in outputs["cases"].items():
        before, after = k[f"in-{case}"], k[f"out-{case}"]
        assert after["opened"] == before["opened"], case
        if not after["opened"]:
            continue
        assert after["layers"].keys() == before["layers"].keys(), case
        H, W = c["out"].height, c["out"].width
        for name, rec in after["layers"].items():
            assert rec["type"] == before["layers"][name]["type"] and len(rec["masks"]) == len(before["layers"][name]["masks"])
            if name in c["want"]:
                i, matte = c["want"][name]
                t, l, b, r = c["out"].layers[i].rect
                assert len(rec["masks"]) == 1, f"Krita {root} sees no mask on {name}"
                got = raw(outputs, rec["masks"][0], H, W)[max(t, 0):b, max(l, 0):r]
                assert np.array_equal(got, matte[max(t, 0) - t:, max(l, 0) - l:][:got.shape[0], :got.shape[1]]), name
            else:
                for fa, fb in zip(rec["masks"], before["layers"][name]["masks"]):
                    assert np.array_equal(raw(outputs, fa, H, W), raw(outputs, fb, H, W)), name
