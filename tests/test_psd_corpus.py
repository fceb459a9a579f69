"""layermatte psd on real files saved by Photoshop, Photoshop Elements and GIMP
(../shared/psd-corpus), through the real CLI and daemon; each output is checked at
byte level by layermatte.psd.sections (not psd-tools): every image resource, layer record,
tagged block and channel other than the new pixel masks is unchanged, and the
merged composite is either byte for byte the file's own or psd-tools' re-render,
which is only chosen where psd-tools reproduces the file's own composite (at most
0.1% of pixels off by more than 8 levels)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layermatte.psd import composite as psd_composite
from layermatte.psd import sections as S

import psd_bytecheck as B

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "psd-corpus" / "tests" / "psd_files"
FILES = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.ps[db]")) if CORPUS.is_dir() else []
UNSUPPORTED = {"32bit.psd": "32-bit documents are not supported",
               "adjustments/curves_cmyk.psd": "colour mode CMYK is not supported",
               "colormodes/4x4_8bit_lab.psd": "colour mode LAB is not supported"}
# Fast matte settings: the corpus checks the file writing, test_psd.py the mattes.
FAST = ["--quality", "fast", "--plain-upsample"]

pytestmark = pytest.mark.skipif(not FILES, reason=f"PSD corpus not found at {CORPUS} (../shared is absent)")


def run_psd(daemon, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layermatte", "psd", *map(str, args), *FAST, "--json",
                           "--socket", str(daemon.socket), "--no-autostart"],
                          capture_output=True, text=True, env=daemon.env, timeout=600)


def record_index(src: Path) -> dict[str, int]:
    """Layer path -> index of its layer record (psd-tools only names the layers here)."""
    from psd_tools import PSDImage
    from layermatte.psd.document import label
    psd = PSDImage.open(src)
    records = list(psd._record._get_layer_info().layer_records)
    out = {}
    for layer in psd.descendants():
        out.setdefault(label(layer), next(i for i, r in enumerate(records) if r is layer._record))
    return out


def check_output(src: Path, out: Path, report: dict) -> S.Sections:
    index = record_index(src)
    masked = {index[m["layer"]]: B.REAL if m["mask"] == "real" else B.USER for m in report["masked"]}
    before, after = src.read_bytes(), out.read_bytes()
    s = B.compare(before, after, masked)
    for i in masked:              # each new pixel mask covers its layer, hidden outside it
        mask, rect, bg = B.pixel_mask(s, i)
        assert rect == s.layers[i].rect and bg == 0
        assert mask.shape == (rect[2] - rect[0], rect[3] - rect[1])
    if report["composite"]["rerendered"]:
        from psd_tools import PSDImage
        assert psd_composite.check_renderer(PSDImage.open(src), before).trusted
        stored = S.decode_image_data(s)                      # what the output's composite is
        assert psd_composite.check_renderer(PSDImage.open(out), after).off_fraction == 0.0
        assert stored.shape == S.decode_image_data(S.read(before)).shape
    else:
        assert s.image_data == S.read(before).image_data     # composite byte for byte
    return s


@pytest.mark.parametrize("name", FILES or ["-"])
def test_all_layers_of_a_real_file(daemon, tmp_path, name):
    src = CORPUS / name
    out = tmp_path / ("out" + src.suffix)
    p = run_psd(daemon, src, out, "--all")
    if name in UNSUPPORTED:
        assert p.returncode == 2 and UNSUPPORTED[name] in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and not out.exists()
        return
    assert p.returncode in (0, 3), p.stderr
    assert "Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert report["composite"]["detail"] in p.stderr
    check_output(src, out, report)
    reasons = {s["layer"]: s["reason"] for s in report["skipped"]}
    if name == "mask.psd":          # Photoshop never lets its Background layer have a mask
        assert reasons["Background"].startswith("Photoshop Background layer (no transparency)")
        assert "skipped layer 'Background': Photoshop Background layer" in p.stderr
        assert reasons["Background copy"] == "already has a layer mask (use --replace-masks)"


@pytest.mark.parametrize("name, layers, kinds", [
    ("mask-density-layervectormask.psd", ["--all"], {"real"}),   # pixel + vector masks, density/feather
    ("mask_parameters.psd", ["--layers", "Rectangle 1"], {"real"}),                # density/feather on a real/user pair
    ("mask.psd", ["--layers", "Background copy"], {"user"}),     # a plain pixel mask
])
def test_replace_masks_on_real_files(daemon, tmp_path, name, layers, kinds):
    src = CORPUS / name
    out = tmp_path / "out.psd"
    p = run_psd(daemon, src, out, "--replace-masks", *layers)
    assert p.returncode in (0, 3), p.stderr
    report = json.loads(p.stdout)
    assert kinds <= {m["mask"] for m in report["masked"]} and report["masked"], report
    s = check_output(src, out, report)
    before = S.read(src.read_bytes())
    index = record_index(src)
    for m in report["masked"]:
        i = index[m["layer"]]
        old, new = before.layers[i].mask, s.layers[i].mask
        if m["mask"] == "real":      # the vector mask's -2 channel, flags and parameters as they were
            assert new.raw[:18] == old.raw[:18] and new.parameters == old.parameters
            assert len(new.raw) == len(old.raw) and new.real_flags == old.real_flags
            assert s.layers[i].channel_data[B.USER] == before.layers[i].channel_data[B.USER]
        if m["mask"] == "real" or old.flags & 0x10:   # psd-tools would not render these right
            assert not report["composite"]["rerendered"]
            assert "kept as stored" in report["composite"]["detail"]


class Ramp:
    """A known matte instead of the model: the written mask bytes are checked exactly."""

    def __call__(self, pixels, options, progress=None):
        h, w = pixels.shape[:2]
        ramp = (np.arange(h * w).reshape(h, w) * 37) % 65536
        matte = ramp.astype(np.uint16) if options.depth16 else (ramp % 256).astype(np.uint8)
        return type("Reply", (), {"matte": matte})()


@pytest.mark.parametrize("name", ["mask-density-layervectormask.psd", "mask_parameters.psd", "mask.psd",
                                  "adjustments/posterize_16bits_rgb.psd"])
def test_written_pixel_masks_are_exactly_the_matte(tmp_path, name):
    """In process, without the daemon: each new or replaced pixel mask decodes (by
    psd_bytecheck, not psd-tools) to the matte given, at the document's depth."""
    from layermatte.psd import document as psd
    src, out = CORPUS / name, tmp_path / "out.psd"
    result = psd.process(src, out, Ramp(), replace_masks=True)
    assert result.masked
    report = {"masked": [{"layer": o.label, "mask": o.slot} for o in result.outcomes if o.masked],
              "composite": {"rerendered": result.composite_rerendered}}
    s = check_output(src, out, report)
    index = record_index(src)
    for m in report["masked"]:
        layer = s.layers[index[m["layer"]]]
        t, l, b, r = layer.rect
        want = Ramp()(np.zeros((b - t, r - l, 3)), type("O", (), {"depth16": s.depth == 16})()).matte
        assert np.array_equal(B.pixel_mask(s, index[m["layer"]])[0], want), m


def test_a_vector_mask_without_pixel_mask_is_refused(tmp_path):
    """Channel -2 rendered from a vector mask (flags bit 3) is no pixel mask to replace:
    the layer is skipped with the reason and its record stays byte for byte."""
    from psd_tools import PSDImage

    from layermatte.psd import document as psd
    doc = PSDImage.open(CORPUS / "mask.psd")
    layer = next(ly for ly in doc.descendants() if ly.name == "Background copy")
    layer._record.mask_data.flags.user_mask_from_render = True
    src, out = tmp_path / "in.psd", tmp_path / "out.psd"
    with open(src, "wb") as f:
        doc._record.write(f)
    result = psd.process(src, out, Ramp(), mode="names", names=["Background copy"], replace_masks=True)
    assert not result.masked
    assert result.skipped[0].reason.startswith("it has a vector mask and no pixel mask")
    check_output(src, out, {"masked": [], "composite": {"rerendered": False}})
