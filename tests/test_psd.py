"""layermatte psd: real PSDs built with psd-tools from real photos, the real CLI
against the real daemon, results re-read with psd-tools."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.constants import BlendMode

from layermatte.imaging.pipeline import MatteOptions

CANVAS = (400, 300)  # w, h


def run_cli(daemon, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layermatte", "psd", *map(str, args),
                           "--socket", str(daemon.socket), "--no-autostart"],
                          capture_output=True, text=True, env=daemon.env, timeout=600)


def soft_alpha(h: int, w: int) -> np.ndarray:
    """Transparent band at the top, a ramp, then opaque: exercises the layer's own alpha."""
    a = np.full((h, w), 255, np.uint8)
    a[: h // 10] = 0
    a[h // 10: h // 5] = np.linspace(0, 255, h // 5 - h // 10, dtype=np.uint8)[:, None]
    return a


@pytest.fixture(scope="module")
def sources(photos):
    astro = photos["astronaut"][::2, ::2]                       # 256x256
    cat = photos["cat"][:200, :250]
    coffee = photos["coffee"][::2, ::2][:150, :200]
    return {
        "photo": (astro, 0, 0),                                  # RGB, no transparency channel
        "cat": (np.dstack([cat, soft_alpha(200, 250)]), 120, 250),  # runs off the right and bottom edges
        "coffee": (np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)]), -30, -40),  # negative offset
        "empty": (np.zeros((40, 40, 4), np.uint8), 10, 300),
        "masked": (np.ascontiguousarray(astro[100:220, 60:200]), 140, 20),
    }


def build_doc(path: Path, sources: dict, depth: int = 8) -> Path:
    to = (lambda a: a.astype(np.uint16) * 257) if depth == 16 else (lambda a: a)
    psd = PSDImage.new("RGB", CANVAS, depth=depth)
    # Photoshop's Background: the bottom layer without a transparency channel (skipped).
    bg = psd.create_pixel_layer_from_array(np.full((CANVAS[1], CANVAS[0], 3), 200 if depth == 8 else 51400,
                                                   np.uint8 if depth == 8 else np.uint16), name="Background")
    i = next(i for i, ci in enumerate(bg._record.channel_info) if ci.id == -1)  # psd-tools adds one
    del bg._record.channel_info[i], bg._channels[i]
    arr, top, left = sources["photo"]
    psd.create_pixel_layer_from_array(to(arr), name="photo", top=top, left=left)
    arr, top, left = sources["cat"]
    psd.create_pixel_layer_from_array(to(arr), name="cat", top=top, left=left, opacity=200,
                                      blend_mode=BlendMode.MULTIPLY)
    group = psd.create_group(name="grp", opacity=180)
    arr, top, left = sources["coffee"]
    hidden = group.create_pixel_layer_from_array(to(arr), name="coffee", top=top, left=left)
    hidden.visible = False
    arr, top, left = sources["empty"]
    group.create_pixel_layer_from_array(to(arr), name="empty", top=top, left=left)
    arr, top, left = sources["masked"]
    masked = psd.create_pixel_layer_from_array(to(arr), name="masked", top=top, left=left,
                                               blend_mode=BlendMode.SCREEN)
    ramp = np.tile(np.linspace(30, 220, 80, dtype=np.uint8), (60, 1))  # mask offset from the layer
    masked.create_mask(Image.fromarray(ramp), top=top + 15, left=left + 25)
    psd.save(path)
    return path


@pytest.fixture(scope="module")
def doc8(tmp_path_factory, sources) -> Path:
    return build_doc(tmp_path_factory.mktemp("psd8") / "doc.psd", sources)


@pytest.fixture(scope="module")
def expected(daemon, sources):
    """The daemon's own matte of a layer's pixels, one inference per (layer, depth)."""
    cache: dict = {}

    def get(name: str, depth: int = 8) -> np.ndarray:
        if (name, depth) not in cache:
            arr = sources[name][0]
            if depth == 16:
                arr = arr.astype(np.uint16) * 257
            with daemon.client() as c:
                cache[name, depth] = c.matte(arr, options=MatteOptions(depth16=depth == 16)).matte
        return cache[name, depth]
    return get


