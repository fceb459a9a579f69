"""layermatte install|uninstall gimp|krita: put the plug-in where the editor looks.

Finds every profile of the editor this user has (GIMP 3.0 and 3.2, native and
Flatpak; Krita native and Flatpak), installs into each and says where. The
work is in plugin_install; this file is the command line around it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..errors import InvalidInput


def register(sub):
    for action in ("install", "uninstall"):
        p = sub.add_parser(action, help=f"{action} the GIMP 3 or Krita plug-in",
                           description=f"{action.capitalize()} the layermatte plug-in for every "
                           "profile of the editor found on this machine (or only --dest).")
        p.add_argument("editor", choices=["gimp", "krita"], help="which editor")
        p.add_argument("--dest", type=Path, metavar="FOLDER",
                       help="the editor's plug-in folder instead of the ones found "
                            "(GIMP: …/GIMP/3.x/plug-ins, Krita: …/krita/pykrita)")
        p.add_argument("--flatpak", action="store_true",
                       help="also let the Flatpak editor run the host's layermatte "
                            "(flatpak override --user --talk-name=org.freedesktop.Flatpak)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(run=run, action=action)


def _grant(app: str) -> str:
    from ..system.plugin_install import flatpak_grant
    cmd = flatpak_grant(app)
    if shutil.which("flatpak") is None:
        raise InvalidInput("--flatpak: the flatpak program is not on PATH; run this on the host: "
                           + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise InvalidInput(f"`{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip()}")
    return "ran `" + " ".join(cmd) + "`"


def run(args) -> int:
    from ..system import plugin_install as pi
    targets = [pi.dest_location(args.editor, args.dest)] if args.dest else pi.discover(args.editor)
    fn = pi.install if args.action == "install" else pi.uninstall
    results = []
    for loc in targets:
        res = fn(args.editor, loc)
        if args.action == "install" and loc.flatpak_app:
            if args.flatpak:
                res.notes.append(_grant(loc.flatpak_app))
            else:
                res.notes.append("Flatpak: the sandbox must be allowed to run the host's layermatte: "
                                 "run again with --flatpak, or `" + " ".join(pi.flatpak_grant(loc.flatpak_app)) + "`")
        results.append(res)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0
    verb = "installed" if args.action == "install" else "uninstalled"
    for r in results:
        if args.action == "uninstall" and not r.files and "not installed here" in r.notes:
            print(f"{r.label}: not installed ({r.folder})")
            continue
        print(f"{verb} the {args.editor} plug-in for {r.label}: {r.folder}")
        for note in r.notes:
            print(f"  {note}")
    if args.action == "install":
        print("Restart the editor to load it.")
    return 0
