"""layermatte batch --ray: a real local Ray cluster (a head and one worker node, separate
processes on loopback, bounded CPUs/memory, no dashboard) running the real model on real
photos; every output must equal the local `layermatte batch` output of the same image."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import soft_stroke
from layermatte.imaging import imageio

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason=(
    "ray is an optional extra (about 500 MB installed) not in the test install: run "
    ".venv/bin/pip install -e '.[ray]' then .venv/bin/pytest tests/test_raybatch.py"))


def cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layermatte", "batch", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def processes() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process, from /proc."""
    out = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry.name)] = int(fields[1])
    return out


def with_descendants(roots: set[int]) -> set[int]:
    procs, found = processes(), set(roots)
    while True:
        more = {p for p, parent in procs.items() if parent in found} - found
        if not more:
            return found
        found |= more


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@contextmanager
def local_cluster(head_cpus: int = 1, worker_cpus: tuple[int, ...] = (1,)):
    """A real Ray cluster on 127.0.0.1: a head node and one worker node per entry of
    worker_cpus, each its own raylet with a 200 MiB object store and 4 GiB of schedulable
    memory, no dashboard. Yields the address; afterwards every process it started
    (gcs, raylets, workers) is gone -- killed by handle, never by name."""
    from ray.cluster_utils import Cluster
    temp = tempfile.mkdtemp(prefix="lmray-")   # short: Ray's socket paths must stay < 108 bytes
    # Cluster also records its address in Ray's default folder (removed at shutdown).
    Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp", "ray").mkdir(exist_ok=True)
    node = dict(object_store_memory=200 * 2**20, memory=4 * 2**30, node_ip_address="127.0.0.1")
    cluster = Cluster(initialize_head=False, connect=False)   # Ray's atexit hook as a backstop
    try:
        cluster.add_node(num_cpus=head_cpus, include_dashboard=False, temp_dir=temp, **node)
        for cpus in worker_cpus:
            cluster.add_node(num_cpus=cpus, **node)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        roots = {p.process.pid for n in [cluster.head_node, *cluster.worker_nodes] if n
                 for procs in n.all_processes.values() for p in procs}
        started = with_descendants(roots)    # gcs, raylets and the workers they started
        cluster.shutdown()
        deadline = time.monotonic() + 20
        while started & processes().keys() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
        assert not started & processes().keys(), "Ray processes left running"


@pytest.fixture(scope="module")
def ray_cluster(model_cache):
    """Head (1 CPU) + one worker node (1 CPU)."""
    pytest.importorskip("ray")
    with local_cluster(head_cpus=1, worker_cpus=(1,)) as address:
        yield address


