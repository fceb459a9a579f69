"""The GIMP 3 plug-in in real GIMP 3.0 (Debian trixie root) and GIMP 3.2 (Debian forky root), batch
mode and the full UI, against the real daemon with the real model. Every test runs once per root.

Two GIMP runs per root do all the work (module fixture `gimp`): run 1 (gimp-console) with the daemon
reachable over a bind-mounted unix socket, run 2 (the full UI under Xvfb) for undo, the dialog and no daemon. The batch scripts dump the pixels the plug-in
reads and the masks it writes; the tests compare every mask with the daemon's own matte for
the same layer pixels. The root's Python has grpcio 1.51 / protobuf 4.21 and cannot run the
host's `layermatte` program, so run 1 succeeding at all proves the in-process gRPC transport.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from root import GIMP_ROOTS, ROOTS, bind, editor_root, run_in_root

pytestmark = pytest.mark.editor

REPO = Path(__file__).resolve().parents[2]
REMOVE = "plug-in-layermatte-remove-background"
DIALOG = "plug-in-layermatte-remove-background-dialog"
REFINE = "plug-in-layermatte-refine-mask"
TOL8, TOL16 = 2, 2 * 257

# Shared by both batch runs: helpers that read what the plug-in reads and call procedures the
# way scripts do. D is the bound working folder (same path inside the root).
BATCH_HEAD = r'''
import json, traceback
import gi
gi.require_version('Gimp', '3.0')
gi.require_version('Gegl', '0.4')
from gi.repository import Gimp, Gegl, Gio
pdb = Gimp.get_pdb()
R = {}
REMOVE, DIALOG, REFINE = 'plug-in-layermatte-remove-background', 'plug-in-layermatte-remove-background-dialog', 'plug-in-layermatte-refine-mask'

def path(n): return D + '/' + n
def load(n): return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path(n)))
def save(img, n): return Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(path(n)), None)

def get(dr, fmt, w=None, h=None):
    w, h = w or dr.get_width(), h or dr.get_height()
    return bytes(dr.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP))

def dump(name, dr, fmt, **kw):
    open(path(name + '.raw'), 'wb').write(get(dr, fmt, **kw))
    return name + '.raw'

def pixfmt(layer):
    """The layer's own channels at the image's sample type: what the plug-in sends."""
    prec = layer.get_image().get_precision().value_nick
    t = 'u8' if prec.startswith('u8') else 'u16' if prec.startswith('u16') else 'float'
    if layer.is_gray():
        return ("Y'A " if layer.has_alpha() else "Y' ") + t
    return ("R'G'B'A " if layer.has_alpha() else "R'G'B' ") + t

def info(name, layer):
    f = pixfmt(layer)
    _, ox, oy = layer.get_offsets()
    return {'w': layer.get_width(), 'h': layer.get_height(), 'offsets': [ox, oy], 'fmt': f,
            'pixels': dump(name + '-pixels', layer, f)}

def run(proc_name, img, layers, **args):
    proc = pdb.lookup_procedure(proc_name)
    cfg = proc.create_config()
    cfg.set_property('image', img)
    cfg.set_core_object_array('drawables', layers)
    for k, v in args.items():
        cfg.set_property(k, v)
    r = proc.run(cfg)
    return {'status': r.index(0).value_nick, 'message': r.index(1) if r.length() > 1 else '',
            # ending a group succeeds only if one is still open: the plug-in must close its own
            'undo_group_left_open': bool(img.undo_group_end())}

def case(fn):
    try:
        R[fn.__name__] = fn()
    except Exception:
        R[fn.__name__] = {'error': traceback.format_exc()}
    json.dump(R, open(path(RESULTS), 'w'), indent=1)
'''

BATCH_DAEMON = r'''
@case
def rgb():  # RGB photo without alpha, 8-bit: mask, xcf round trip, existing mask, replace, new layer
    img = load('astro.png'); L = img.get_layers()[0]; out = {'layer': info('rgb', L)}
    img.clean_all()
    no_mask = run(REFINE, img, [L]); out['refine_without_mask'] = dict(no_mask, dirty=img.is_dirty())
    img.clean_all()
    out['remove'] = run(REMOVE, img, [L])
    out['mask'] = dump('rgb-mask', L.get_mask(), 'Y u8')
    out['pixels_after'] = dump('rgb-after', L, pixfmt(L))
    out['dirty'] = img.is_dirty()
    save(img, 'rgb.xcf')
    img2 = load('rgb.xcf'); L2 = img2.get_layers()[0]
    out['xcf_mask'] = dump('rgb-xcf-mask', L2.get_mask(), 'Y u8') if L2.get_mask() else None
    img2.delete()
    img.clean_all()
    mask_id = L.get_mask().get_id()
    again = run(REMOVE, img, [L])
    out['existing'] = dict(again, dirty=img.is_dirty(), same_mask=L.get_mask().get_id() == mask_id,
                           mask=dump('rgb-existing-mask', L.get_mask(), 'Y u8'))
    out['replace'] = run(DIALOG, img, [L], **{'replace-mask': True, 'feather': 2.0})
    out['replace_mask'] = dump('rgb-replace-mask', L.get_mask(), 'Y u8')
    n = len(img.get_layers())
    out['as_layer'] = run(DIALOG, img, [L], output='layer')
    new = img.get_layers()[0]
    out['as_layer'].update(added=len(img.get_layers()) - n, name=new.get_name(), has_mask=bool(new.get_mask()),
                           rgba=dump('rgb-cutout', new, "R'G'B'A u8"))
    before = {x.get_id() for x in img.get_layers()}
    out['as_clean_layer'] = run(DIALOG, img, [L], output='layer', decontaminate=True)
    clean = [x for x in img.get_layers() if x.get_id() not in before][0]
    out['as_clean_layer'].update(rgba=dump('rgb-clean-cutout', clean, "R'G'B'A u8"))
    img.delete()
    return out

@case
def offsets():  # two selected layers, smaller than the canvas, one partly off it; selection output
    img = Gimp.Image.new(700, 520, Gimp.ImageBaseType.RGB)
    a = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(path('cat.png')))
    img.insert_layer(a, None, 0); a.set_offsets(150, 110); a.add_alpha()
    b = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(path('coffee.png')))
    img.insert_layer(b, None, 0); b.set_offsets(-60, 300)
    img.set_selected_layers([a, b])
    out = {'a': info('off-a', a), 'b': info('off-b', b)}
    out['remove'] = run(REMOVE, img, img.get_selected_layers())
    out['a_mask'] = dump('off-a-mask', a.get_mask(), 'Y u8')
    out['b_mask'] = dump('off-b-mask', b.get_mask(), 'Y u8')
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 20, 20)  # a selection already there is replaced
    out['selection'] = run(DIALOG, img, [a], output='selection')
    out['selection_bytes'] = dump('off-selection', img.get_selection(), 'Y u8')
    out['canvas'] = [img.get_width(), img.get_height()]
    img.delete()
    return out

@case
def gray():
    img = load('astro.png'); img.convert_grayscale(); L = img.get_layers()[0]
    out = {'layer': info('gray', L), 'remove': run(REMOVE, img, [L])}
    out['mask'] = dump('gray-mask', L.get_mask(), 'Y u8')
    img.delete()
    return out

@case
def u16():  # 16-bit RGBA: matte requested at 16 bits, mask written at 16 bits, kept by xcf
    img = load('astro.png'); img.convert_precision(Gimp.Precision.U16_NON_LINEAR)
    L = img.get_layers()[0]; L.add_alpha()
    out = {'layer': info('u16', L), 'remove': run(REMOVE, img, [L])}
    out['mask'] = dump('u16-mask', L.get_mask(), 'Y u16')
    save(img, 'u16.xcf'); img.delete()
    img2 = load('u16.xcf'); L2 = img2.get_layers()[0]
    out['xcf_precision'] = img2.get_precision().value_nick
    out['xcf_mask'] = dump('u16-xcf-mask', L2.get_mask(), 'Y u16') if L2.get_mask() else None
    img2.delete()
    return out

@case
def float32():  # linear float image: read as non-linear float, mask at float precision
    img = load('astro.png'); img.convert_precision(Gimp.Precision.FLOAT_LINEAR); L = img.get_layers()[0]
    out = {'layer': info('f32', L), 'remove': run(REMOVE, img, [L])}
    out['mask'] = dump('f32-mask', L.get_mask(), 'Y u16')
    img.delete()
    return out

@case
def drawn():  # layers GIMP draws: a group and a text layer; GIMP 3.2's link and vector layers too
    img = Gimp.Image.new(640, 480, Gimp.ImageBaseType.RGB)
    group = Gimp.GroupLayer.new(img, 'people'); img.insert_layer(group, None, 0)
    cat = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(path('cat.png')))
    img.insert_layer(cat, group, 0); cat.set_offsets(100, 60)
    text = Gimp.TextLayer.new(img, 'Hello', Gimp.context_get_font(), 90, Gimp.Unit.pixel())
    img.insert_layer(text, None, 0); text.set_offsets(30, 20)
    layers = {'group': group, 'text': text}
    if hasattr(Gimp, 'LinkLayer'):  # GIMP 3.2
        link = Gimp.LinkLayer.new(img, Gio.File.new_for_path(path('cat.png')))
        img.insert_layer(link, None, 0); link.set_offsets(-40, 250)
        blob = Gimp.Path.new(img, 'blob'); img.insert_path(blob, None, 0)
        blob.bezier_stroke_new_ellipse(420, 200, 150, 110, 0)
        vector = Gimp.VectorLayer.new(img, blob); img.insert_layer(vector, None, 0)
        layers.update(link=link, vector=vector)
    def kind(layer):
        rasterized = getattr(layer, 'is_rasterized', None)
        return [type(layer).__name__, bool(rasterized()) if rasterized else False]
    out = {'version': Gimp.version(), 'layers': {}}
    for name, L in layers.items():
        o = {'layer': info('drawn-' + name, L), 'before': kind(L)}
        o['remove'] = run(REMOVE, img, [L])
        o['after'] = kind(L)
        o['mask'] = dump('drawn-%s-mask' % name, L.get_mask(), 'Y u8') if L.get_mask() else None
        known = {x.get_id() for x in img.get_layers()}
        o['cutout'] = run(DIALOG, img, [L], output='layer')
        new = [x for x in img.get_layers() if x.get_id() not in known]
        o['cutout'].update(kinds=[kind(x) for x in new], offsets=[list(x.get_offsets()[1:]) for x in new],
                           rgba=dump('drawn-%s-cutout' % name, new[0], "R'G'B'A u8") if new else None)
        out['layers'][name] = o
    save(img, 'drawn.xcf'); img.delete()
    img2 = load('drawn.xcf')
    out['reloaded'] = [{'name': x.get_name(), 'kind': kind(x),
                        'mask': dump('drawn-xcf-%d' % i, x.get_mask(), 'Y u8') if x.get_mask() else None}
                       for i, x in enumerate(img2.get_layers())]
    img2.delete()
    return out

@case
def refine():  # a rough hand-made mask (an ellipse from a selection), refined without the model
    img = load('cat.png'); L = img.get_layers()[0]
    img.select_ellipse(Gimp.ChannelOps.REPLACE, 60, 20, 240, 230)
    L.add_mask(L.create_mask(Gimp.AddMaskType.SELECTION)); Gimp.Selection.none(img)
    out = {'layer': info('refine', L), 'rough': dump('refine-rough', L.get_mask(), 'Y u8')}
    img.clean_all()
    out['refine'] = run(REFINE, img, [L], feather=1.0)
    out['dirty'] = img.is_dirty()
    out['mask'] = dump('refine-mask', L.get_mask(), 'Y u8')
    img.delete()
    img = load('cat.png'); L = img.get_layers()[0]   # the same rough mask, refined in hq
    img.select_ellipse(Gimp.ChannelOps.REPLACE, 60, 20, 240, 230)
    L.add_mask(L.create_mask(Gimp.AddMaskType.SELECTION)); Gimp.Selection.none(img)
    out['refine_hq'] = run(REFINE, img, [L], feather=1.0, quality='hq')
    out['mask_hq'] = dump('refine-mask-hq', L.get_mask(), 'Y u8')
    img.delete()
    return out
'''

# Run 2 is the full GIMP UI under Xvfb, so that undo is the real thing: the script sends Ctrl+Z
# key events (XSendEvent through libX11; GTK takes them with GDK_CORE_DEVICE_EVENTS=1) to the
# focused image window, exactly one per checked step. The socket comes from layermatte_lite.json,
# which the script points at the daemon and then at nothing.
BATCH_UI = r'''
import ctypes, time
X = ctypes.CDLL('libX11.so.6')
X.XOpenDisplay.restype = ctypes.c_void_p
X.XDefaultRootWindow.restype = ctypes.c_ulong
X.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
X.XGetInputFocus.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_int)]
X.XStringToKeysym.restype = ctypes.c_ulong
X.XStringToKeysym.argtypes = [ctypes.c_char_p]
X.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
X.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
X.XFlush.argtypes = [ctypes.c_void_p]

class KeyEvent(ctypes.Structure):  # XKeyEvent, padded to sizeof(XEvent)
    _fields_ = [('type', ctypes.c_int), ('serial', ctypes.c_ulong), ('send_event', ctypes.c_int),
                ('display', ctypes.c_void_p), ('window', ctypes.c_ulong), ('root', ctypes.c_ulong),
                ('subwindow', ctypes.c_ulong), ('time', ctypes.c_ulong), ('x', ctypes.c_int), ('y', ctypes.c_int),
                ('x_root', ctypes.c_int), ('y_root', ctypes.c_int), ('state', ctypes.c_uint),
                ('keycode', ctypes.c_uint), ('same_screen', ctypes.c_int), ('pad', ctypes.c_long * 24)]

DPY = X.XOpenDisplay(None)

def key(name, state=0, window=None):
    if window is None:
        focus, revert = ctypes.c_ulong(), ctypes.c_int()
        X.XGetInputFocus(DPY, ctypes.byref(focus), ctypes.byref(revert))
        window = focus.value
    keycode = X.XKeysymToKeycode(DPY, X.XStringToKeysym(name))
    for kind, mask in ((2, 1), (3, 2)):  # KeyPress/KeyPressMask, KeyRelease/KeyReleaseMask
        ev = KeyEvent(type=kind, send_event=1, display=DPY, window=window, root=X.XDefaultRootWindow(DPY),
                      x=100, y=100, x_root=100, y_root=100, state=state, keycode=keycode, same_screen=1)
        X.XSendEvent(DPY, window, 1, mask, ctypes.byref(ev))
    X.XFlush(DPY)
    return window

def ctrl_z():
    return key(b'z', state=4)  # 4: ControlMask

def wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False

def windows():
    X.XQueryTree.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_ulong),
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_ulong)), ctypes.POINTER(ctypes.c_uint)]
    X.XFetchName.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_char_p)]
    r, parent, children, n = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
    X.XQueryTree(DPY, X.XDefaultRootWindow(DPY), ctypes.byref(r), ctypes.byref(parent), ctypes.byref(children), ctypes.byref(n))
    found = []
    for i in range(n.value):
        name = ctypes.c_char_p()
        X.XFetchName(DPY, children[i], ctypes.byref(name))
        found.append((children[i], (name.value or b'').decode('utf-8', 'replace')))
    return found

def point_at(sock):
    json.dump({'socket': sock}, open(PLUGDIR + '/layermatte_lite.json', 'w'))

def mask_bytes(layer):
    return get(layer.get_mask(), 'Y u8') if layer.get_mask() else None

@case
def undo():
    point_at(SOCKET)
    img = load('astro.png'); L = img.get_layers()[0]
    L2 = L.copy(); img.insert_layer(L2, None, 0); L2.set_offsets(40, 30)
    disp = Gimp.Display.new(img); Gimp.displays_flush()
    before = [get(l, pixfmt(l)) for l in (L, L2)]
    out = {}

    def sentinel():  # an undo step just before the action: a second undo would remove it
        img.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 8, 8)

    def kept():
        time.sleep(0.5)
        return not Gimp.Selection.is_empty(img)

    # two selected layers: one Ctrl+Z removes both masks and leaves the pixels as they were
    sentinel()
    out['remove'] = run(REMOVE, img, [L, L2])
    out['remove'].update(masks=[l.get_mask() is not None for l in (L, L2)], focus=ctrl_z(),
                         undone=wait(lambda: L.get_mask() is None and L2.get_mask() is None),
                         only_one_step=kept(), pixels_same=[get(l, pixfmt(l)) for l in (L, L2)] == before)
    # a hand-made mask, refined: one Ctrl+Z brings the rough mask back
    img.select_ellipse(Gimp.ChannelOps.REPLACE, 100, 60, 300, 380)
    L.add_mask(L.create_mask(Gimp.AddMaskType.SELECTION)); Gimp.Selection.none(img)
    rough = mask_bytes(L)
    sentinel()
    out['refine'] = run(REFINE, img, [L])
    out['refine'].update(changed=mask_bytes(L) != rough, focus=ctrl_z(), undone=wait(lambda: mask_bytes(L) == rough),
                         only_one_step=kept())
    # replacing that mask: one Ctrl+Z brings the rough mask back
    sentinel()
    out['replace'] = run(DIALOG, img, [L], **{'replace-mask': True})
    out['replace'].update(changed=mask_bytes(L) != rough, focus=ctrl_z(), undone=wait(lambda: mask_bytes(L) == rough),
                          only_one_step=kept())
    out['layers'] = len(img.get_layers())
    disp.delete(); img.delete()
    return out

@case
def dialog_ui():  # the real GimpUI dialog opens (interactive run) and OK runs it with its defaults
    import threading
    img = load('astro.png'); L = img.get_layers()[0]
    disp = Gimp.Display.new(img); Gimp.displays_flush()
    seen = {}

    def press_ok():
        end = time.monotonic() + 30
        while time.monotonic() < end and 'window' not in seen:
            for w, title in windows():
                if 'Remove Background' in title:
                    seen.update(window=w, title=title)
            time.sleep(0.2)
        if 'window' in seen:
            time.sleep(1.0)
            key(b'Return', window=seen['window'])
    t = threading.Thread(target=press_ok, daemon=True); t.start()
    proc = pdb.lookup_procedure(DIALOG)
    cfg = proc.create_config()
    cfg.set_property('run-mode', Gimp.RunMode.INTERACTIVE)
    cfg.set_property('image', img)
    cfg.set_core_object_array('drawables', [L])
    r = proc.run(cfg)
    t.join(5)
    out = {'status': r.index(0).value_nick, 'message': r.index(1) if r.length() > 1 else '',
           'dialog': seen.get('title'), 'has_mask': L.get_mask() is not None}
    disp.delete(); img.delete()
    return out

@case
def unreachable():
    point_at(NOWHERE)
    img = load('astro.png'); L = img.get_layers()[0]
    before = get(L, pixfmt(L)); img.clean_all()
    out = {'remove': run(REMOVE, img, [L]), 'dialog': run(DIALOG, img, [L], output='selection')}
    out.update(has_mask=L.get_mask() is not None, dirty=img.is_dirty(), pixels_same=get(L, pixfmt(L)) == before,
               selection_empty=Gimp.Selection.is_empty(img), layers=len(img.get_layers()))
    img.delete()
    return out
'''

# The editor Python without grpc (Windows/macOS/Flatpak bundles): the pipe fallback is taken and,
# with no `layermatte` program reachable, the message says so.
PIPE_CHECK = r'''
import sys
sys.modules['grpc'] = None
sys.path.insert(0, sys.argv[1])
import layermatte_lite as lite
print('grpc_available', lite.grpc_available())
try:
    lite.matte(2, 2, 'RGBA8', bytes(16))
    print('NO ERROR')
except lite.LayermatteError as e:
    print('ERROR', e)
'''


def _gimp_batch(root: str, d: Path, name: str, body: str, home: Path, env: dict, ui: bool = False,
                **values) -> dict:
    results = f"results-{name}.json"
    head = "".join(f"{k} = {v!r}\n" for k, v in dict(D=str(d), RESULTS=results, **values).items())
    (d / f"{name}.py").write_text(head + BATCH_HEAD + body)
    batch = ["--batch-interpreter=python-fu-eval", "-b", f"exec(open('{d}/{name}.py').read())", "--quit"]
    argv = (["xvfb-run", "-a", "-s", "-screen 0 1280x900x24", "gimp", "--no-splash"] if ui
            else ["gimp-console", "-i"]) + batch
    p = run_in_root(argv, home=home, env=env, timeout=300, root=root)
    log = f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-6000:]}"
    (d / f"{name}.log").write_text(log)
    assert p.returncode == 0 and (d / results).is_file(), f"GIMP batch {name} failed:\n{log}"
    out = json.loads((d / results).read_text())
    for case, res in out.items():
        assert "error" not in res, f"batch case {case} raised:\n{res['error']}\n{log}"
    out["log"] = p.stdout + p.stderr  # whole, for the plug-in's messages
    return out


@pytest.fixture(scope="module", params=GIMP_ROOTS)
def groot(request) -> str:
    """The editor root of this round: trixie (GIMP 3.0) or forky (GIMP 3.2)."""
    return request.param


@pytest.fixture(scope="module")
def gimp(groot, daemon, photos, tmp_path_factory):
    editor_root(groot)  # skips with the reason when the root cannot be built here
    d = tmp_path_factory.mktemp("gimp-" + groot)
    d.chmod(0o755)
    home = d / "home"
    config = home / ".config" / "GIMP" / ROOTS[groot].gimp  # GIMP keeps one folder per minor version
    plugdir = config / "plug-ins" / "layermatte"
    exe = Path(sys.executable).with_name("layermatte")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "layermatte"]
    subprocess.run(cmd + ["install", "gimp", "--dest", str(plugdir.parent)], check=True, capture_output=True)
    # The host's `layermatte` program cannot run inside the root; record the socket only.
    (plugdir / "layermatte_lite.json").write_text(json.dumps({"socket": str(daemon.socket)}))
    (config / "gimprc").write_text("(show-welcome-dialog no)\n")
    Image.fromarray(photos["astronaut"]).save(d / "astro.png")
    Image.fromarray(photos["cat"]).save(d / "cat.png")
    Image.fromarray(photos["coffee"]).save(d / "coffee.png")
    with bind(d, root=groot), bind(daemon.workdir, root=groot):
        res = _gimp_batch(groot, d, "with_daemon", BATCH_DAEMON, home,
                          {"LAYERMATTE_SOCKET": str(daemon.socket)})
        res["ui"] = _gimp_batch(groot, d, "ui", BATCH_UI, home, {"GDK_CORE_DEVICE_EVENTS": "1"}, ui=True,
                                PLUGDIR=str(plugdir), SOCKET=str(daemon.socket),
                                NOWHERE=str(d / "nobody" / "daemon.sock"))
        res.update({k: v for k, v in res["ui"].items() if k != "log"})
        p = run_in_root(["python3", "-c", PIPE_CHECK, str(plugdir)], home=home, timeout=60, root=groot)
        res["pipe"] = {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
    res["dir"] = d
    yield res
    if os.environ.get("LAYERMATTE_KEEP_EDITOR_FILES") != "1":  # =1: keep for a look afterwards
        shutil.rmtree(d, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------
def raw(g, name, dtype, shape):
    return np.frombuffer((g["dir"] / name).read_bytes(), dtype).reshape(shape)


def layer_pixels(g, layer):
    """The pixels the batch read from a layer, as an array the daemon client understands."""
    fmt = layer["fmt"]
    dtype = {"u8": np.uint8, "u16": np.uint16, "float": np.float32}[fmt.split()[1]]
    channels = len(fmt.split()[0].replace("'", ""))
    arr = raw(g, layer["pixels"], dtype, (layer["h"], layer["w"], channels))
    return arr[..., 0] if channels == 1 else arr


_MATTES: dict = {}


def daemon_matte(daemon, pixels, *, depth16=False, feather=0.0, guide=None, quality="fast"):
    """The daemon's own matte for these pixels (memoised: several checks share a layer)."""
    from layermatte.imaging.pipeline import MatteOptions
    from layermatte.imaging.refine import EdgeOptions
    key = (pixels.tobytes(), pixels.shape, str(pixels.dtype), depth16, feather,
           None if guide is None else guide.tobytes(), quality)
    if key not in _MATTES:
        with daemon.client() as c:
            _MATTES[key] = c.matte(pixels, options=MatteOptions(edges=EdgeOptions(feather_px=feather),
                                                                depth16=depth16, quality=quality),
                                   guide_mask=guide).matte
    return _MATTES[key]


