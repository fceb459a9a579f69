"""Another look for cut-out layers the model finds almost nothing on
(imaging/refeed.py, issue 20 point 3): the views are the layer over each
backdrop, the search runs only when the first matte drops most of the
layer, and a soft stroke that the first view loses is kept, through the
daemon (every editor's path), the CLI and in-process."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import soft_stroke
from layermatte.imaging import backdrop, formats, pipeline, refeed
from layermatte.imaging.pipeline import MatteOptions
from layermatte.models.catalog.spec import Preprocess

RGBA8 = formats.lookup(formats.BY_NAME["RGBA8"])
KEEP = 0.95


def opaque_kept(matte: np.ndarray, alpha: np.ndarray, top: float = 255.0) -> float:
    return float((matte[alpha == top] >= top / 2).mean())


def direct_view(px: np.ndarray, fmt, rgb, margin: float, s: int) -> np.ndarray:
    """The layer composited over rgb at full size, then area-averaged into the padded input."""
    shown = backdrop.composite(px, fmt, rgb)
    p, side = backdrop.inner_box(s, margin)
    out = np.empty((s, s, 3), np.float32)
    out[...] = np.float32(rgb)
    out[p:p + side, p:p + side] = formats.to_float(pipeline._area_colour(shown, fmt, side, side), fmt)
    return out


@pytest.mark.parametrize("name", ["RGBA8", "RGBA16"])
def test_other_views_are_the_layer_over_each_backdrop(photos, name):
    """Each view made from the first on the model's grid is the full-size layer
    composited over that backdrop: the same up to the second resampling of the
    photo's texture (0.2-0.4 of an 8-bit level on average, 4 at the 99th
    percentile on a cat's fur), and the first view rebuilt this way is the
    tensor the model got."""
    fmt = formats.lookup(formats.BY_NAME[name])
    rgba = np.dstack([photos["cat"][:300, :300], soft_stroke(300)[..., 3]])
    px = rgba.astype(np.uint16) * 257 if name == "RGBA16" else rgba
    pre = Preprocess(input_size=256)
    spec = type("Spec", (), {"id": "t", "preprocess": pre})()
    fed = pipeline.model_input(px, fmt, spec)
    assert fed.padded and fed.view is not None
    view = fed.view
    assert view.shown.shape == (256, 256, 3) and view.alpha.shape == (256, 256)

    def close(err: np.ndarray) -> bool:      # err in 8-bit levels
        return err.mean() <= 0.5 and np.percentile(err, 99) <= 5
    assert close(np.abs(pre.tensor(view.over(view.backdrop, backdrop.MARGIN), 255.0) - fed.tensor) * pre.std[0])
    tried = refeed.views(view.backdrop)
    assert len(tried) == 5 and view.backdrop not in [rgb for rgb, m in tried if m == backdrop.MARGIN]
    for rgb, margin in tried:
        err = np.abs(view.over(rgb, margin) - direct_view(px, fmt, rgb, margin, 256)) * 255
        assert close(err), (rgb, margin)
        # the backdrop is the view's own colour where the layer is clear
        assert np.abs(view.over(rgb, margin)[0, 0] - np.float32(rgb)).max() == 0


class Recorder:
    """Stands in for the model in the search's control flow only (no quality
    is judged here): answers each view with the next matte of a list."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def __call__(self, tensor):
        assert tensor.shape == (1, 3, 64, 64)
        self.calls += 1
        return self.answers.pop(0)


def small_view() -> refeed.CutOutView:
    alpha = np.zeros((64, 64), np.float32)
    alpha[16:48, 16:48] = 1.0
    return refeed.CutOutView(np.full((64, 64, 3), 0.5, np.float32), alpha, (0.0, 0.0, 0.0))


def padded(inner: float, margin: float) -> np.ndarray:
    """A model answer whose crop (backdrop.unpad) is `inner` everywhere."""
    p, side = backdrop.inner_box(64, margin)
    out = np.zeros((64, 64), np.float32)
    out[p:p + side, p:p + side] = inner
    return out


