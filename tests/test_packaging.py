"""The release as a user gets it: sdist and wheel built from a fresh clone,
installed into a fresh venv far from the checkout, at the declared minimums of
the generated code's runtimes, and every command run from there."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 900)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def declared_minimums() -> dict[str, str]:
    """name -> minimum version, from pyproject's dependencies (>= bounds)."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(?:==|>=)\s*([0-9][^,;\s]*)", dep)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """python -m build in a fresh clone of HEAD; the clone is left as it was."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to clone")
    work = tmp_path_factory.mktemp("release")
    clone = work / "clone"
    run(["git", "clone", "--quiet", "--no-hardlinks", ROOT, clone])
    run([sys.executable, "-m", "build", "--outdir", work / "dist", clone])
    status = run(["git", "status", "--porcelain"], cwd=clone).stdout
    assert status == "", status
    assert not (clone / "build").exists() and not (clone / "daemon" / "layermatte" / "proto").exists()
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return {"work": work, "wheel": wheel, "sdist": sdist}


def test_sdist_carries_what_a_build_needs(built):
    names = tarfile.open(built["sdist"]).getnames()
    top = names[0].split("/")[0]
    for needed in ("proto/layermatte/v1/matting.proto", "plugins/common/layermatte_lite.py",
                   "plugins/gimp/layermatte/layermatte.py", "samples/astronaut.jpg", "LICENSE", "setup.py"):
        assert f"{top}/{needed}" in names, needed
    assert not any("/daemon/layermatte/proto/" in n for n in names)    # generated at build time only


def test_wheel_carries_plugins_descriptor_and_generated_code(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    for needed in ("layermatte/_plugins/common/layermatte_lite.py",
                   "layermatte/_plugins/krita/layermatte_krita.desktop",
                   "layermatte/_plugins/gimp/layermatte/gimp_adapter.py",
                   "layermatte/proto/layermatte_v1.desc", "layermatte/proto/layermatte/v1/matting_pb2.py",
                   "layermatte/system/platforms.py"):
        assert needed in names, needed
    meta = zipfile.ZipFile(built["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Python: >=3.11" in meta and "License-Expression: Apache-2.0" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # the generated code asks for exactly the runtimes the metadata promises
    gen = zipfile.ZipFile(built["wheel"]).read("layermatte/proto/layermatte/v1/matting_pb2.py").decode()
    grpc_gen = zipfile.ZipFile(built["wheel"]).read("layermatte/proto/layermatte/v1/matting_pb2_grpc.py").decode()
    proto_v = re.search(r"Protobuf Python Version: ([0-9.]+)", gen).group(1)
    grpc_v = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_gen).group(1)
    mins = declared_minimums()
    assert mins["protobuf"] == proto_v and mins["grpcio"] == grpc_v


@pytest.fixture(scope="module")
def fresh(built):
    """A venv outside the checkout with the wheel installed at the declared minimums
    of grpcio, protobuf and the grpc services (the versions the generated code needs)."""
    venv = built["work"] / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    mins = declared_minimums()
    pins = [f"{name}=={mins[name]}" for name in ("grpcio", "protobuf", "grpcio-health-checking",
                                                 "grpcio-reflection")]
    run([py, "-m", "pip", "install", "--quiet", f"{built['wheel']}[cpu]", *pins])
    home = built["work"] / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "LAYERMATTE_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:/usr/bin:/bin")
    return {"venv": venv, "exe": venv / "bin" / "layermatte", "env": env, "home": home, "py": py}


def test_fresh_venv_runs_every_command(fresh, daemon):
    env, exe = fresh["env"], fresh["exe"]
    cwd = fresh["home"]
    versions = run([fresh["py"], "-c", "import grpc, google.protobuf as p; print(grpc.__version__, p.__version__)"],
                   env=env, cwd=cwd).stdout.split()
    mins = declared_minimums()
    assert versions == [mins["grpcio"], mins["protobuf"]]
    assert run([exe, "--version"], env=env, cwd=cwd).stdout.strip().startswith("layermatte 0.")
    before = run([exe, "doctor", "--no-probe"], env=env, cwd=cwd).stdout
    assert re.search(r"^GIMP +no profile found", before, re.M), before
    models = run([exe, "models", "list"], env=env, cwd=cwd).stdout
    assert "isnet-general" in models
    # the plug-ins come out of the wheel, not the checkout
    gimp = json.loads(run([exe, "install", "gimp", "--json"], env=env, cwd=cwd).stdout)
    assert {r["label"] for r in gimp} >= {"GIMP 3.0", "GIMP 3.2"}
    folder = Path(gimp[0]["folder"])
    assert (folder / "layermatte.py").read_bytes() == (ROOT / "plugins/gimp/layermatte/layermatte.py").read_bytes()
    assert json.loads((folder / "layermatte_lite.json").read_text())["command"][0] == str(fresh["py"])
    run([exe, "install", "krita"], env=env, cwd=cwd)
    assert (fresh["home"] / ".local/share/krita/pykrita/layermatte_krita.desktop").is_file()
    assert b"enable_layermatte_krita=true" in (fresh["home"] / ".config/kritarc").read_bytes()
    after = run([exe, "doctor", "--no-probe"], env=env, cwd=cwd).stdout
    assert re.search(rf"^GIMP 3\.0 +plug-in 0\.\S+; {re.escape(str(folder))}$", after, re.M), after
    assert re.search(r"^Krita\S* .*plug-in 0\.", after, re.M), after
    # a real matte through the daemon, at the minimum grpc/protobuf runtimes
    import numpy as np
    from PIL import Image
    import skimage.data
    Image.fromarray(skimage.data.astronaut()[::2, ::2]).save(cwd / "a.png")
    run([exe, "cut", "a.png", "m.png", "--mask-only", "--socket", str(daemon.socket)], env=env, cwd=cwd)
    matte = np.asarray(Image.open(cwd / "m.png"))
    assert matte.shape == (256, 256) and 0.1 < (matte > 128).mean() < 0.9
    for editor in ("gimp", "krita"):
        run([exe, "uninstall", editor], env=env, cwd=cwd)
    assert not folder.exists()


def test_gpu_extra_resolves_to_exactly_one_runtime(built):
    """pip's own resolver, in a fresh venv: [gpu] brings onnxruntime-gpu and no onnxruntime."""
    venv = built["work"] / "gpu-venv"
    run([sys.executable, "-m", "venv", venv])
    report = built["work"] / "gpu.json"
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--dry-run", "--report", report,
         f"{built['wheel']}[gpu]"])
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_pipx_installs_from_the_wheel(built, tmp_path):
    pipx = shutil.which("pipx") or (Path(sys.executable).parent / "pipx")
    if not Path(pipx).exists():
        pytest.skip("pipx is not installed (pip install pipx)")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))
    run([pipx, "install", f"{built['wheel']}[cpu]"], env=env)
    out = run([tmp_path / "bin" / "layermatte", "--version"], env=env).stdout
    assert out.startswith("layermatte 0.")