def assert_close(got, want, tol):
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= tol, f"max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}; " \
                              f"{(diff > tol).sum()} pixels over ±{tol}"


def assert_real_matte(m, full):
    fg = (m > full * 0.9).mean()
    assert 0.05 < fg < 0.95, f"not a plausible matte: {fg:.1%} foreground"


def ok(res):
    assert res["status"] == "success", res["message"]
    assert not res["undo_group_left_open"]


# -- tests -----------------------------------------------------------------------------------------
def test_one_click_mask_equals_daemon_matte(gimp, daemon, photos):
    r = gimp["rgb"]
    ok(r["remove"])
    px = layer_pixels(gimp, r["layer"])
    assert np.array_equal(px, photos["astronaut"]), "the plug-in must read the layer's own pixels"
    mask = raw(gimp, r["mask"], np.uint8, px.shape[:2])
    want = daemon_matte(daemon, px)
    assert_real_matte(want, 255)
    assert_close(mask, want, TOL8)
    assert (gimp["dir"] / r["pixels_after"]).read_bytes() == (gimp["dir"] / r["layer"]["pixels"]).read_bytes(), \
        "layer pixels must stay untouched"
    assert r["dirty"]


def test_mask_survives_xcf_round_trip(gimp):
    r = gimp["rgb"]
    assert r["xcf_mask"], "reopened XCF has no layer mask"
    assert (gimp["dir"] / r["xcf_mask"]).read_bytes() == (gimp["dir"] / r["mask"]).read_bytes()