def test_the_search_runs_only_when_the_first_matte_drops_the_layer():
    view, pre = small_view(), Preprocess(input_size=64)
    keeps = np.ones((64, 64), np.float32)
    r = Recorder([])
    assert refeed.second_look(keeps, view, pre, r) is keeps and r.calls == 0
    half = keeps.copy()
    half[16:32, 16:48] = 0.0        # exactly half of the opaque area: not below RETRY_BELOW
    assert refeed.second_look(half, view, pre, r) is half and r.calls == 0
    nothing = refeed.CutOutView(view.shown, np.zeros((64, 64), np.float32), view.backdrop)
    assert refeed.second_look(np.zeros((64, 64), np.float32), nothing, pre, r) is not None and r.calls == 0

    # Dropped: views are tried in order until one keeps GOOD.
    margins = [m for _, m in refeed.views(view.backdrop)]
    r = Recorder([padded(0.0, margins[0]), padded(1.0, margins[1]), padded(1.0, margins[2])])
    got = refeed.second_look(np.zeros((64, 64), np.float32), view, pre, r)
    assert r.calls == 2 and refeed.kept(got, view.alpha) == 1.0

    # None keeps GOOD: all are tried and the one keeping most is used.
    answers = [padded(v, m) for v, m in zip((0.0, 0.0, 0.0, 0.6, 0.0), margins)]
    answers[3][:, :] = 0.0
    p, side = backdrop.inner_box(64, margins[3])
    answers[3][p:p + side // 2 + 4, p:p + side] = 0.6     # about 60 % of the opaque area
    r = Recorder(answers)
    got = refeed.second_look(np.zeros((64, 64), np.float32), view, pre, r)
    assert r.calls == 5 and 0.5 < refeed.kept(got, view.alpha) < 0.9


def test_a_soft_stroke_is_kept_through_the_daemon(daemon):
    """What GIMP and Krita send: the stroke as RGBA8 and GRAYA8. The first view
    alone (RETRY_BELOW 0, in-process, same model) keeps nothing of it."""
    stroke = soft_stroke()
    alpha = stroke[..., 3]
    with daemon.client() as c:
        rgba = c.matte(stroke).matte
        gray = c.matte(np.ascontiguousarray(stroke[..., [0, 3]]), format_code=formats.BY_NAME["GRAYA8"]).matte
    for m in (rgba, gray):
        assert opaque_kept(m, alpha) >= KEEP
        assert m[alpha == 0].max() == 0 and (m.astype(int) <= alpha.astype(int) + 1).all()


def test_the_first_view_alone_loses_the_stroke(model_cache, monkeypatch):
    from layermatte.models.catalog import Catalog
    from layermatte.models.engine import Engine
    model, _ = Engine(Catalog(cache=model_cache)).load(None)
    stroke = soft_stroke()
    opts = MatteOptions(quality="fast", plain_upsample=True)
    with_look = pipeline.run(stroke, RGBA8, opts, model=model, threads=2).matte
    monkeypatch.setattr(refeed, "RETRY_BELOW", 0.0)
    first = pipeline.run(stroke, RGBA8, opts, model=model, threads=2).matte
    assert opaque_kept(first, stroke[..., 3]) < 0.5 <= KEEP <= opaque_kept(with_look, stroke[..., 3])


def test_cut_keeps_the_stroke(daemon, tmp_path):
    src, out = tmp_path / "stroke.png", tmp_path / "stroke-cut.png"
    Image.fromarray(soft_stroke(64), "RGBA").save(src)
    r = subprocess.run([sys.executable, "-m", "layermatte", "cut", str(src), str(out), "--socket",
                        str(daemon.socket), "--no-autostart"], env=daemon.env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(out))
    assert opaque_kept(got[..., 3], soft_stroke(64)[..., 3]) >= KEEP
