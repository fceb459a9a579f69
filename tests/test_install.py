"""`layermatte install|uninstall`: the right folders, nothing of anyone else's
touched, kritarc kept byte for byte but for our key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = [sys.executable, "-m", "layermatte"]
# What Krita's own kritarc looks like: keys before any section, a repeated
# section, a line no INI parser accepts, CRLF as written on Windows.
KRITARC = (b"ArtisticColorSelector=true\r\nBackgroundColor=#000000\r\ncolorsettings/workingSpace=sRGB\r\n"
           b"\r\n[General]\r\nrecent=a.kra,b.kra\r\nstrange line without equals\r\n"
           b"[python]\r\nenable_ai_diffusion=true\r\n\r\n[General]\r\nwindowState=@ByteArray(\\0\\0)\r\n")


def lm(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "GIMP3"))}
    env["HOME"] = str(home)
    p = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_gimp_goes_into_every_profile_found(home):
    for prof in (home / ".config/GIMP/3.0", home / ".config/GIMP/3.2",
                 home / ".var/app/org.gimp.GIMP/config/GIMP/3.2"):
        prof.mkdir(parents=True)
    out = lm(home, "install", "gimp", "--json").stdout
    done = {r["label"]: Path(r["folder"]) for r in json.loads(out)}
    assert set(done) == {"GIMP 3.0", "GIMP 3.2", "GIMP 3.2 (Flatpak)"}
    for folder in done.values():
        assert (folder / "layermatte.py").stat().st_mode & 0o111       # GIMP runs it
        assert (folder / "layermatte_platforms.py").is_file() and (folder / "layermatte_v1.desc").is_file()
        rec = json.loads((folder / "layermatte_lite.json").read_text())
        assert rec["command"][0] == str(Path(sys.executable).absolute())   # the one that ran
    doctor = lm(home, "doctor").stdout
    assert "GIMP 3.0" in doctor and "GIMP 3.2 (Flatpak)" in doctor and "plug-in 0." in doctor
    text = lm(home, "install", "gimp").stdout
    assert "run again with --flatpak" in text     # the sandbox needs a grant; said, not done silently


def test_nothing_of_anyone_else_is_touched(home):
    plugins = home / ".config/GIMP/3.0/plug-ins"
    (plugins / "other-plugin").mkdir(parents=True)
    (plugins / "other-plugin" / "other-plugin.py").write_text("print('theirs')\n")
    before = tree(plugins)
    lm(home, "install", "gimp", "--dest", str(plugins))
    lm(home, "install", "gimp", "--dest", str(plugins))         # again: replaces only ours
    lm(home, "uninstall", "gimp", "--dest", str(plugins))
    assert tree(plugins) == before

    docs = home / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    p = lm(home, "uninstall", "gimp", "--dest", str(docs))
    assert "not installed" in p.stdout and (docs / "thesis.txt").read_text() == "years of work"
    # a folder named like ours without our manifest is not ours
    (docs / "layermatte").mkdir()
    (docs / "layermatte" / "notes.txt").write_text("mine")
    for action in ("install", "uninstall"):
        p = lm(home, action, "gimp", "--dest", str(docs), ok=False)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "layermatte install" in p.stderr
        assert (docs / "layermatte" / "notes.txt").read_text() == "mine"
    assert sorted(tree(docs)) == ["layermatte/notes.txt", "thesis.txt"]


def test_a_file_the_user_changed_is_kept(home):
    plugins = home / "plug-ins"
    lm(home, "install", "gimp", "--dest", str(plugins))
    adapter = plugins / "layermatte" / "gimp_adapter.py"
    adapter.write_text(adapter.read_text() + "# my fix\n")
    p = lm(home, "install", "gimp", "--dest", str(plugins), ok=False)
    assert p.returncode == 2 and "changed after layermatte installed it" in p.stderr
    assert adapter.read_text().endswith("# my fix\n")
    p = lm(home, "uninstall", "gimp", "--dest", str(plugins))
    assert "left files you changed" in p.stdout
    assert sorted(tree(plugins)) == ["layermatte/gimp_adapter.py"]


def test_dest_means_the_plugin_folder_for_both_editors(home):
    pykrita = home / "pykrita"
    lm(home, "install", "krita", "--dest", str(pykrita))
    assert (pykrita / "layermatte_krita" / "__init__.py").is_file()
    assert (pykrita / "layermatte_krita.desktop").is_file()
    lm(home, "uninstall", "krita", "--dest", str(pykrita))
    assert tree(pykrita) == {}
    p = lm(home, "install", "gimp", "--dest", str(home / "plug-ins" / "layermatte"), ok=False)
    assert p.returncode == 2 and f"use {home / 'plug-ins'}" in p.stderr
    assert not (home / "plug-ins").exists()
    lm(home, "install", "gimp", "--dest", str(home / "plug-ins"))
    assert (home / "plug-ins" / "layermatte" / "layermatte.py").is_file()


@pytest.mark.parametrize("original", [KRITARC, KRITARC.replace(b"\r\n", b"\n"),
                                      b"[General]\nfoo=1\n", b""], ids=["crlf", "lf", "no-python", "empty"])
def test_kritarc_keeps_every_byte_but_our_key(home, original):
    rc = home / ".config" / "kritarc"
    rc.parent.mkdir(parents=True)
    (home / ".local/share/krita").mkdir(parents=True)      # Krita has run
    if original:
        rc.write_bytes(original)
    lm(home, "install", "krita")
    after = rc.read_bytes()
    assert b"enable_layermatte_krita=true" in after
    lines = after.splitlines(keepends=True)
    ours = [i for i, line in enumerate(lines) if line.startswith(b"enable_layermatte_krita")]
    assert len(ours) == 1 and lines[ours[0] - 1].strip() == b"[python]"
    without = b"".join(line for i, line in enumerate(lines) if i not in ours)
    nl = b"\r\n" if b"\r\n" in original else b"\n"
    if b"[python]" in original:
        assert without == original          # our line is the only change
    else:                                   # plus the section it needs, at the end
        assert without == original + (nl if original else b"") + b"[python]" + nl
    lm(home, "install", "krita")                             # reinstall: still one key
    assert rc.read_bytes() == after
    lm(home, "uninstall", "krita")
    assert (rc.read_bytes() if rc.exists() else b"") == original


def test_kritarc_written_by_krita_survives(home, tmp_path):
    """A settings file written by real Krita (kritarunner writes kritarunnerrc with the
    same writer as kritarc) round-trips through install/uninstall."""
    sys.path.insert(0, str(Path(__file__).parent / "editors"))
    from root import bind, editor_root, run_in_root
    editor_root()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"lm-krc-{os.getpid()}"
    work.mkdir(exist_ok=True)
    work.chmod(0o755)
    (work / "kr.py").write_text("def main(args):\n    open(args[0], 'w').write('ran')\n")
    with bind(work):
        run_in_root(["kritarunner", "-s", "kr", "-f", "main", str(work / "ran")], home=work / "h",
                    env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(work)}, timeout=180)
    written = work / "h" / ".config" / "kritarunnerrc"
    assert (work / "ran").exists() and written.is_file()
    original = written.read_bytes()
    rc = home / ".config" / "kritarc"
    rc.parent.mkdir(parents=True)
    rc.write_bytes(original)
    (home / ".local/share/krita").mkdir(parents=True)
    lm(home, "install", "krita")
    assert rc.read_bytes().count(b"enable_layermatte_krita=true") == 1
    lm(home, "uninstall", "krita")
    assert rc.read_bytes() == original
