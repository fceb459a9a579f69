"""layermatte install|uninstall gimp|krita: copy a plug-in where the editor looks.

The plug-in gets the shared editor client (layermatte_lite.py), the contract's
descriptor set, and a small JSON file recording how to run this `layermatte`
(so the editor finds it even when its PATH differs).
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import InvalidInput

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def plugins_source() -> Path:
    """Plug-in sources: inside an installed wheel, or the repository checkout."""
    for candidate in (PACKAGE_DIR / "_plugins", PACKAGE_DIR.parent.parent / "plugins"):
        if (candidate / "common" / "layermatte_lite.py").is_file():
            return candidate
    raise InvalidInput("plug-in files are missing from this installation")


def descriptor_file() -> Path:
    return PACKAGE_DIR / "proto" / "layermatte_v1.desc"


def gimp_dir() -> Path:
    base = os.environ.get("GIMP3_DIRECTORY") or str(Path.home() / ".config" / "GIMP" / "3.0")
    return Path(base) / "plug-ins" / "layermatte"


def krita_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "krita" / "pykrita"


def kritarc() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kritarc"


def register(sub):
    for action in ("install", "uninstall"):
        p = sub.add_parser(action, help=f"{action} the GIMP 3 or Krita 5 plug-in")
        p.add_argument("editor", choices=["gimp", "krita"])
        p.add_argument("--dest", type=Path, help="plug-in folder (default: the editor's user folder)")
        p.set_defaults(run=run, action=action)


def _command() -> list[str]:
    exe = shutil.which("layermatte")
    return [exe] if exe else [sys.executable, "-m", "layermatte"]


def _add_common(target: Path) -> None:
    src = plugins_source() / "common"
    shutil.copy2(src / "layermatte_lite.py", target / "layermatte_lite.py")
    shutil.copy2(descriptor_file(), target / "layermatte_v1.desc")
    (target / "layermatte_lite.json").write_text(json.dumps({"command": _command()}, indent=2))


def install(editor: str, dest: Path | None = None) -> Path:
    src = plugins_source() / editor
    if editor == "gimp":
        target = dest or gimp_dir()
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src / "layermatte", target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "layermatte.py").chmod(0o755)
        _add_common(target)
        return target
    root = dest or krita_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / "layermatte_krita"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src / "layermatte_krita", target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(src / "layermatte_krita.desktop", root / "layermatte_krita.desktop")
    _add_common(target)
    if dest is None:
        set_krita_enabled(kritarc(), True)
    return target


def set_krita_enabled(rc: Path, enabled: bool) -> None:
    cfg = configparser.ConfigParser(interpolation=None, strict=False)
    cfg.optionxform = str
    if rc.exists():
        cfg.read(rc)
    if not cfg.has_section("python"):
        cfg.add_section("python")
    cfg.set("python", "enable_layermatte_krita", "true" if enabled else "false")
    rc.parent.mkdir(parents=True, exist_ok=True)
    with open(rc, "w") as f:
        cfg.write(f, space_around_delimiters=False)


def uninstall(editor: str, dest: Path | None = None) -> Path:
    if editor == "gimp":
        target = dest or gimp_dir()
        shutil.rmtree(target, ignore_errors=True)
        return target
    root = dest or krita_dir()
    shutil.rmtree(root / "layermatte_krita", ignore_errors=True)
    (root / "layermatte_krita.desktop").unlink(missing_ok=True)
    if dest is None and kritarc().exists():
        set_krita_enabled(kritarc(), False)
    return root


def installed(editor: str) -> Path | None:
    path = gimp_dir() / "layermatte.py" if editor == "gimp" else krita_dir() / "layermatte_krita"
    return path if path.exists() else None


def run(args) -> int:
    fn = install if args.action == "install" else uninstall
    path = fn(args.editor, args.dest)
    print(f"{args.action}ed the {args.editor} plug-in: {path}")
    return 0