def test_existing_mask_is_an_error_and_image_unchanged(gimp):
    e = gimp["rgb"]["existing"]
    assert e["status"] == "execution-error"
    assert "already has a layer mask" in e["message"] and "Replace existing mask" in e["message"]
    assert not e["dirty"] and e["same_mask"] and not e["undo_group_left_open"]
    assert (gimp["dir"] / e["mask"]).read_bytes() == (gimp["dir"] / gimp["rgb"]["mask"]).read_bytes()


def test_dialog_procedure_replaces_mask_with_options(gimp, daemon):
    r = gimp["rgb"]
    ok(r["replace"])
    px = layer_pixels(gimp, r["layer"])
    mask = raw(gimp, r["replace_mask"], np.uint8, px.shape[:2])
    assert_close(mask, daemon_matte(daemon, px, feather=2.0), TOL8)
    assert not np.array_equal(mask, raw(gimp, r["mask"], np.uint8, px.shape[:2])), "feather had no effect"


def test_new_layer_output_is_a_cutout(gimp, daemon):
    r = gimp["rgb"]
    lay = r["as_layer"]
    ok(lay)
    assert lay["added"] == 1 and lay["name"].endswith("(cutout)") and not lay["has_mask"]
    px = layer_pixels(gimp, r["layer"])
    rgba = raw(gimp, lay["rgba"], np.uint8, px.shape[:2] + (4,))
    assert np.array_equal(rgba[..., :3], px)
    assert_close(rgba[..., 3], daemon_matte(daemon, px), TOL8)
    ok(r["as_clean_layer"])
    clean = raw(gimp, r["as_clean_layer"]["rgba"], np.uint8, px.shape[:2] + (4,))
    band = (clean[..., 3] > 20) & (clean[..., 3] < 230)
    assert band.sum() > 100
    assert np.abs(clean[..., :3][band].astype(int) - px[band]).mean() > 2  # background tint removed
    solid = clean[..., 3] == 255
    assert np.abs(clean[..., :3][solid].astype(int) - px[solid]).max() <= 1


