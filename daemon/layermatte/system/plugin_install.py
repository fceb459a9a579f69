"""Putting the plug-ins where GIMP and Krita look, and taking them away again.

Only files layermatte wrote are ever touched: each install leaves a manifest
(layermatte-install.json) in its plug-in folder with the sha256 of every file
it wrote. Reinstall and uninstall remove only files listed there whose bytes
are still ours; a folder without our manifest is refused, never deleted.
kritarc is edited line by line (kritarc_edit), so whatever Krita wrote stays.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import kritarc_edit, platforms
from ..errors import InvalidInput
from .platforms import EditorLocation

PACKAGE_DIR = Path(__file__).resolve().parent.parent   # the layermatte package
MANIFEST = "layermatte-install.json"
KRITA_KEY = "enable_layermatte_krita"
# Our folder / files inside the editor's plug-in root.
FOLDER = {"gimp": "layermatte", "krita": "layermatte_krita"}
KRITA_DESKTOP = "layermatte_krita.desktop"
NAMES = {"gimp": "GIMP", "krita": "Krita"}


@dataclass
class Result:
    """What an install or uninstall did, for people and for --json."""
    editor: str
    label: str
    folder: Path
    files: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # changed by the user: left alone
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"editor": self.editor, "label": self.label, "folder": str(self.folder),
                "files": self.files, "kept": self.kept, "notes": self.notes}


def plugins_source() -> Path:
    """Plug-in sources: inside an installed wheel, or the repository checkout."""
    for candidate in (PACKAGE_DIR / "_plugins", PACKAGE_DIR.parent.parent / "plugins"):
        if (candidate / "common" / "layermatte_lite.py").is_file():
            return candidate
    raise InvalidInput("the plug-in files are missing from this installation of layermatte; "
                       "reinstall it (pip install --force-reinstall layermatte)")


def descriptor_file() -> Path:
    return PACKAGE_DIR / "proto" / "layermatte_v1.desc"


def program_command() -> list[str]:
    """How the plug-ins start this very layermatte (not whichever is first on PATH)."""
    return [str(Path(sys.executable).absolute()), "-m", "layermatte"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


# -- where -----------------------------------------------------------------------
def locations(editor: str) -> list[EditorLocation]:
    return platforms.gimp_locations() if editor == "gimp" else platforms.krita_locations()


def discover(editor: str) -> list[EditorLocation]:
    """The editor's profiles that exist (the editor has run there). None at all:
    the native default folders, so installing before the first start works."""
    every = locations(editor)
    found = [loc for loc in every if loc.profile.is_dir()]
    return found or [loc for loc in every if loc.flatpak_app is None]


def dest_location(editor: str, dest: Path) -> EditorLocation:
    """--dest is the editor's plug-in folder (GIMP's plug-ins, Krita's pykrita), for both."""
    dest = dest.expanduser().absolute()
    if dest.name == FOLDER[editor] and not (dest / MANIFEST).exists():
        raise InvalidInput(f"--dest is the editor's plug-in folder, not ours: use {dest.parent}")
    rc = None
    if editor == "krita":   # a pykrita folder's kritarc, when it is the usual layout
        for loc in platforms.krita_locations():
            if loc.plugin_root == dest:
                rc = loc.kritarc
    return EditorLocation(editor, f"{NAMES[editor]} (--dest)", dest, dest, kritarc=rc)


def status(editor: str) -> list[tuple[EditorLocation, dict | None]]:
    """Every known location with the manifest found there (None: not installed)."""
    return [(loc, _read_manifest(loc.plugin_root / FOLDER[editor])) for loc in locations(editor)]


