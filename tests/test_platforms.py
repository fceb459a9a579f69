"""The platform layer's decisions for each OS, as units (macOS and Windows cannot
run here: the Windows ones also run for real under Wine in windows/test_wine.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layermatte.system import platforms


@pytest.fixture
def home(tmp_path, monkeypatch):
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "APPDATA", "LOCALAPPDATA",
                "TMPDIR", "GIMP3_DIRECTORY", "LAYERMATTE_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_macos_folders_are_where_the_editors_look(home, monkeypatch):
    monkeypatch.setattr(platforms, "OS", "macos")
    support = home / "Library" / "Application Support"
    gimp = platforms.gimp_locations()
    assert [g.plugin_root for g in gimp] == [support / "GIMP" / "3.0" / "plug-ins",
                                             support / "GIMP" / "3.2" / "plug-ins"]
    (krita,) = platforms.krita_locations()          # no Flatpak on macOS
    assert krita.plugin_root == support / "krita" / "pykrita"
    assert krita.kritarc == home / "Library" / "Preferences" / "kritarc"
    monkeypatch.setenv("TMPDIR", "/var/folders/xy/abc/T/")
    assert platforms.runtime_dir() == Path("/var/folders/xy/abc/T/layermatte")
    # macOS's limit for a unix socket path is 104 bytes; the per-user TMPDIR is ~50
    assert len(str(platforms.socket_path())) < 104
    assert platforms.default_endpoint().is_unix


def test_windows_folders_and_transport(home, monkeypatch, tmp_path):
    monkeypatch.setattr(platforms, "OS", "windows")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert [g.plugin_root for g in platforms.gimp_locations()] == [
        tmp_path / "Roaming" / "GIMP" / s / "plug-ins" for s in ("3.0", "3.2")]
    (krita,) = platforms.krita_locations()
    assert krita.plugin_root == tmp_path / "Roaming" / "krita" / "pykrita"
    assert krita.kritarc == tmp_path / "Local" / "kritarc"
    assert platforms.runtime_dir() == tmp_path / "Local" / "layermatte" / "run"
    assert not platforms.unix_sockets_supported()
    # nothing published yet: no address, so clients start the daemon
    ep = platforms.default_endpoint()
    assert ep.address == "" and ep.token_file == platforms.token_path()
    platforms.runtime_dir().mkdir(parents=True)
    platforms.publish_address("127.0.0.1:50123", 42)
    platforms.write_private(platforms.token_path(), "s3cret-token-of-the-user\n")
    ep = platforms.default_endpoint()
    assert ep.address == "127.0.0.1:50123" and ep.token() == "s3cret-token-of-the-user"
    assert json.loads(platforms.address_path().read_text())["pid"] == 42
    flags = platforms.detached_popen_kwargs()["creationflags"]
    assert flags & 0x08000000 and flags & 0x00000200     # CREATE_NO_WINDOW, new process group
    assert platforms.hidden_popen_kwargs() == {"creationflags": 0x08000000}


def test_linux_native_and_flatpak_folders(home, monkeypatch):
    monkeypatch.setattr(platforms, "OS", "linux")
    labels = {g.label: g.plugin_root for g in platforms.gimp_locations()}
    assert labels["GIMP 3.2"] == home / ".config" / "GIMP" / "3.2" / "plug-ins"
    assert labels["GIMP 3.2 (Flatpak)"] == (home / ".var" / "app" / "org.gimp.GIMP" / "config"
                                            / "GIMP" / "3.2" / "plug-ins")
    krita = {k.label: k for k in platforms.krita_locations()}
    assert krita["Krita"].kritarc == home / ".config" / "kritarc"
    assert krita["Krita (Flatpak)"].plugin_root == (home / ".var" / "app" / "org.kde.krita" / "data"
                                                    / "krita" / "pykrita")
    monkeypatch.setenv("GIMP3_DIRECTORY", str(home / "custom"))
    assert platforms.gimp_locations()[0].plugin_root == home / "custom" / "plug-ins"


def test_child_environment_drops_the_editors_python_and_bundle_settings():
    env = {"PATH": "/usr/bin", "HOME": "/h", "PYTHONPATH": "/opt/krita/lib/python3.13",
           "PYTHONHOME": "/opt/krita", "DYLD_LIBRARY_PATH": "/Applications/krita.app/x",
           "DYLD_FRAMEWORK_PATH": "/y", "LD_LIBRARY_PATH": "/cuda/lib64", "LANG": "C.UTF-8"}
    clean = platforms.clean_child_env(env)
    assert clean == {"PATH": "/usr/bin", "HOME": "/h", "LD_LIBRARY_PATH": "/cuda/lib64", "LANG": "C.UTF-8"}
    appimage = platforms.clean_child_env(dict(env, APPDIR="/tmp/.mount_krita", LD_LIBRARY_PATH="/tmp/.mount_krita/usr/lib"))
    assert "LD_LIBRARY_PATH" not in appimage and "PYTHONPATH" not in appimage
    assert env["PYTHONPATH"]           # the caller's mapping is not changed


def test_child_environment_lets_a_python_start_cleanly(tmp_path):
    """An editor's PYTHONHOME makes a child Python fail to start; cleaned, it starts."""
    bad = dict(os.environ, PYTHONHOME=str(tmp_path / "no-such-python"))
    broken = subprocess.run([sys.executable, "-c", "print('up')"], env=bad, capture_output=True, text=True)
    assert broken.returncode != 0
    ok = subprocess.run([sys.executable, "-c", "print('up')"], env=platforms.clean_child_env(bad),
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "up"


def test_flatpak_runs_the_program_on_the_host(monkeypatch):
    monkeypatch.setattr(platforms, "in_flatpak", lambda: True)
    assert platforms.host_command(["/home/u/.venv/bin/python", "-m", "layermatte", "pipe"])[:2] == \
        ["flatpak-spawn", "--host"]
    monkeypatch.setattr(platforms, "in_flatpak", lambda: False)
    assert platforms.host_command(["layermatte"]) == ["layermatte"]


def test_instance_lock_is_exclusive_across_processes(tmp_path):
    lock = platforms.InstanceLock(tmp_path / "d.lock")
    assert lock.acquire()
    other = subprocess.run([sys.executable, "-c",
                            "import sys; from layermatte.system.platforms import InstanceLock; "
                            f"sys.exit(0 if InstanceLock(__import__('pathlib').Path({str(tmp_path / 'd.lock')!r})).acquire() else 7)"])
    assert other.returncode == 7
    lock.release()
    again = subprocess.run(other.args)
    assert again.returncode == 0


def test_pid_alive():
    assert platforms.pid_alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not platforms.pid_alive(p.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="numpy asks for huge pages on Linux only")
def test_the_pipeline_keeps_numpy_arrays_on_small_pages():
    """A fresh process with numpy's huge-page advice turned on: importing the pipeline
    turns it off (platforms.small_pages_for_arrays; the switch returns its old state)."""
    code = ("import numpy as np; s = np._core.multiarray._set_madvise_hugepage; "
            "s(True); from layermatte.imaging import pipeline; print(s(False))")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]