def test_refine_without_mask_is_an_error(gimp):
    r = gimp["rgb"]["refine_without_mask"]
    assert r["status"] == "execution-error" and "has no layer mask to refine" in r["message"]
    assert not r["dirty"]


def test_offset_layers_multi_selection_and_selection_output(gimp, daemon, photos):
    r = gimp["offsets"]
    ok(r["remove"])
    assert r["a"]["offsets"] == [150, 110] and r["b"]["offsets"] == [-60, 300]
    for key, photo in (("a", "cat"), ("b", "coffee")):
        px = layer_pixels(gimp, r[key])
        assert np.array_equal(px[..., :3], photos[photo]), f"layer {key}: not the layer's own pixels"
        mask = raw(gimp, r[f"{key}_mask"], np.uint8, px.shape[:2])
        want = daemon_matte(daemon, px)
        assert_real_matte(want, 255)
        assert_close(mask, want, TOL8)
        if key == "a":
            matte_a = want
    ok(r["selection"])
    cw, ch = r["canvas"]
    sel = raw(gimp, r["selection_bytes"], np.uint8, (ch, cw))
    (ox, oy), (h, w) = r["a"]["offsets"], matte_a.shape
    assert_close(sel[oy:oy + h, ox:ox + w], matte_a, TOL8)
    outside = sel.copy()
    outside[oy:oy + h, ox:ox + w] = 0
    assert outside.max() == 0, "selection outside the layer must be empty"