def find(psd: PSDImage, name: str):
    return next(ly for ly in psd.descendants() if ly.name == name)


def on_canvas(arr: np.ndarray, top: int, left: int, fill: float, size=CANVAS) -> np.ndarray:
    """Place a layer-/mask-sized 2-D array on the document canvas (clipped), `fill` elsewhere."""
    w, h = size
    canvas = np.full((h, w), fill, np.float64)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + arr.shape[0], h), min(left + arr.shape[1], w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = arr[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


def mask_canvas(layer, scale: float = 255.0) -> np.ndarray | None:
    """The layer mask as it applies on the full canvas (psd.md: not by its stored rectangle)."""
    if not layer.has_mask():
        return None
    m = layer.mask
    pixels = layer.numpy("mask")
    fill = m.background_color / 255.0 * scale
    if pixels is None:
        return np.full(CANVAS[::-1], fill)
    return on_canvas(pixels[..., 0] * scale, m.top, m.left, fill)


def assert_mask_is_matte(layer, matte: np.ndarray, depth: int = 8):
    scale = 255.0 if depth == 8 else 65535.0
    got = mask_canvas(layer, scale)
    assert got is not None, f"{layer.name} has no mask"
    want = on_canvas(matte.astype(np.float64), layer.top, layer.left, 0.0)
    tol = 1.0 if depth == 8 else 257.0   # ±1 in 8-bit steps
    assert np.abs(np.rint(got) - want).max() <= tol, layer.name
    assert not layer.mask.disabled


def snapshot(psd: PSDImage) -> dict:
    """Everything but the masks we write: layers, nesting, properties, pixels, document."""
    layers = {}
    for ly in psd.descendants():
        parent = ly.parent.name if ly.parent is not psd else None
        pixels = ly.numpy() if ly.kind == "pixel" else None
        layers[ly.name] = dict(kind=ly.kind, parent=parent, bbox=ly.bbox, opacity=ly.opacity,
                               blend=ly.blend_mode, visible=ly.visible, clipping=ly.clipping,
                               pixels=None if pixels is None else pixels.tobytes(),
                               mask=mask_canvas(ly))
    doc = dict(size=psd.size, depth=psd.depth, mode=psd.color_mode, version=psd.version,
               order=[ly.name for ly in psd.descendants()])
    return dict(doc=doc, layers=layers)


def assert_unchanged_except(before: dict, after: dict, masked: set[str]):
    assert after["doc"] == before["doc"]
    for name, b in before["layers"].items():
        a = after["layers"][name]
        for key in b:
            if key == "mask" and name in masked:
                continue
            if key == "mask" and b[key] is not None:
                assert np.array_equal(a[key], b[key]), f"{name}: mask changed"
            elif key == "mask":
                assert a[key] is None, f"{name}: got a mask"
            else:
                assert a[key] == b[key], f"{name}: {key} changed"


def test_masks_every_pixel_layer_and_keeps_the_rest(daemon, doc8, expected, tmp_path):
    out = tmp_path / "out.psd"
    p = run_cli(daemon, doc8, out)
    assert p.returncode == 3, p.stderr           # some layers skipped
    assert "'grp/empty': empty" in p.stderr
    assert "'masked': already has a layer mask" in p.stderr
    assert "'Background': Photoshop Background layer (no transparency)" in p.stderr
    before, psd = snapshot(PSDImage.open(doc8)), PSDImage.open(out)
    for name in ("photo", "cat", "coffee"):      # coffee is hidden: --all still takes it
        assert_mask_is_matte(find(psd, name), expected(name))
    assert_unchanged_except(before, snapshot(psd), {"photo", "cat", "coffee"})
    # The matte is a real cut-out: subject kept, background hidden (astronaut photo).
    m = mask_canvas(find(psd, "photo"))
    assert m[150, 115] > 200 and m[15, 15] < 30
    # The cat layer's transparent band stays hidden whatever the model says.
    assert mask_canvas(find(psd, "cat"))[125:135, 260:390].max() <= 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.psd"]  # no temp files left


def test_replace_masks_on_a_named_layer(daemon, doc8, expected, tmp_path):
    out = tmp_path / "out.psd"
    p = run_cli(daemon, doc8, out, "--layers", "masked", "--replace-masks")
    assert p.returncode == 0, p.stderr
    psd = PSDImage.open(out)
    assert_mask_is_matte(find(psd, "masked"), expected("masked"))
    assert_unchanged_except(snapshot(PSDImage.open(doc8)), snapshot(psd), {"masked"})


def test_visible_in_place_keeps_a_backup(daemon, doc8, expected, tmp_path):
    doc = tmp_path / "work.psd"
    shutil.copy(doc8, doc)
    original = doc.read_bytes()
    p = run_cli(daemon, doc, "--visible", "--in-place")
    assert p.returncode == 3, p.stderr           # 'masked' and 'empty' skipped
    backup = tmp_path / "work.bak.psd"
    assert backup.read_bytes() == original
    psd = PSDImage.open(doc)
    for name in ("photo", "cat"):
        assert_mask_is_matte(find(psd, name), expected(name))
    assert not find(psd, "coffee").has_mask()    # hidden layer left alone
    assert_unchanged_except(snapshot(PSDImage.open(backup)), snapshot(psd), {"photo", "cat"})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["work.bak.psd", "work.psd"]


def test_16_bit_document(daemon, sources, expected, tmp_path):
    doc = build_doc(tmp_path / "deep.psd", sources, depth=16)
    out = tmp_path / "out.psd"
    p = run_cli(daemon, doc, out, "--layers", "grp/coffee", "cat")
    assert p.returncode == 0, p.stderr
    psd = PSDImage.open(out)
    assert psd.depth == 16
    for name in ("coffee", "cat"):
        layer = find(psd, name)
        assert_mask_is_matte(layer, expected(name, 16), depth=16)
        stored = np.rint(layer.numpy("mask")[..., 0] * 65535).astype(np.int64)
        assert (stored % 257 != 0).any(), "mask kept only 8 bits of the 16-bit matte"
    assert_unchanged_except(snapshot(PSDImage.open(doc)), snapshot(psd), {"coffee", "cat"})


def test_damaged_layer_is_skipped_and_others_proceed(daemon, doc8, expected, tmp_path):
    """A layer whose channel data is damaged is reported; psd-tools itself decodes
    it without complaint (here: as black)."""
    src = PSDImage.open(doc8)
    layer = find(src, "photo")
    red = layer._channels[1]            # [transparency, R, G, B]: zero the red channel's RLE bytes
    red.data = b"\x00" * len(red.data)
    src.save(tmp_path / "damaged.psd")
    out = tmp_path / "out.psd"
    p = run_cli(daemon, tmp_path / "damaged.psd", out, "--layers", "photo", "cat")
    assert p.returncode == 3, p.stderr
    assert "'photo': pixel data cannot be read" in p.stderr
    psd = PSDImage.open(out)
    assert not find(psd, "photo").has_mask()
    assert_mask_is_matte(find(psd, "cat"), expected("cat"))


@pytest.mark.parametrize("kind", ["truncated-start", "truncated-end", "garbage", "png", "missing",
                                  "unknown-layer", "no-output"])
def test_bad_input_gives_a_clear_error_and_no_output(daemon, doc8, photos, tmp_path, kind):
    data = doc8.read_bytes()
    src = tmp_path / "in.psd"
    out = tmp_path / "out" / "result.psd"
    out.parent.mkdir()
    args = [src, out]
    message = {"truncated-start": "damaged or truncated", "truncated-end": "damaged or truncated",
               "garbage": "not a Photoshop document", "png": "not a Photoshop document",
               "missing": "no such file", "unknown-layer": "no layer named 'nope'",
               "no-output": "give an OUTPUT file"}[kind]
    if kind == "truncated-start":
        src.write_bytes(data[: len(data) // 3])
    elif kind == "truncated-end":
        src.write_bytes(data[:-10])
    elif kind == "garbage":
        src.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "png":
        Image.fromarray(photos["cat"]).save(src, format="PNG")
    elif kind == "unknown-layer":
        src.write_bytes(data)
        args += ["--layers", "nope"]
    elif kind == "no-output":
        src.write_bytes(data)
        args = [src]
    p = run_cli(daemon, *args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "layermatte: error:" in p.stderr and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert list(out.parent.iterdir()) == []