@pytest.fixture
def tree(tmp_path, photos) -> Path:
    """Small real photos (≤ 512 px) in nested folders, a 16-bit PNG, a corrupt file, a non-image."""
    root = tmp_path / "in"
    (root / "pets" / "deep").mkdir(parents=True)
    Image.fromarray(photos["astronaut"][::2, ::2]).save(root / "astronaut.png")
    Image.fromarray(photos["cat"][:, :400]).save(root / "pets" / "cat.jpg", quality=95)
    coffee16 = photos["coffee"][::2, ::2].astype(np.uint16) * 257
    cv2.imwrite(str(root / "pets" / "deep" / "coffee16.png"), coffee16[..., ::-1])
    # an already cut-out layer: the model sees it with a backdrop margin, cropped back after
    yy, xx = np.mgrid[:200, :240]
    disc = ((yy - 100) ** 2 + (xx - 120) ** 2 < 80 ** 2).astype(np.uint8) * 255
    Image.fromarray(np.dstack([photos["cat"][50:250, 100:340], disc])).save(root / "cutout.png")
    # a photo turned on its layer (corners clear): fed upright, the matte turned back after
    small = np.dstack([photos["coffee"][::2, ::2], np.full((200, 300), 255, np.uint8)])
    turn = cv2.getRotationMatrix2D((150, 100), 20, 1.0)
    turn[:, 2] += (60, 60)
    Image.fromarray(cv2.warpAffine(small, turn, (420, 320), flags=cv2.INTER_LINEAR)).save(root / "turned.png")
    # a cut-out the first view loses (0 % kept over black): the actor looks again (refeed.py)
    Image.fromarray(soft_stroke(64), "RGBA").save(root / "stroke.png")
    (root / "pets" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00not a png" * 20)
    (root / "notes.txt").write_text("not an image")
    return root


def assert_same_outputs(got: Path, want: Path) -> None:
    assert files(got) == files(want) == ["astronaut.png", "cutout.png", "pets/cat.png",
                                         "pets/deep/coffee16.png", "stroke.png", "turned.png"]
    for name in files(want):
        a, b = imageio.read(got / name).pixels, imageio.read(want / name).pixels
        assert a.shape == b.shape and a.dtype == b.dtype, name
        one = 257 if a.dtype == np.uint16 else 1                      # ±1 in 8-bit terms
        assert np.abs(a[..., 3].astype(int) - b[..., 3]).max() <= one, name     # alpha
        assert np.abs(a[..., :3].astype(int) - b[..., :3]).max() <= one, name   # colours
    stroke = soft_stroke(64)[..., 3]
    assert (imageio.read(got / "stroke.png").pixels[..., 3][stroke == 255] >= 128).mean() >= 0.95


@needs_ray
def test_ray_batch_equals_local_batch_and_resumes(ray_cluster, daemon, tree, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    p = cli(daemon.env, tree, local, "--socket", daemon.socket, "--no-autostart")
    assert p.returncode == 3, p.stderr
    # Ray maps 127.0.0.1 in an address to this machine's routed IP, where the loopback-only
    # cluster does not listen; with this set (it is meant for macOS/Windows) it stays loopback.
    env = dict(daemon.env, RAY_ADDRESS="", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    p = cli(env, tree, remote, "--ray", ray_cluster)
    assert p.returncode == 3, p.stderr                           # the broken file, listed; rest done
    assert "failed pets/broken.png: " in p.stderr and "not a readable image" in p.stderr, p.stderr
    assert "batch: 6 done, 0 already done, 1 failed (of 7)" in p.stderr, p.stderr
    assert "2 nodes" in p.stderr and "CPU actors" in p.stderr, p.stderr
    assert_same_outputs(remote, local)
    assert not [f for f in remote.rglob(".*")], "temporary files left behind"

    # Resume: finished outputs are kept as they are, a missing one is redone.
    stamps = {f: (remote / f).stat().st_mtime_ns for f in files(remote)}
    (remote / "pets" / "cat.png").unlink()
    p = cli(env, tree, remote, "--ray", ray_cluster)
    assert p.returncode == 3 and "1 done, 5 already done, 1 failed" in p.stderr, p.stderr
    for f in ("astronaut.png", "cutout.png", "pets/deep/coffee16.png", "stroke.png", "turned.png"):
        assert (remote / f).stat().st_mtime_ns == stamps[f]
    assert_same_outputs(remote, local)

    # URL folders go through pyarrow.fs (the s3:// code path, here on file://).
    urls = tmp_path / "urls"
    p = cli(env, f"file://{tree}", f"file://{urls}", "--ray", ray_cluster)
    assert p.returncode == 3 and "6 done, 0 already done, 1 failed" in p.stderr, p.stderr
    assert f"failed pets/broken.png: file://{tree}/pets/broken.png: not a readable image" in p.stderr
    assert_same_outputs(urls, local)
    assert not [f for f in urls.rglob(".*")], "temporary files left behind"
    p = cli(env, f"file://{tree}", f"file://{urls}", "--ray", ray_cluster)
    assert p.returncode == 3 and "0 done, 6 already done, 1 failed" in p.stderr, p.stderr


def test_without_ray_says_how_to_get_it(tree, tmp_path):
    """Where ray is installed, the same interpreter with ray made unimportable."""
    code = ("import sys; sys.modules['ray'] = None; from layermatte.cli import main; "
            f"sys.exit(main(['batch', {str(tree)!r}, {str(tmp_path / 'out')!r}, '--ray']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ))
    assert p.returncode == 2, p.stderr
    assert "pip install 'layermatte[ray]'" in p.stderr and "ray[data]>=" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