def test_grayscale_image(gimp, daemon):
    r = gimp["gray"]
    ok(r["remove"])
    assert r["layer"]["fmt"] == "Y' u8"
    px = layer_pixels(gimp, r["layer"])
    want = daemon_matte(daemon, px)
    assert_real_matte(want, 255)
    assert_close(raw(gimp, r["mask"], np.uint8, px.shape), want, TOL8)


def test_16bit_image_gets_16bit_mask(gimp, daemon):
    r = gimp["u16"]
    ok(r["remove"])
    assert r["layer"]["fmt"] == "R'G'B'A u16"
    px = layer_pixels(gimp, r["layer"])
    want = daemon_matte(daemon, px, depth16=True)
    mask = raw(gimp, r["mask"], np.uint16, px.shape[:2])
    assert_real_matte(want, 65535)
    assert_close(mask, want, TOL16)
    assert np.any(mask % 257 != 0), "mask was written at 8 bits"
    assert r["xcf_precision"].startswith("u16")
    assert r["xcf_mask"] and (gimp["dir"] / r["xcf_mask"]).read_bytes() == (gimp["dir"] / r["mask"]).read_bytes()


def test_float_image(gimp, daemon):
    r = gimp["float32"]
    ok(r["remove"])
    assert r["layer"]["fmt"] == "R'G'B' float"
    px = layer_pixels(gimp, r["layer"])
    want = daemon_matte(daemon, px, depth16=True)
    assert_real_matte(want, 65535)
    assert_close(raw(gimp, r["mask"], np.uint16, px.shape[:2]), want, TOL16)


