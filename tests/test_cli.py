"""The `layermatte` command line as a user runs it: files in, files out, exit codes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import iou, with_alpha
from layermatte.imaging.pipeline import MatteOptions


def lm(*args, env=None, input=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "layermatte", *map(str, args)], env=env,
                          input=input, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def astro_file(photos, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("in") / "astronaut.jpg"
    Image.fromarray(photos["astronaut"]).save(p, quality=95)
    return p


@pytest.fixture(scope="module")
def reference(daemon, astro_file):
    from layermatte.imaging import imageio
    with daemon.client() as c:
        return c.matte(imageio.read(astro_file).pixels).matte


@pytest.mark.parametrize("ext", ["png", "webp", "tif"])
def test_cut_writes_straight_alpha(daemon, astro_file, reference, tmp_path, ext):
    out = tmp_path / f"cut.{ext}"
    r = lm("cut", astro_file, out, "--socket", daemon.socket, "--no-autostart", env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    im = Image.open(out)
    assert im.mode == "RGBA" and im.size == (512, 512)
    arr = np.asarray(im)
    assert np.abs(arr[..., 3].astype(int) - reference).max() <= 1
    src = np.asarray(Image.open(astro_file))
    opaque = arr[..., 3] == 255
    # Straight alpha: opaque pixels keep their colour exactly (no premultiplication).
    assert np.abs(arr[opaque][:, :3].astype(int) - src[opaque]).max() <= 1
    assert list(tmp_path.glob(".*")) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes


def test_mask_only(daemon, astro_file, reference, tmp_path):
    out = tmp_path / "mask.png"
    r = lm("cut", astro_file, out, "--mask-only", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    m = np.asarray(Image.open(out))
    assert m.ndim == 2 and np.abs(m.astype(int) - reference).max() <= 1


def test_exif_orientation_icc_and_16_bit(daemon, photos, tmp_path):
    # EXIF orientation 6: stored landscape, displayed rotated 90° clockwise.
    src = tmp_path / "rotated.jpg"
    stored = np.ascontiguousarray(np.rot90(photos["cat"], 1))  # 451x300 stored as 300x451
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(stored).save(src, exif=exif, icc_profile=icc)
    out = tmp_path / "rot.png"
    assert lm("cut", src, out, "--socket", daemon.socket, env=daemon.env).returncode == 0
    im = Image.open(out)
    assert im.size == (451, 300)  # displayed orientation
    assert im.info.get("icc_profile") == icc
    # 16-bit PNG in -> 16-bit PNG out.
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    out16 = tmp_path / "deep_cut.png"
    r = lm("cut", deep, out16, "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    arr = cv2.imread(str(out16), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.shape == (512, 512, 4)
    assert arr[300, 300, 3] > 60000 and arr[30, 30, 3] < 8000


def test_errors_are_one_line_and_leave_no_file(daemon, astro_file, tmp_path):
    cases = [
        (("cut", tmp_path / "missing.jpg", tmp_path / "o.png"), "no such file"),
        (("cut", Path(__file__), tmp_path / "o.png"), "not a readable image"),
        (("cut", astro_file, tmp_path / "o.png", "--model", "nope"), "unknown model"),
        (("cut", astro_file, tmp_path / "o.bmp"), "unsupported output type"),
        (("cut", astro_file, tmp_path / "nodir" / "o.png"), "does not exist"),
    ]
    for args, words in cases:
        r = lm(*args, "--socket", daemon.socket, env=daemon.env)
        err = r.stderr.decode().strip()
        assert r.returncode == 2, (args, err)
        assert words in err and err.startswith("layermatte: error:") and len(err.splitlines()) == 1
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(Image.open(astro_file).tobytes()[:100])
    r = lm("cut", truncated, tmp_path / "o.png", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 2 and b"not a readable image" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_unreachable_daemon_without_autostart(tmp_path, astro_file):
    r = lm("cut", astro_file, tmp_path / "o.png", "--socket", tmp_path / "none.sock", "--no-autostart")
    assert r.returncode == 2 and b"not reachable" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_env_var_and_autostart(model_cache, astro_file, reference, tmp_path):
    """LAYERMATTE_SOCKET is honoured and a daemon is started when none runs."""
    import tempfile
    sock = Path(tempfile.mkdtemp(prefix="lm-")) / "auto" / "d.sock"
    env = dict(os.environ, LAYERMATTE_SOCKET=str(sock), LAYERMATTE_CACHE=str(model_cache))
    out = tmp_path / "auto.png"
    r = lm("cut", astro_file, out, "--mask-only", env=env)
    try:
        assert r.returncode == 0, r.stderr.decode()
        assert sock.exists()
        assert iou(np.asarray(Image.open(out)), reference) > 0.99
    finally:
        pid_file = sock.with_suffix(".pid")
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_local_mode_matches_daemon(model_cache, astro_file, reference, tmp_path):
    out = tmp_path / "local.png"
    r = lm("cut", astro_file, out, "--local", "--mask-only",
           env=dict(os.environ, LAYERMATTE_CACHE=str(model_cache)))
    assert r.returncode == 0, r.stderr.decode()
    assert np.abs(np.asarray(Image.open(out)).astype(int) - reference).max() <= 1


def test_models_commands(model_cache):
    env = dict(os.environ, LAYERMATTE_CACHE=str(model_cache))
    listing = lm("models", "list", env=env).stdout.decode()
    for name in ("isnet-general*", "isnet-general-int8", "rmbg-1.4", "rmbg-2.0", "birefnet-general",
                 "birefnet-general-lite", "modnet-portrait", "u2net", "u2netp"):
        assert name in listing
    assert "pulled" in listing
    path = lm("models", "path", env=env).stdout.decode().strip()
    assert Path(path).stat().st_size == 88_188_479
    assert b"ok (sha256 b6e8497b" in lm("models", "verify", env=env).stdout
    r = lm("models", "pull", "no-such", env=env)
    assert r.returncode == 2 and b"unknown model" in r.stderr


def test_pipe_round_trip(daemon, photos):
    rgba = np.dstack([photos["astronaut"], np.full((512, 512), 255, np.uint8)])
    with daemon.client() as c:
        reference = c.matte(rgba).matte
    r = lm("pipe", "--width", 512, "--height", 512, "--format", "RGBA8", "--socket", daemon.socket,
           env=daemon.env, input=rgba.tobytes())
    assert r.returncode == 0, r.stderr.decode()
    m = np.frombuffer(r.stdout, np.uint8).reshape(512, 512)
    assert np.abs(m.astype(int) - reference).max() <= 2
    assert b'"summary"' in r.stderr and b'"progress"' in r.stderr
    bad = lm("pipe", "--width", 512, "--height", 512, "--format", "RGBA8", "--socket", daemon.socket,
             env=daemon.env, input=b"\0" * 100)
    assert bad.returncode == 2 and b"stdin ended" in bad.stderr


def test_doctor_reports(daemon):
    r = lm("doctor", "--socket", daemon.socket, env=daemon.env)
    out = r.stdout.decode()
    assert r.returncode == 0
    assert "CPUExecutionProvider" in out and f"running (pid {daemon.proc.pid}); loaded: isnet-general" in out
    assert "gimp" in out and "krita" in out
    r = lm("doctor", "--json", "--socket", daemon.socket, env=daemon.env)
    import json
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 0 and checks["daemon"]["value"].startswith("running")
    assert not checks["runtime dir"]["problem"]


def test_editor_client_gets_decontaminated_colours_on_both_transports(daemon, photos, monkeypatch):
    """plugins/common/layermatte_lite.py: gRPC and the pipe fallback agree."""
    import shutil
    import tempfile
    lite_dir = Path(tempfile.mkdtemp(prefix="lite-"))
    shutil.copy(Path(__file__).parent.parent / "plugins" / "common" / "layermatte_lite.py", lite_dir)
    shutil.copy(Path(__file__).parent.parent / "daemon" / "layermatte" / "system" / "platforms.py",
                lite_dir / "layermatte_platforms.py")
    from layermatte.system.plugin_install import descriptor_file
    shutil.copy(descriptor_file(), lite_dir)
    monkeypatch.syspath_prepend(str(lite_dir))
    import layermatte_lite as lite
    monkeypatch.setenv("LAYERMATTE_SOCKET", str(daemon.socket))
    monkeypatch.setenv("LAYERMATTE_BIN", str(Path(sys.executable).parent / "layermatte"))
    rgba = np.dstack([photos["cat"], np.full(photos["cat"].shape[:2], 255, np.uint8)])
    h, w = rgba.shape[:2]
    opts = {"foreground": True, "decontaminate": True}
    m1, s1 = lite.matte(w, h, "RGBA8", rgba.tobytes(), options=opts)
    monkeypatch.setenv("LAYERMATTE_TRANSPORT", "pipe")
    m2, s2 = lite.matte(w, h, "RGBA8", rgba.tobytes(), options=opts)
    assert m1 == m2 and s1["foreground"] == s2["foreground"]
    fg = np.frombuffer(s1["foreground"], np.uint8).reshape(h, w, 3)
    matte = np.frombuffer(m1, np.uint8).reshape(h, w)
    band = (matte > 20) & (matte < 230)
    assert band.sum() > 100 and np.abs(fg[band].astype(int) - photos["cat"][band]).mean() > 2


def test_editor_client_hands_big_layers_over_in_a_file(daemon, photos, monkeypatch):
    """The plug-ins' client on the unix socket: the layer goes over in /dev/shm
    (the daemon's fast path), the file is removed, the matte is the streamed one."""
    import shutil
    import tempfile
    lite_dir = Path(tempfile.mkdtemp(prefix="lite-"))
    shutil.copy(Path(__file__).parent.parent / "plugins" / "common" / "layermatte_lite.py", lite_dir)
    shutil.copy(Path(__file__).parent.parent / "daemon" / "layermatte" / "system" / "platforms.py",
                lite_dir / "layermatte_platforms.py")
    from layermatte.system.plugin_install import descriptor_file
    shutil.copy(descriptor_file(), lite_dir)
    import importlib.util   # a module of its own, not whichever copy an earlier test imported
    spec = importlib.util.spec_from_file_location("layermatte_lite_file", lite_dir / "layermatte_lite.py")
    lite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lite)
    for name in ("LAYERMATTE_ADDRESS", "LAYERMATTE_TRANSPORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAYERMATTE_SOCKET", str(daemon.socket))
    monkeypatch.setenv("LAYERMATTE_BIN", str(Path(sys.executable).parent / "layermatte"))
    assert lite.grpc_available() and lite.resolve_address() == daemon.address
    made, answers = [], []
    real, real_answer = lite._shared_file, lite._empty_file
    monkeypatch.setattr(lite, "_shared_file", lambda planes: made.append(real(planes)) or made[-1])
    monkeypatch.setattr(lite, "_empty_file", lambda: answers.append(real_answer()) or answers[-1])
    w, h = 1280, 900   # a matte of 1 MiB and more comes back in a file too
    rgba = with_alpha(cv2.resize(photos["astronaut"], (w, h)))
    opts = {"foreground": True, "decontaminate": True}
    matte, summary = lite.matte(w, h, "RGBA8", rgba.tobytes(), options=opts)
    assert len(made) == 1 and made[0] and made[0].startswith("/dev/shm/")
    assert len(answers) == 1 and answers[0] and answers[0].startswith("/dev/shm/")
    assert not Path(made[0]).exists() and not Path(answers[0]).exists()
    assert "result_file " + answers[0] not in daemon.log.read_text()   # it was used
    with daemon.client(tcp=True) as c:
        streamed = c.matte(rgba, options=MatteOptions(decontaminate=True, return_foreground=True))
    assert matte == streamed.matte.tobytes()
    assert summary["foreground"] == streamed.foreground.tobytes()
