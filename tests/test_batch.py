"""layermatte batch: a real folder tree of real photos through the real daemon."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from conftest import start_daemon, stop_daemon
from layermatte.jobs import batch
from layermatte.imaging import imageio
from layermatte.jobs.batch import DaemonMatter
from layermatte.imaging.pipeline import MatteOptions


def run_cli(daemon, *args, socket: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layermatte", "batch", *map(str, args),
                           "--socket", str(socket or daemon.socket), "--no-autostart"],
                          capture_output=True, text=True, env=daemon.env, timeout=600)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def tree(tmp_path, photos) -> Path:
    """Nested folders: 8-bit PNG, JPEG, 16-bit PNG, a corrupt PNG and a non-image file."""
    root = tmp_path / "in"
    (root / "pets" / "deep").mkdir(parents=True)
    (root / "broken").mkdir()
    Image.fromarray(photos["astronaut"][::2, ::2]).save(root / "astronaut.png")
    Image.fromarray(photos["cat"][:, :400]).save(root / "pets" / "cat.jpg", quality=95)
    coffee16 = photos["coffee"][::2, ::2].astype(np.uint16) * 257
    cv2.imwrite(str(root / "pets" / "deep" / "coffee16.png"), coffee16[..., ::-1])
    (root / "broken" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00not really a png" * 20)
    (root / "notes.txt").write_text("not an image")
    return root


def test_tree_with_a_failure_then_resume(daemon, tree, tmp_path):
    out = tmp_path / "out"
    p = run_cli(daemon, tree, out, "--jobs", "2")
    assert p.returncode == 3, p.stderr                       # one image failed, the rest done
    assert "failed broken/broken.png: " in p.stderr and "not a readable image" in p.stderr
    assert "3 done, 0 already done, 1 failed" in p.stderr
    assert files(out) == ["astronaut.png", "pets/cat.png", "pets/deep/coffee16.png"]

    # Cut-outs: straight RGBA, alpha = the daemon's matte of the same pixels (±1).
    cut = imageio.read(out / "astronaut.png").pixels
    src = imageio.read(tree / "astronaut.png").pixels
    assert cut.shape == (256, 256, 4) and cut.dtype == np.uint8
    with daemon.client() as c:
        want = c.matte(src).matte
    assert np.abs(cut[..., 3].astype(int) - want).max() <= 1
    assert cut[60, 115, 3] > 200 and cut[10, 10, 3] < 30       # subject kept, background gone
    deep = imageio.read(out / "pets" / "deep" / "coffee16.png").pixels
    assert deep.dtype == np.uint16 and deep.shape == (200, 300, 4)
    assert imageio.read(out / "pets" / "cat.png").pixels.shape == (300, 400, 4)

    # Resume: existing outputs are skipped, a missing one is redone.
    stamps = {f: (out / f).stat().st_mtime_ns for f in files(out)}
    (out / "pets" / "cat.png").unlink()
    p = run_cli(daemon, tree, out)
    assert p.returncode == 3, p.stderr
    assert "1 done, 2 already done, 1 failed" in p.stderr
    assert files(out) == list(stamps)
    for f in ("astronaut.png", "pets/deep/coffee16.png"):
        assert (out / f).stat().st_mtime_ns == stamps[f]


def test_psd_format_and_force(daemon, photos, tmp_path):
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    astro = photos["astronaut"][::2, ::2]
    Image.fromarray(astro).save(src / "astronaut.png")
    coffee16 = photos["coffee"][::4, ::4].astype(np.uint16) * 257
    cv2.imwrite(str(src / "deep" / "coffee.tif"), coffee16[..., ::-1])
    out = tmp_path / "out"
    p = run_cli(daemon, src, out, "--format", "psd", "--jobs", "1")
    assert p.returncode == 0, p.stderr
    assert files(out) == ["astronaut.psd", "deep/coffee.psd"]

    doc = PSDImage.open(out / "astronaut.psd")
    assert doc.size == (256, 256) and doc.depth == 8
    original, cut = list(doc)
    assert (original.name, cut.name) == ("Original", "Cut-out")
    assert not original.visible and cut.visible
    assert np.array_equal(np.rint(original.numpy()[..., :3] * 255).astype(np.uint8), astro)
    with daemon.client() as c:
        want = c.matte(astro, options=MatteOptions(return_foreground=True, decontaminate=True))
    assert cut.mask.bbox == (0, 0, 256, 256) and cut.mask.background_color == 0
    assert np.abs(np.rint(cut.numpy("mask")[..., 0] * 255) - want.matte).max() <= 1
    assert np.abs(np.rint(cut.numpy()[..., :3] * 255) - want.foreground).max() <= 1

    deep = PSDImage.open(out / "deep" / "coffee.psd")
    assert deep.depth == 16 and deep.size == (150, 100)
    assert np.array_equal(np.rint(list(deep)[0].numpy()[..., :3] * 65535).astype(np.uint16), coffee16)
    assert list(deep)[1].has_mask()

    p = run_cli(daemon, src, out, "--format", "psd")
    assert p.returncode == 0 and "0 done, 2 already done, 0 failed" in p.stderr, p.stderr
    before = (out / "astronaut.psd").stat().st_mtime_ns
    p = run_cli(daemon, src, out, "--format", "psd", "--force")
    assert p.returncode == 0 and "2 done, 0 already done" in p.stderr, p.stderr
    assert (out / "astronaut.psd").stat().st_mtime_ns != before


def test_a_full_queue_is_waited_out(model_cache, photos, tmp_path):
    """A daemon that admits one request at a time (queue 0) answers the extra
    concurrent requests with RESOURCE_EXHAUSTED; the batch waits and retries."""
    src = tmp_path / "in"
    src.mkdir()
    for name, img in photos.items():
        Image.fromarray(img[:256, :256]).save(src / f"{name}.png")
    handle = start_daemon(model_cache, "--queue", "0")
    try:
        matter = DaemonMatter(handle.client, cancel=threading.Event())
        jobs = batch.plan(src, tmp_path / "out", "webp")
        summary = batch.run(jobs, matter, "webp", MatteOptions(return_foreground=True), workers=3)
        matter.close()
    finally:
        stop_daemon(handle)
    assert not summary.aborted and not summary.failed, summary
    assert len(summary.done) == 3 and matter.busy_retries > 0
    assert files(tmp_path / "out") == ["astronaut.webp", "cat.webp", "coffee.webp"]
    assert imageio.read(tmp_path / "out" / "cat.webp").pixels.shape == (256, 256, 4)


def test_errors(daemon, tree, tmp_path):
    p = run_cli(daemon, tmp_path / "nope", tmp_path / "out")
    assert p.returncode == 2 and "no such folder" in p.stderr, p.stderr
    p = run_cli(daemon, tree, tree)
    assert p.returncode == 2 and "must differ" in p.stderr, p.stderr
    # No daemon at all: the batch stops at once with a clear reason, writes nothing.
    p = run_cli(daemon, tree, tmp_path / "out", socket=tmp_path / "no.sock")
    assert p.returncode == 2 and "batch stopped" in p.stderr and "not reachable" in p.stderr, p.stderr
    assert files(tmp_path / "out") == []