def test_refine_mask_uses_existing_mask_as_guide(gimp, daemon):
    r = gimp["refine"]
    ok(r["refine"])
    assert r["dirty"]
    px = layer_pixels(gimp, r["layer"])
    rough = raw(gimp, r["rough"], np.uint8, px.shape[:2])
    assert 0.1 < (rough > 128).mean() < 0.9
    mask = raw(gimp, r["mask"], np.uint8, px.shape[:2])
    assert_close(mask, daemon_matte(daemon, px, feather=1.0, guide=rough), TOL8)
    assert np.abs(mask.astype(int) - rough).max() > 50, "refinement changed nothing"


def test_refine_mask_hq_quality_reaches_the_daemon(gimp, daemon):
    r = gimp["refine"]
    ok(r["refine_hq"])
    px = layer_pixels(gimp, r["layer"])
    rough = raw(gimp, r["rough"], np.uint8, px.shape[:2])
    hq = raw(gimp, r["mask_hq"], np.uint8, px.shape[:2])
    assert_close(hq, daemon_matte(daemon, px, feather=1.0, guide=rough, quality="hq"), TOL8)
    fast = raw(gimp, r["mask"], np.uint8, px.shape[:2])
    # fast is deterministic, so any difference shows the option reached the daemon; on a mask
    # that is already refined the flatness gate leaves hq only a few levels on the outline
    assert (hq != fast).sum() > 50, "hq gave the fast result: the option was lost"


