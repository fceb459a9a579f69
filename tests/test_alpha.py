"""Layers that are already cut-outs (issue 20, point 3): the matte keeps what the
layer shows. Real ISNet model, real daemon, real CLI on real files."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from layermatte.imaging import backdrop, formats
from layermatte.imaging.pipeline import MatteOptions

KEEP = 0.95   # share of the layer's opaque area the matte must keep


def shape_alpha(h: int = 384, w: int = 512) -> np.ndarray:
    """A disc and a box, opaque, on transparency (a logo, a pasted object)."""
    a = np.zeros((h, w), np.uint8)
    cv2.circle(a, (w * 2 // 5, h // 2), h // 3, 255, -1)
    cv2.rectangle(a, (w * 3 // 5, h // 6), (w * 9 // 10, h // 2), 255, -1)
    return a


def flat_layer(rgb: tuple[int, int, int]) -> np.ndarray:
    """One colour everywhere, the shape only in alpha: what editors store for a
    filled selection or a text/logo layer. The stored colours show no shape at
    all; before the fix the model saw a flat picture and the matte was 0 %."""
    a = shape_alpha()
    return np.dstack([np.broadcast_to(np.uint8(rgb), a.shape + (3,)), a])


@pytest.fixture(scope="module")
def cutout(daemon, photos) -> np.ndarray:
    """The astronaut cut out by the model's own matte, random colours under
    the transparent pixels."""
    rgb = photos["astronaut"]
    with daemon.client() as c:
        subject = c.matte(rgb).matte > 127
    rng = np.random.default_rng(20)
    out = np.dstack([rgb, np.where(subject, 255, 0).astype(np.uint8)])
    out[~subject, :3] = rng.integers(0, 256, (int((~subject).sum()), 3))
    return out


def assert_keeps_what_it_shows(matte: np.ndarray, alpha: np.ndarray, top: float = 255.0):
    opaque, clear = alpha >= top, alpha == 0
    kept = float((matte[opaque] >= top / 2).mean())
    assert kept >= KEEP, f"matte keeps {kept:.1%} of the opaque subject"
    assert matte[clear].max() == 0, "transparent pixels got matte"


def as_format(rgba8: np.ndarray, name: str) -> np.ndarray:
    if name.startswith("GRAY"):
        rgba8 = np.dstack([cv2.cvtColor(np.ascontiguousarray(rgba8[..., :3]), cv2.COLOR_RGB2GRAY), rgba8[..., 3]])
    if name.startswith("BGRA"):
        rgba8 = rgba8[..., [2, 1, 0, 3]]
    if name.endswith("16"):
        return rgba8.astype(np.uint16) * 257
    if name.endswith("F32"):
        return rgba8.astype(np.float32) / 255
    return np.ascontiguousarray(rgba8)


@pytest.mark.parametrize("fmt", ["RGBA8", "BGRA8", "RGBA16", "RGBAF32", "GRAYA8", "GRAYA16"])
@pytest.mark.parametrize("rgb", [(220, 30, 30), (128, 128, 128)], ids=["red", "grey"])
def test_flat_colour_layer_keeps_its_shape(daemon, fmt, rgb):
    layer = flat_layer(rgb)
    with daemon.client() as c:
        r = c.matte(as_format(layer, fmt), format_code=formats.BY_NAME[fmt])
        stored = c.matte(as_format(layer, fmt), format_code=formats.BY_NAME[fmt],
                         options=MatteOptions(ignore_layer_alpha=True))
    assert_keeps_what_it_shows(r.matte, layer[..., 3])
    # ignore_layer_alpha still means "the colours as stored": a flat picture, no subject.
    assert (stored.matte >= 128).mean() < 0.05


def test_cut_out_photo_with_random_colours_under(daemon, cutout):
    with daemon.client() as c:
        m8 = c.matte(cutout).matte
        m16 = c.matte(cutout.astype(np.uint16) * 257, options=MatteOptions(depth16=True)).matte
        hq = c.matte(cutout, options=MatteOptions(quality="hq")).matte
    for m, top in ((m8, 255.0), (m16, 65535.0), (hq, 255.0)):
        assert_keeps_what_it_shows(m, cutout[..., 3].astype(np.float64) * top / 255, top)
    assert np.abs(m16 / 257.0 - m8).max() <= 3


def test_soft_layer_alpha_is_the_ceiling(daemon):
    """min(model, layer alpha): never above the layer's alpha, and on the
    opaque shape's faded part the layer's own alpha is what is left."""
    layer = flat_layer((220, 30, 30))
    ramp = np.linspace(0.3, 1.0, layer.shape[1], dtype=np.float32)[None, :]
    layer[..., 3] = (layer[..., 3] * ramp + 0.5).astype(np.uint8)
    with daemon.client() as c:
        m = c.matte(layer).matte.astype(int)
    a = layer[..., 3].astype(int)
    assert (m <= a + 1).all()
    inner = cv2.erode(shape_alpha(), np.ones((15, 15), np.uint8)) == 255
    assert np.abs(m[inner] - a[inner]).mean() < 0.05 * 255


def test_backdrop_contrasts_with_the_subject():
    rgba = formats.lookup(1)
    assert backdrop.choose(flat_layer((128, 128, 128)), rgba) != (0.5, 0.5, 0.5)
    assert backdrop.choose(flat_layer((250, 250, 250)), rgba) == (0.0, 0.0, 0.0)
    assert backdrop.choose(flat_layer((10, 10, 10)), rgba) == (1.0, 1.0, 1.0)
    assert not backdrop.has_transparency(np.full((4, 4, 4), 255, np.uint8), rgba)
    # 8-bit, 16-bit and float composites agree (one rounding step).
    layer = flat_layer((220, 30, 30))
    layer[..., 3] //= 2
    bg = (1.0, 1.0, 1.0)
    c8 = backdrop.composite(layer, rgba, bg).astype(float)
    c16 = backdrop.composite(layer.astype(np.uint16) * 257, formats.lookup(6), bg) / 257.0
    cf = backdrop.composite(layer.astype(np.float32) / 255, formats.lookup(10), bg) * 255.0
    assert np.abs(c8 - c16).max() <= 1 and np.abs(c8 - cf).max() <= 1
    assert (c8[..., 3] == 255).all()


def lm(daemon, *args):
    return subprocess.run([sys.executable, "-m", "layermatte", *map(str, args), "--socket", str(daemon.socket),
                           "--no-autostart"], env=daemon.env, capture_output=True, text=True, timeout=300)


def test_cut_on_rgba_png(daemon, cutout, tmp_path):
    for name, layer in (("logo", flat_layer((220, 30, 30))), ("astronaut", cutout)):
        src, out = tmp_path / f"{name}.png", tmp_path / f"{name}-cut.png"
        Image.fromarray(layer, "RGBA").save(src)
        r = lm(daemon, "cut", src, out)
        assert r.returncode == 0, r.stderr
        got = np.asarray(Image.open(out))
        assert_keeps_what_it_shows(got[..., 3], layer[..., 3])


def test_psd_layer_with_transparency(daemon, cutout, tmp_path):
    """A document with a cut-out layer and a flat logo layer, both on
    transparency: `layermatte psd` gives them masks that keep what they show."""
    logo = flat_layer((30, 60, 200))
    psd = PSDImage.new("RGB", (512, 512), depth=8)
    psd.create_pixel_layer_from_array(np.ascontiguousarray(cutout), name="cutout", top=0, left=0)
    psd.create_pixel_layer_from_array(logo, name="logo", top=64, left=0)
    src, out = tmp_path / "doc.psd", tmp_path / "out.psd"
    psd.save(src)
    r = lm(daemon, "psd", src, out)
    assert r.returncode == 0, r.stderr
    doc = PSDImage.open(out)
    for ly in doc.descendants():
        want = {"cutout": cutout, "logo": logo}[ly.name]
        assert ly.has_mask(), ly.name
        m = ly.numpy("mask")[..., 0] * 255.0
        canvas = np.full(want.shape[:2], ly.mask.background_color, np.float64)
        y0, x0 = ly.mask.top - ly.top, ly.mask.left - ly.left
        canvas[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        assert_keeps_what_it_shows(np.rint(canvas), want[..., 3])


# The corpus's cut-out layers (real files) are checked on the masks `layermatte psd --all` writes:
# tests/test_psd_corpus.py (check_cut_outs, FIRST_VIEW_LOST), so they are matted once, not twice.


def test_opaque_layers_are_fed_as_before(photos):
    """The margin is for layers shown over a backdrop only: an opaque photo's
    model input is the plain squashed layer (same tensor, same cache key)."""
    from layermatte.models.catalog import Catalog
    from layermatte.imaging import pipeline
    spec, rgb = Catalog().get(None), photos["astronaut"]
    a = pipeline.model_input(rgb, formats.lookup(2), spec)
    b = pipeline.model_input(rgb, formats.lookup(2), spec, pad=False)
    assert not a.padded and a.digest == b.digest and np.array_equal(a.tensor, b.tensor)
    cut = flat_layer((220, 30, 30))
    p = pipeline.model_input(cut, formats.lookup(1), spec)
    q = pipeline.model_input(cut, formats.lookup(1), spec, pad=False)
    assert p.padded and p.digest != q.digest and np.array_equal(p.guide, q.guide)
    assert p.coarse(np.ones((p.guide.shape[0],) * 2, np.float32)).shape == p.guide.shape[:2]


def test_a_photo_with_a_few_clear_pixels_gets_no_margin(photos):
    """Framed in backdrop, a whole photo reads as one object: only cut-outs and soft
    shapes get the margin (backdrop.is_cut_out); a photo with a small hole is fed as it shows."""
    from conftest import with_alpha
    fmt = formats.lookup(formats.code_for_array(with_alpha(photos["astronaut"])))
    photo = with_alpha(photos["astronaut"])
    photo[:16, 64:80] = 0
    assert backdrop.shown(photo, fmt).backdrop is None
    yy, xx = np.mgrid[:512, :512]
    disc = with_alpha(photos["astronaut"])
    disc[..., 3] = (((yy - 256) ** 2 + (xx - 256) ** 2) < 200 ** 2) * 255
    assert backdrop.shown(disc, fmt).backdrop is not None
