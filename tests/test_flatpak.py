"""The Flatpak route, in a simulated sandbox: the editor's Python (no grpc) in
its own mount namespace and root, without the host's layermatte, its venv, the
daemon's socket folder or the host's /dev/shm, and with /.flatpak-info. The
plug-ins' client must reach the host's program through `flatpak-spawn --host`.

The stand-in for flatpak-spawn enters the host's mount namespace (what the
real one asks the portal to do); everything else is the real code path.
Needs root (mount namespaces); skipped with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from layermatte.imaging.pipeline import MatteOptions
from layermatte.system.plugin_install import descriptor_file

ROOT = Path(__file__).resolve().parent.parent
EDITOR_PYTHON = "/usr/bin/python3"          # Debian's, without grpc: like the Flatpak's
FLATPAK_SPAWN = """#!/bin/sh
# Stand-in for flatpak-spawn: run the command in the host's mount namespace
# with the host's environment, as the real one does through the portal.
[ "$1" = "--host" ] || { echo "flatpak-spawn: only --host is simulated" >&2; exit 1; }
shift
while [ "${1#--}" != "$1" ]; do shift; done
exec nsenter --mount=/proc/HOSTPID/ns/mnt -- env -i PATH=/usr/bin:/bin HOME=HOSTHOME "$@"
"""
CLIENT = """
import json, sys
sys.path.insert(0, "/plug")
import layermatte_lite as lite
assert lite.platforms.in_flatpak(), "not in the simulated sandbox"
data = open("/plug/layer.rgba", "rb").read()
w, h = json.load(open("/plug/size.json"))
try:
    matte, summary = lite.matte(w, h, "RGBA8", data, options={})
except lite.LayermatteError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
open("/plug/matte.gray", "wb").write(matte)
print(json.dumps({"ok": True}))
"""


def sandbox_ok() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a mount namespace"
    for tool in ("unshare", "nsenter", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path(EDITOR_PYTHON).exists():
        return f"{EDITOR_PYTHON} is missing"
    if subprocess.run([EDITOR_PYTHON, "-c", "import grpc"], capture_output=True).returncode == 0:
        return f"{EDITOR_PYTHON} has grpc: it would not stand for a Flatpak editor's Python"
    return None


def run_sandboxed(plug: Path, granted: bool, socket: Path, missing: bool = False) -> dict:
    """The client in a fresh mount namespace rooted at an empty folder that has /usr,
    /etc, /proc and /dev of the host, a private /dev/shm and /tmp, and the plug-in."""
    box = plug.parent / "box"
    box.mkdir(exist_ok=True)
    bindir = plug / "bin"
    bindir.mkdir(exist_ok=True)
    spawn = bindir / "flatpak-spawn"
    if missing:
        spawn.unlink(missing_ok=True)
    elif granted:
        spawn.write_text(FLATPAK_SPAWN.replace("HOSTPID", str(os.getpid()))
                         .replace("HOSTHOME", str(plug.parent / "hosthome")))
        spawn.chmod(0o755)
    else:   # what the portal answers without --talk-name=org.freedesktop.Flatpak
        spawn.write_text("#!/bin/sh\necho 'Portal call failed: org.freedesktop.DBus.Error.ServiceUnknown: "
                         "The name org.freedesktop.Flatpak was not provided by any .service files' >&2\nexit 1\n")
        spawn.chmod(0o755)
    script = textwrap.dedent(f"""
        set -e
        B={box}
        mkdir -p $B/usr $B/etc $B/proc $B/dev $B/tmp $B/plug
        ln -sfn usr/bin $B/bin; ln -sfn usr/lib $B/lib; ln -sfn usr/lib64 $B/lib64
        mount --rbind /usr $B/usr; mount --bind /etc $B/etc; mount -t proc proc $B/proc
        mount --rbind /dev $B/dev; mount -t tmpfs tmpfs $B/dev/shm; mount -t tmpfs tmpfs $B/tmp
        mount --bind {plug} $B/plug
        touch $B/.flatpak-info
        exec chroot $B /usr/bin/env -i PATH=/plug/bin:/usr/bin:/bin HOME=/tmp \
            LAYERMATTE_TRANSPORT=pipe LAYERMATTE_SOCKET={socket} {EDITOR_PYTHON} /plug/client.py
    """)
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plug(tmp_path_factory, photos):
    why = sandbox_ok()
    if why:
        pytest.skip(f"Flatpak simulation: {why}")
    base = tmp_path_factory.mktemp("flatpak")
    (base / "hosthome").mkdir()
    plug = base / "plug"
    plug.mkdir()
    shutil.copy(ROOT / "plugins" / "common" / "layermatte_lite.py", plug)
    shutil.copy(ROOT / "daemon" / "layermatte" / "system" / "platforms.py", plug / "layermatte_platforms.py")
    shutil.copy(descriptor_file(), plug)
    # what `layermatte install` records: this (host) interpreter, invisible in the sandbox
    (plug / "layermatte_lite.json").write_text(json.dumps(
        {"command": [str(Path(sys.executable).absolute()), "-m", "layermatte"]}))
    rgba = np.dstack([photos["coffee"], np.full(photos["coffee"].shape[:2], 255, np.uint8)])
    (plug / "layer.rgba").write_bytes(rgba.tobytes())
    (plug / "size.json").write_text(json.dumps([rgba.shape[1], rgba.shape[0]]))
    (plug / "client.py").write_text(CLIENT)
    return plug, rgba


def test_sandboxed_editor_gets_the_hosts_matte(plug, daemon):
    folder, rgba = plug
    assert not str(daemon.socket).startswith(str(folder))     # the sandbox cannot see the socket
    result = run_sandboxed(folder, granted=True, socket=daemon.socket)
    assert result == {"ok": True}
    h, w = rgba.shape[:2]
    got = np.frombuffer((folder / "matte.gray").read_bytes(), np.uint8).reshape(h, w)
    with daemon.client() as c:
        want = c.matte(rgba, options=MatteOptions()).matte
    assert np.abs(got.astype(int) - want).max() <= 1
    assert 0.05 < (got > 128).mean() < 0.95


@pytest.mark.parametrize("spawn", ["refused", "missing"])
def test_without_the_grant_the_editor_says_what_to_do(plug, daemon, spawn):
    folder, _ = plug
    (folder / "matte.gray").unlink(missing_ok=True)
    result = run_sandboxed(folder, granted=False, socket=daemon.socket, missing=spawn == "missing")
    assert "flatpak" in result["error"].lower() and "--flatpak" in result["error"]
    if spawn == "refused":
        assert "Portal call failed" in result["error"]     # the sandbox's own words
    assert not (folder / "matte.gray").exists()