# -- what ------------------------------------------------------------------------
def _payload(editor: str) -> dict[str, bytes | Path]:
    """Relative path (from the plug-in root) -> source file or bytes."""
    src = plugins_source()
    folder = FOLDER[editor]
    out: dict[str, bytes | Path] = {}
    tree = src / editor / folder
    for f in sorted(tree.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
            out[f"{folder}/{f.relative_to(tree).as_posix()}"] = f
    if editor == "krita":
        out[KRITA_DESKTOP] = src / "krita" / KRITA_DESKTOP
    common = src / "common"
    out[f"{folder}/layermatte_lite.py"] = common / "layermatte_lite.py"
    out[f"{folder}/layermatte_platforms.py"] = Path(platforms.__file__)
    desc = descriptor_file()
    if not desc.is_file():
        raise InvalidInput(f"{desc} is missing: this installation of layermatte is incomplete")
    out[f"{folder}/layermatte_v1.desc"] = desc
    out[f"{folder}/layermatte_lite.json"] = json.dumps(
        {"command": program_command(), "version": __version__}, indent=2).encode()
    return out


def _changed(root: Path, manifest: dict) -> list[str]:
    """Files of a manifest whose bytes are no longer what layermatte wrote."""
    return [rel for rel, digest in manifest["files"].items()
            if (root / rel).is_file() and _sha(root / rel) != digest]


def _remove_ours(root: Path, manifest: dict) -> None:
    for rel, digest in manifest["files"].items():
        path = root / rel
        if path.is_file() and _sha(path) == digest:
            path.unlink()
    for d in sorted({(root / rel).parent for rel in manifest["files"]},
                    key=lambda p: len(p.parts), reverse=True):
        while d != root and root in d.parents and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


def install(editor: str, loc: EditorLocation) -> Result:
    """Checks everything first, so a refusal changes nothing."""
    root = loc.plugin_root
    ours = root / FOLDER[editor]
    result = Result(editor, loc.label, ours)
    payload = _payload(editor)
    old = _read_manifest(ours)
    if old is None:
        clash = [rel for rel in [FOLDER[editor], *payload] if (root / rel).exists()]
        if clash:
            raise InvalidInput(f"{root / clash[0]} exists and was not installed by `layermatte "
                               "install` (no manifest): move it away first; nothing was changed")
    else:
        changed = _changed(root, old)
        if changed:
            raise InvalidInput(f"{root / changed[0]} was changed after layermatte installed it: "
                               "move it away first; nothing was changed")
        _remove_ours(root, old)
    files = {}
    for rel, src in payload.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes() if isinstance(src, Path) else src
        target.write_bytes(data)
        if target.suffix == ".py":
            target.chmod(0o755 if target.name == "layermatte.py" else 0o644)
        files[rel] = hashlib.sha256(data).hexdigest()
    manifest = {"editor": editor, "version": __version__, "files": files}
    if editor == "krita" and loc.kritarc is not None:
        added = kritarc_edit.set_key(loc.kritarc, KRITA_KEY, "true")
        if old and old.get("kritarc", {}).get("added_section"):
            added = True   # still ours to take away on uninstall
        manifest["kritarc"] = {"path": str(loc.kritarc), "added_section": added}
        result.notes.append(f"enabled the plug-in in {loc.kritarc}")
    (ours / MANIFEST).write_text(json.dumps(manifest, indent=2))
    result.files = sorted(files)
    return result


def uninstall(editor: str, loc: EditorLocation) -> Result:
    root = loc.plugin_root
    ours = root / FOLDER[editor]
    result = Result(editor, loc.label, ours)
    manifest = _read_manifest(ours)
    if manifest is None:
        if ours.exists():
            raise InvalidInput(f"{ours} was not installed by `layermatte install` (no manifest); "
                               "left as it is")
        result.notes.append("not installed here")
        return result
    result.kept = _changed(root, manifest)
    (ours / MANIFEST).unlink()
    _remove_ours(root, manifest)
    result.files = sorted(set(manifest["files"]) - set(result.kept))
    if result.kept:
        result.notes.append("left files you changed: " + ", ".join(result.kept))
    rc = manifest.get("kritarc")
    if rc:
        kritarc_edit.remove_key(Path(rc["path"]), KRITA_KEY, rc.get("added_section", False))
        result.notes.append(f"removed {KRITA_KEY} from {rc['path']}")
    return result


def flatpak_grant(app: str) -> list[str]:
    """The override that lets the sandboxed editor run the host's layermatte."""
    return ["flatpak", "override", "--user", "--talk-name=org.freedesktop.Flatpak", app]



def report(editor: str) -> list[dict]:
    """Each location of the editor: found or not, plug-in version there (doctor)."""
    out = []
    for loc, manifest in status(editor):
        if not loc.profile.is_dir() and manifest is None:
            continue
        out.append({"editor": editor, "label": loc.label, "folder": str(loc.plugin_root / FOLDER[editor]),
                    "installed": manifest is not None,
                    "version": (manifest or {}).get("version"),
                    "current": (manifest or {}).get("version") == __version__})
    return out