def test_one_ctrl_z_undoes_each_action_in_the_real_ui(gimp):
    u = gimp["undo"]
    r = u["remove"]
    ok(r)
    assert r["masks"] == [True, True] and r["focus"], r
    assert r["undone"], "one Ctrl+Z did not remove both masks"
    assert r["only_one_step"], "Ctrl+Z undid more than one step"
    assert r["pixels_same"]
    for key in ("refine", "replace"):
        ok(u[key])
        assert u[key]["changed"], f"{key} did not change the mask"
        assert u[key]["undone"], f"one Ctrl+Z after {key} did not restore the hand-made mask"
        assert u[key]["only_one_step"], "Ctrl+Z undid more than one step"
    assert u["layers"] == 2


def test_dialog_opens_in_the_real_ui_and_ok_runs_it(gimp):
    d = gimp["dialog_ui"]
    assert d["dialog"] and "Remove Background" in d["dialog"], d
    assert d["status"] == "success", d
    assert d["has_mask"]


def test_daemon_unreachable_is_a_clear_error_and_image_unchanged(gimp):
    u = gimp["unreachable"]
    for key in ("remove", "dialog"):
        assert u[key]["status"] == "execution-error", u[key]
        assert "no layermatte daemon answers" in u[key]["message"]
        assert "layermatte serve" in u[key]["message"]
        assert not u[key]["undo_group_left_open"]
    assert not u["has_mask"] and not u["dirty"] and u["pixels_same"] and u["selection_empty"]
    assert u["layers"] == 1


def test_without_grpc_the_pipe_fallback_reports_clearly(gimp):
    p = gimp["pipe"]
    assert p["rc"] == 0, p["err"]
    assert "grpc_available False" in p["out"]
    assert "ERROR the layermatte program was not found" in p["out"], p["out"]


def test_runs_in_the_roots_gimp(gimp, groot):
    assert gimp["drawn"]["version"].startswith(ROOTS[groot].gimp + "."), gimp["drawn"]["version"]


DRAWN_SOURCES = {"text": "text", "link": "linked file", "vector": "path"}


def test_drawn_layers_get_a_mask_from_their_drawn_pixels_and_stay_live(gimp, groot, daemon):
    """Groups and text layers (GIMP 3.0 and 3.2), link and vector layers (3.2): the mask is the daemon's
    matte of the pixels as GIMP draws them, the layer keeps its kind, and the plug-in says what it did."""
    r = gimp["drawn"]
    kinds = {"group": "GroupLayer", "text": "TextLayer"}
    if ROOTS[groot].gimp >= "3.2":
        kinds.update(link="LinkLayer", vector="VectorLayer")
    assert sorted(r["layers"]) == sorted(kinds)
    for name, o in r["layers"].items():
        ok(o["remove"])
        assert o["before"] == o["after"] == [kinds[name], False], f"{name}: the layer was converted"
        px = layer_pixels(gimp, o["layer"])
        assert px[..., -1].max() == 255, f"{name}: nothing drawn"
        assert o["mask"], f"{name}: no mask"
        assert_close(raw(gimp, o["mask"], np.uint8, px.shape[:2]), daemon_matte(daemon, px), TOL8)
        if name in DRAWN_SOURCES:
            assert f"is a {name} layer: layermatte worked on its pixels as drawn now" in gimp["log"], name
            assert f"later changes to its {DRAWN_SOURCES[name]}" in gimp["log"]
    assert "is a group layer" not in gimp["log"]
    if "link" in r["layers"]:
        assert r["layers"]["link"]["layer"]["offsets"] == [-40, 250]


def test_drawn_layers_cutout_is_a_pixel_layer(gimp, daemon):
    """GIMP kills a plug-in that writes into a group: the cut-out of any drawn layer is a new plain
    layer at the same place holding the drawn pixels, its alpha cut by the matte."""
    for name, o in gimp["drawn"]["layers"].items():
        c = o["cutout"]
        ok(c)
        assert c["kinds"] == [["Layer", False]], f"{name}: {c['kinds']}"
        assert c["offsets"] == [o["layer"]["offsets"]]
        px = layer_pixels(gimp, o["layer"])
        rgba = raw(gimp, c["rgba"], np.uint8, px.shape[:2] + (4,))
        seen = rgba[..., 3] > 0
        if name in ("group", "link"):  # a photo (the model finds nothing to keep in black text)
            assert seen.mean() > 0.05, f"{name}: empty cut-out"
        assert np.abs(rgba[..., :3][seen].astype(int) - px[..., :3][seen]).max(initial=0) <= 1, name
        want = px[..., 3].astype(int) * daemon_matte(daemon, px) / 255
        assert np.abs(rgba[..., 3] - want).max() <= TOL8 + 1, name
        if name in DRAWN_SOURCES:
            assert f"is a {name} layer: the cut-out is a plain pixel layer" in gimp["log"]


def test_drawn_layers_keep_kind_and_mask_through_xcf(gimp):
    r = gimp["drawn"]
    for name, o in r["layers"].items():
        found = [v for v in r["reloaded"] if v["kind"] == o["after"] and v["mask"]]
        assert found, f"{name}: not in the reloaded XCF as a {o['after'][0]} with a mask: {r['reloaded']}"
        assert (gimp["dir"] / found[0]["mask"]).read_bytes() == (gimp["dir"] / o["mask"]).read_bytes()
