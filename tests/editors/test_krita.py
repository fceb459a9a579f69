"""The Krita plug-in in real Krita 5.2 (Debian trixie root), Krita 5.3 (forky root, Qt5) and Krita 6
(forky + experimental, Qt6), against the real daemon and model. Every test runs once per root.

Two Krita runs per root do the work:
* `krun` (module fixture): one `kritarunner` run (offscreen) of DRIVER, which opens real photos
  as PNG/TIFF files, builds offset/oversized/group layers, and calls
  `layermatte_krita.generate_mask` / `refine_mask` the way scripts do; it saves .kra/.png files,
  re-opens the .kra files and dumps every mask it reads. kritarunner always exits 0, so the
  tests look at the files it writes.
* `gui` (module fixture): the full application under xvfb-run with the plug-in enabled in
  kritarc, driven by a small test-only pykrita extension (E2E) that triggers the real actions:
  options dialog, Generate picked from the Layer menu (progress dialog, worker thread), Undo/Redo,
  the error box and Cancel.

The masks are compared with the daemon's own matte for the same pixels (host client).
The root's Python has grpcio 1.51 / protobuf 4.21 and cannot run the host's `layermatte`
program, so any mask at all proves the in-process gRPC transport with run-time descriptors.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from root import KRITA_ROOTS, ROOTS, bind, editor_root, run_in_root

pytestmark = pytest.mark.editor

REPO = Path(__file__).resolve().parents[2]
TOL = 2  # 8-bit matte levels
W, H = 320, 240  # canvas of the built documents
BIG_AT, SMALL_AT = (-30, -20), (100, 70)

# --------------------------------------------------------------------------------------------
# kritarunner driver: runs inside Krita, writes results.json and raw masks into D.
DRIVER = r'''
import hashlib, json, os, sys, traceback
from krita import Krita, InfoObject

R = {}
app = Krita.instance()

def P(n): return os.path.join(D, n)

def rect(node):
    r = node.bounds()
    return [r.x(), r.y(), r.width(), r.height()]

def masks(node):
    return [c for c in node.childNodes() if c.type() == "transparencymask"]

def dump(name, node, r):
    data = bytes(node.pixelData(*r))
    open(P(name), "wb").write(data)
    return name

def state(doc):
    """Everything a failed call must leave alone."""
    out = []
    def walk(n, depth):
        for c in n.childNodes():
            r = c.bounds()
            px = c.pixelData(r.x(), r.y(), r.width(), r.height()) if c.type() != "grouplayer" else b""
            out.append([depth, c.name(), c.type(), rect(c), hashlib.sha1(bytes(px)).hexdigest()])
            walk(c, depth + 1)
    walk(doc.rootNode(), 0)
    out = [n for n in out if n[2] != "selectionmask"]  # Krita 5 keeps the global selection as one
    sel = doc.selection()
    return {"nodes": out, "selection": None if sel is None else [sel.x(), sel.y(), sel.width(), sel.height()]}

def open_doc(name):
    doc = app.openDocument(P(name))
    doc.setBatchmode(True)
    return doc, doc.rootNode().childNodes()[0]

def new_doc(name, model="RGBA", depth="U8"):
    doc = app.createDocument(W, H, name, model, depth, "", 300.0)
    doc.setBatchmode(True)
    for c in doc.rootNode().childNodes():  # the default background layer
        c.remove()
    return doc

def layer_info(doc, node):
    r = rect(node)
    raw = bytes(node.pixelData(r[0], r[1], 2, 1)) if node.type() == "paintlayer" else b""
    return {"bounds": r, "model": node.colorModel(), "depth": node.colorDepth(),
            "profile": node.colorProfile(), "first_pixels": raw.hex()}

def generated(case, doc, node, **options):
    before = layer_info(doc, node)
    mask = layermatte_krita.generate_mask(doc, node, **options)
    r = before["bounds"]
    return {"layer": before, "mask_type": mask.type(), "mask_name": mask.name(),
            "mask_parent": mask.parentNode().name(), "n_masks": len(masks(node)),
            "mask": dump(case + ".mask", mask, r), "mask_bounds": rect(mask)}

def run_case(name, fn):
    try:
        R[name] = fn()
    except Exception:
        R[name] = {"error": traceback.format_exc()}
    json.dump(R, open(P("results.json"), "w"), indent=1)

# -- cases ---------------------------------------------------------------------------------
def u8():
    doc, node = open_doc("rgb8.png")
    out = generated("u8", doc, node)
    doc.waitForDone()
    out["saved"] = doc.saveAs(P("u8.kra"))
    info = InfoObject()
    info.setProperty("alpha", True)
    info.setProperty("forceSRGB", False)
    info.setProperty("saveSRGBProfile", False)
    out["exported"] = doc.exportImage(P("u8-export.png"), info)
    doc.close()
    again = app.openDocument(P("u8.kra"))
    layer = again.rootNode().childNodes()[0]
    m = masks(layer)
    out["reopened"] = {"n_masks": len(m), "names": [x.name() for x in m],
                       "mask": dump("u8-reopened.mask", m[0], out["layer"]["bounds"]) if m else None}
    again.close()
    return out

def u16():
    doc, node = open_doc("rgb16.png")
    out = generated("u16", doc, node)
    out["saved"] = doc.saveAs(P("u16.kra"))
    doc.close()
    again = app.openDocument(P("u16.kra"))
    m = masks(again.rootNode().childNodes()[0])
    out["reopened"] = dump("u16-reopened.mask", m[0], out["layer"]["bounds"]) if m else None
    again.close()
    return out

def lin16():
    doc, node = open_doc("rgb16.png")
    raw = bytes(node.pixelData(0, 0, W, H))
    node.setColorProfile("sRGB-elle-V2-g10.icc")  # assign (not convert): same samples, linear
    out = {"same_samples": bytes(node.pixelData(0, 0, W, H)) == raw}
    out.update(generated("lin16", doc, node))
    doc.close()
    return out

def f32():
    doc, node = open_doc("rgbf32.tif")
    out = generated("f32", doc, node)
    doc.close()
    return out

def gray8():
    doc, node = open_doc("gray8.png")
    out = generated("gray8", doc, node)
    doc.close()
    return out

def offset():
    src, src_node = open_doc("big.png")
    big_px = bytes(src_node.pixelData(*rect(src_node)))
    big_wh = rect(src_node)[2:]
    src.close()
    src, src_node = open_doc("small.png")
    small_px = bytes(src_node.pixelData(*rect(src_node)))
    small_wh = rect(src_node)[2:]
    src.close()
    doc = new_doc("offset")
    big = doc.createNode("big", "paintlayer")
    small = doc.createNode("small", "paintlayer")
    doc.rootNode().addChildNode(big, None)
    doc.rootNode().addChildNode(small, None)
    big.setPixelData(big_px, BIG_AT[0], BIG_AT[1], *big_wh)   # reaches past all four canvas edges
    small.setPixelData(small_px, 0, 0, *small_wh)
    small.move(*SMALL_AT)                                     # node offset, not pixel offset
    doc.refreshProjection()
    out = {"big": generated("big", doc, big), "small": generated("small", doc, small)}
    out["saved"] = doc.saveAs(P("offset.kra"))
    doc.close()
    return out

def group():
    src, src_node = open_doc("rgb8.png")
    px = bytes(src_node.pixelData(0, 0, W, H))
    src.close()
    doc = new_doc("group")
    grp = doc.createGroupLayer("people")
    doc.rootNode().addChildNode(grp, None)
    half = W * (H // 2) * 4
    for i, name in enumerate(("top", "bottom")):
        n = doc.createNode(name, "paintlayer")
        grp.addChildNode(n, None)
        n.setPixelData(px[i * half:(i + 1) * half], 0, i * (H // 2), W, H // 2)
    doc.refreshProjection()
    doc.waitForDone()
    out = generated("group", doc, grp)
    out["children"] = [[c.name(), c.type()] for c in grp.childNodes()]
    doc.close()
    return out

def refine():
    doc, node = open_doc("rgb8.png")
    rough = doc.createTransparencyMask("rough")
    rough.setPixelData(open(P("rough.gray"), "rb").read(), 0, 0, W, H)
    node.addChildNode(rough, None)
    doc.waitForDone()
    new = layermatte_krita.refine_mask(doc, rough)
    m = masks(node)
    out = {"names": [x.name() for x in m], "returned": new.name(),
           "mask": dump("refine.mask", m[0], [0, 0, W, H]) if m else None}
    hq = layermatte_krita.refine_mask(doc, new, quality="hq")   # the refined mask, refined again in hq
    out["hq_mask"] = dump("refine-hq.mask", masks(node)[0], [0, 0, W, H])
    out["hq_returned"] = hq.name()
    doc.close()
    return out

def outputs():
    doc, node = open_doc("rgb8.png")
    before = state(doc)
    sel = layermatte_krita.generate_mask(doc, node, output="selection", feather=2.0)
    out = {"nodes_unchanged": state(doc)["nodes"] == before["nodes"],
           "selection_rect": [sel.x(), sel.y(), sel.width(), sel.height()]}
    open(P("selection.mask"), "wb").write(bytes(doc.selection().pixelData(0, 0, W, H)))
    layer = layermatte_krita.generate_mask(doc, node, output="layer")
    out["layer"] = {"name": layer.name(), "type": layer.type(), "original": node.name(),
                    "siblings": [c.name() for c in doc.rootNode().childNodes() if c.type() != "selectionmask"],
                    "same_pixels": bytes(layer.pixelData(0, 0, W, H)) == bytes(node.pixelData(0, 0, W, H)),
                    "masks": [m.name() for m in masks(layer)],
                    "mask": dump("cutout.mask", masks(layer)[0], [0, 0, W, H]) if masks(layer) else None}
    out["original_masks"] = len(masks(node))
    clean = layermatte_krita.generate_mask(doc, node, output="layer", decontaminate=True)
    out["clean_pixels"] = dump("clean.bgra", clean, [0, 0, W, H])
    doc.close()
    return out

def errors():
    doc, node = open_doc("rgb8.png")
    before = state(doc)
    out = {}
    good = os.environ.get("LAYERMATTE_SOCKET")
    os.environ["LAYERMATTE_SOCKET"] = P("nowhere/daemon.sock")
    for key, kw in (("down_no_autostart", {"autostart": False}), ("down_autostart", {})):
        try:
            layermatte_krita.generate_mask(doc, node, **kw)
            out[key] = {"raised": None}
        except Exception as e:
            out[key] = {"raised": type(e).__name__, "message": str(e),
                        "is_layermatte_error": isinstance(e, layermatte_krita.LayermatteError)}
        out[key]["unchanged"] = state(doc) == before
    os.environ["LAYERMATTE_SOCKET"] = good
    cmyk = new_doc("cmyk", "CMYKA", "U8")
    layer = cmyk.createNode("ink", "paintlayer")
    cmyk.rootNode().addChildNode(layer, None)
    layer.setPixelData(bytes([10, 20, 30, 40, 255]) * 100, 0, 0, 10, 10)
    for key, d, n, kw in (("cmyk", cmyk, layer, {}), ("not_a_layer", doc, None, {}),
                          ("bad_option", doc, node, {"colour": "red"})):
        try:
            layermatte_krita.generate_mask(d, n, **kw)
            out[key] = {"raised": None}
        except Exception as e:
            out[key] = {"raised": type(e).__name__, "message": str(e),
                        "is_plugin_error": isinstance(e, layermatte_krita.PluginError)}
    out["unchanged_after_all"] = state(doc) == before
    cmyk.close()
    doc.close()
    return out

def main(args):
    global D, layermatte_krita
    D = args[0]
    app.setBatchmode(True)  # else 16-bit PNG import asks about gamma in a (hidden) dialog and hangs
    try:
        import layermatte_krita
        R["import"] = {"file": layermatte_krita.__file__,
                       "lite": layermatte_krita.masking.lite().__file__,
                       "grpc": layermatte_krita.masking.lite().grpc_available(),
                       "krita": app.version(), "qt": layermatte_krita.qt.BINDING}
    except Exception:
        R["import"] = {"error": traceback.format_exc()}
    else:
        for name in ("u8", "u16", "lin16", "f32", "gray8", "offset", "group", "refine", "outputs", "errors"):
            run_case(name, globals()[name])
    R["finished"] = True
    json.dump(R, open(P("results.json"), "w"), indent=1)
'''

# --------------------------------------------------------------------------------------------
# Test-only pykrita extension for the full application: drives the real actions, then exits.
E2E = r'''
import importlib, json, os, sys, time, traceback
from krita import Extension, Krita
# the binding Krita loaded (PyQt6 in Krita 6, PyQt5 before), found without the plug-in's own qt.py
QT = "PyQt6" if "PyQt6.QtCore" in sys.modules else "PyQt5"
QtCore, QtGui, QtWidgets = (importlib.import_module(QT + m) for m in (".QtCore", ".QtGui", ".QtWidgets"))
Qt, QTimer, QEvent, QKeyEvent = QtCore.Qt, QtCore.QTimer, QtCore.QEvent, QtGui.QKeyEvent
QApplication, QComboBox, QDialogButtonBox = QtWidgets.QApplication, QtWidgets.QComboBox, QtWidgets.QDialogButtonBox
QDoubleSpinBox, QMessageBox, QProgressDialog = QtWidgets.QDoubleSpinBox, QtWidgets.QMessageBox, QtWidgets.QProgressDialog
QPushButton = QtWidgets.QPushButton

D = os.environ["LM_E2E_DIR"]
R = {"log": [], "exceptions": []}

def P(n): return os.path.join(D, n)
def save(): json.dump(R, open(P("e2e.json"), "w"), indent=1, default=repr)
def log(*a):
    R["log"].append(" ".join(map(str, a)))
    save()

def masks(node): return [c for c in node.childNodes() if c.type() == "transparencymask"]
def shot(name):  # the screen under the main window (dialogs and menus included)
    g = Krita.instance().activeWindow().qwindow().frameGeometry()
    QApplication.primaryScreen().grabWindow(0, g.x(), g.y(), g.width(), g.height()).save(P(name))

def menus(bar):
    found = {}
    def walk(menu, path):
        for a in menu.actions():
            if a.menu() is not None:
                walk(a.menu(), path + [a.objectName() or a.text()])
            elif a.objectName().startswith("layermatte"):
                found.setdefault(a.objectName(), []).append("/".join(path))
    walk(bar, [])
    return found

class ShownProgress(QtCore.QObject):
    """Labels of every progress dialog shown: polling can miss one a fast job closes at once."""
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Show and isinstance(obj, QProgressDialog):
            self.seen.append(obj.labelText())
        return False

class E2E(Extension):
    def setup(self):
        def hook(t, v, tb):  # instead of Krita's modal error dialog
            R["exceptions"].append("".join(traceback.format_exception(t, v, tb)))
            save()
        sys.excepthook = hook
        Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(500, self.step(self.start)))

    def createActions(self, window):
        pass

    def step(self, fn):
        def run():
            try:
                fn()
            except Exception:
                R["exceptions"].append(traceback.format_exc())
                self.finish()
        return run

    def wait(self, check, then, timeout=240):
        t0 = time.time()
        timer = QTimer()
        def poll():
            try:
                ok = check()
            except Exception:
                R["exceptions"].append(traceback.format_exc())
                ok = "error"
            if ok or time.time() - t0 > timeout:
                timer.stop()
                R.setdefault("waits", []).append([fn_name(check), bool(ok), round(time.time() - t0, 1)])
                self.step(then)()
        timer.timeout.connect(poll)
        timer.start(100)
        self.timer = timer

    def start(self):
        app = Krita.instance()
        self.app, self.qwin = app, app.activeWindow().qwindow()
        R["qt"] = [QT, QtCore.QT_VERSION_STR, app.version()]
        R["actions"] = {k: app.action(k) is not None and app.action(k).text()
                        for k in ("layermatte_generate_mask", "layermatte_refine_mask", "layermatte_options")}
        R["menus"] = menus(self.qwin.menuBar())
        doc = app.openDocument(P("rgb8.png"))
        app.activeWindow().addView(doc)
        self.doc, self.node = doc, doc.rootNode().childNodes()[0]
        QTimer.singleShot(1000, self.step(self.opened))   # let the view settle first

    def opened(self):
        self.doc.setActiveNode(self.node)
        log("document open", self.node.name(), self.doc.activeNode().name())
        bar = self.qwin.menuBar()
        entry = [a for a in bar.actions() if a.objectName() == "Layer"][0]
        self.menu = entry.menu()
        self.menu.popup(self.qwin.mapToGlobal(bar.actionGeometry(entry).bottomLeft()))
        QTimer.singleShot(700, self.step(self.menu_shown))

    def menu_shown(self):
        shot("krita-layer-menu.png")
        R["layer_menu"] = [a.text() for a in self.menu.actions() if a.objectName().startswith("layermatte")]
        self.menu.hide()
        app = self.app
        QTimer.singleShot(1000, self.step(self.in_options))
        app.action("layermatte_options").trigger()   # modal: returns once in_options saved it
        log("options closed")
        R["settings"] = {k: app.readSetting("layermatte", k, "?") for k in ("feather", "output", "autostart")}
        self.progress_seen = []
        self.shown = ShownProgress(self.progress_seen)
        QApplication.instance().installEventFilter(self.shown)
        # from the Layer menu, the way a user picks it: open the menu, highlight the entry, press Return
        self.menu.popup(self.qwin.mapToGlobal(self.qwin.menuBar().actionGeometry(self.menu.menuAction()).bottomLeft()))
        QTimer.singleShot(700, self.step(self.pick_generate))

    def pick_generate(self):
        entry = [a for a in self.menu.actions() if a.objectName() == "layermatte_generate_mask"][0]
        self.menu.setActiveAction(entry)
        R["picked_from_menu"] = [self.menu.isVisible(), self.menu.activeAction() is entry]
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            QApplication.sendEvent(self.menu, QKeyEvent(kind, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier))
        R["menu_closed"] = not self.menu.isVisible()
        self.wait(self.mask_or_box, self.generated)

    def in_options(self):
        dlg = QApplication.activeModalWidget()
        R["options_dialog"] = dlg.windowTitle() if dlg else None
        dlg.grab().save(P("krita-options.png"))
        combo = dlg.findChildren(QComboBox)[0]
        R["model_choices"] = [combo.itemText(i) for i in range(combo.count())]
        spins = dlg.findChildren(QDoubleSpinBox)
        spins[0].setValue(1.5)   # feather
        dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save).click()

    def mask_or_box(self):
        for w in QApplication.topLevelWidgets():
            if isinstance(w, QProgressDialog) and w.isVisible():
                if not self.progress_seen:
                    shot("krita-progress.png")
                self.progress_seen.append(w.labelText())
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            R["unexpected_box"] = box.text()
            box.accept()
            return "box"
        return bool(masks(self.node))

    def generated(self):
        R["progress_labels"] = sorted(set(self.progress_seen))
        self.wait(lambda: self.doc.activeNode().type() == "transparencymask", self.activated, timeout=10)

    def activated(self):
        shot("krita-result.png")
        m = masks(self.node)
        R["mask_names"] = [x.name() for x in m]
        R["active_node"] = [self.doc.activeNode().name(), self.doc.activeNode().type()]
        if m:
            open(P("gui.mask"), "wb").write(bytes(m[0].pixelData(0, 0, 320, 240)))
        self.app.action("edit_undo").trigger()
        self.wait(lambda: not masks(self.node), self.undone, timeout=20)

    def undone(self):
        R["after_undo"] = [x.name() for x in masks(self.node)]
        self.app.action("edit_redo").trigger()
        self.wait(lambda: masks(self.node), self.redone, timeout=20)

    def redone(self):
        m = masks(self.node)
        R["after_redo"] = [x.name() for x in m]
        R["active_after_redo"] = self.doc.activeNode().type()  # a mask: Generate must use its layer
        if m:
            open(P("gui-redo.mask"), "wb").write(bytes(m[0].pixelData(0, 0, 320, 240)))
        # daemon unreachable, no auto-start: a message box, document unchanged
        self.before = [(c.name(), c.type()) for c in self.node.childNodes()]
        self.socket = os.environ["LAYERMATTE_SOCKET"]
        os.environ["LAYERMATTE_SOCKET"] = P("nowhere/daemon.sock")
        self.app.writeSetting("layermatte", "autostart", "false")
        self.box = None
        QTimer.singleShot(0, lambda: self.app.action("layermatte_generate_mask").trigger())
        self.wait(self.error_box, self.errored, timeout=60)

    def error_box(self):
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            R["error_box"] = {"title": box.windowTitle(), "text": box.text()}
            box.grab().save(P("krita-error.png"))
            box.accept()
            return True
        return False

    def errored(self):
        self.wait(lambda: True, self.after_error, timeout=1)

    def after_error(self):
        R["after_error_children"] = [(c.name(), c.type()) for c in self.node.childNodes()]
        R["unchanged_after_error"] = R["after_error_children"] == self.before
        # Cancel in the progress dialog: no mask, request abandoned at once
        os.environ["LAYERMATTE_SOCKET"] = self.socket
        self.app.writeSetting("layermatte", "autostart", "true")
        QTimer.singleShot(0, lambda: self.app.action("layermatte_generate_mask").trigger())
        self.wait(lambda: self.progress_dialog() is not None, self.click_cancel, timeout=30)

    def progress_dialog(self):
        for w in QApplication.topLevelWidgets():
            if isinstance(w, QProgressDialog) and w.isVisible():
                return w

    def click_cancel(self):
        dlg = self.progress_dialog()
        self.t_cancel = time.time()
        [b for b in dlg.findChildren(QPushButton) if b.text().replace("&", "") == "Cancel"][0].click()
        import layermatte_krita
        self.wait(lambda: layermatte_krita._extension.runner is None, self.cancelled, timeout=30)

    def cancelled(self):
        R["cancel"] = {"seconds": round(time.time() - self.t_cancel, 2),
                       "dialog_gone": self.progress_dialog() is None,
                       "unchanged": [(c.name(), c.type()) for c in self.node.childNodes()] == self.before}
        self.finish()

    def finish(self):
        R["finished"] = True
        save()
        # Quit the way a user does (File > Quit), so that Krita writes its settings to kritarc
        # (Krita 6 keeps them in memory until then). Nothing to save: no "save changes?" prompt.
        import threading
        threading.Timer(60, lambda: os._exit(3)).start()   # quitting hung
        for d in Krita.instance().documents():
            d.setModified(False)
        Krita.instance().action("file_quit").trigger()

def fn_name(f): return getattr(f, "__name__", "check")

Krita.instance().addExtension(E2E(Krita.instance()))
'''
E2E_DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=lm_e2e
X-Python-2-Compatible=false
Name=layermatte test driver
Comment=Drives the layermatte actions in tests
"""


# --------------------------------------------------------------------------------------------
def _rgba(rgb: np.ndarray, alpha) -> np.ndarray:
    return np.dstack([rgb, np.broadcast_to(alpha, rgb.shape[:2]).astype(rgb.dtype)])


def srgb_encode16(a: np.ndarray) -> np.ndarray:
    """What the plug-in must send for a linear-profile 16-bit layer (colour only)."""
    out = a.copy()
    v = a[..., :3].astype("f8") / 65535
    v = np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)
    out[..., :3] = np.rint(v * 65535).astype(np.uint16)
    return out


@pytest.fixture(scope="module")
def images(photos) -> dict[str, np.ndarray]:
    """Layer pixels as the host knows them (straight RGBA / gray-alpha)."""
    import cv2
    astro, coffee, cat = photos["astronaut"], photos["coffee"], photos["cat"]
    rgb16 = coffee[:H, :W].astype(np.uint16) * 257
    yy, xx = np.mgrid[:H, :W]
    rgb16 += ((xx * 7 + yy * 3) % 200).astype(np.uint16)[..., None]  # real 16-bit detail
    a16 = np.full((H, W), 65535, np.uint16)
    a16[:40, :60] = 30000  # partly transparent corner: alpha must stay the 4th channel
    gray = (astro[:H, 100:100 + W] @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    return {
        "rgb8": _rgba(astro[:H, 100:100 + W], 255),
        "rgb16": np.dstack([rgb16, a16]),
        "f32": _rgba(cv2.resize(cat, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255,
                     1.0).astype(np.float32),
        "gray8": np.dstack([gray, np.full_like(gray, 255)]),
        "big": _rgba(astro[100:100 + 300, 50:50 + 400], 255),  # 400x300 on a 320x240 canvas
        "small": _rgba(coffee[100:220, 200:360], 255),
    }


class Expected:
    """The daemon's own mattes (host client), each computed once."""

    def __init__(self, daemon, images):
        self.daemon, self.images, self.cache = daemon, images, {}

    def __call__(self, key: str, image: str | np.ndarray | None = None, feather: float = 0.0,
                 guide: np.ndarray | None = None, quality: str = "fast") -> np.ndarray:
        if key not in self.cache:
            from layermatte.imaging.pipeline import MatteOptions
            from layermatte.imaging.refine import EdgeOptions
            img = self.images[image or key] if not isinstance(image, np.ndarray) else image
            with self.daemon.client() as c:
                self.cache[key] = c.matte(img, options=MatteOptions(edges=EdgeOptions(feather_px=feather),
                                                                    quality=quality),
                                          guide_mask=guide).matte
        return self.cache[key]


@pytest.fixture(scope="module")
def expected(daemon, images):
    return Expected(daemon, images)


@pytest.fixture(scope="module", params=KRITA_ROOTS)
def kroot(request) -> str:
    """The editor root of this round: trixie (Krita 5.2), forky (Krita 5.3) or krita6 (Krita 6, Qt6)."""
    return request.param


@pytest.fixture(scope="module")
def kenv(kroot, daemon, images, expected):
    """A bound working folder (same path inside the root) with the inputs and the plug-in
    installed by `layermatte install krita --dest` into a fresh HOME."""
    editor_root(kroot)
    work = Path(tempfile.mkdtemp(prefix=f"lmk-{kroot}-", dir="/tmp"))
    work.chmod(0o755)
    import cv2
    Image.fromarray(images["rgb8"]).save(work / "rgb8.png")
    Image.fromarray(images["big"]).save(work / "big.png")
    Image.fromarray(images["small"]).save(work / "small.png")
    Image.fromarray(images["gray8"], "LA").save(work / "gray8.png")
    assert cv2.imwrite(str(work / "rgb16.png"), cv2.cvtColor(images["rgb16"], cv2.COLOR_RGBA2BGRA))
    assert cv2.imwrite(str(work / "rgbf32.tif"), cv2.cvtColor(images["f32"], cv2.COLOR_RGBA2BGRA))
    # a rough hand-made mask to refine: the matte thresholded and grown by 6 px
    rough = cv2.dilate(((expected("rgb8") > 128) * 255).astype(np.uint8), np.ones((13, 13), np.uint8))
    (work / "rough.gray").write_bytes(rough.tobytes())
    homes = {}
    for name in ("home", "guihome"):
        home = work / name
        pykrita = home / ".local" / "share" / "krita" / "pykrita"
        p = subprocess.run([str(Path(sys.executable).parent / "layermatte"), "install", "krita",
                            "--dest", str(pykrita)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        homes[name] = home
    with bind(work, root=kroot), bind(daemon.socket.parent, root=kroot):
        yield {"work": work, "rough": rough, "root": kroot, **homes}
    if os.environ.get("LAYERMATTE_KEEP_EDITOR_FILES") != "1":  # =1: keep for a look afterwards
        shutil.rmtree(work, ignore_errors=True)


def _output(p) -> str:
    if isinstance(p, subprocess.TimeoutExpired):
        text = (p.stdout or "") + (p.stderr or "")
    else:
        text = p.stdout + p.stderr
    return "\n".join(line for line in text.splitlines() if "krita.lib.resources" not in line)[-6000:]


@pytest.fixture(scope="module")
def krun(kenv, daemon):
    work = kenv["work"]
    (work / "lm_driver.py").write_text(DRIVER.replace(
        "R = {}", f"R = {{}}\nW, H = {W}, {H}\nBIG_AT, SMALL_AT = {BIG_AT}, {SMALL_AT}", 1))
    pykrita = kenv["home"] / ".local" / "share" / "krita" / "pykrita"
    try:
        p = run_in_root(["kritarunner", "-s", "lm_driver", "-f", "main", str(work)], home=kenv["home"],
                        root=kenv["root"],
                        env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": f"{work}:{pykrita}",
                             "LAYERMATTE_SOCKET": str(daemon.socket)}, timeout=600)
    except subprocess.TimeoutExpired as e:
        p = e
    results = work / "results.json"
    assert results.exists(), f"kritarunner wrote no results:\n{_output(p)}"
    r = json.loads(results.read_text())
    assert r.get("finished"), f"the driver did not finish:\n{_output(p)}"
    assert "error" not in r["import"], r["import"]["error"]
    r["_output"] = _output(p)
    return r


def case(krun, name):
    r = krun[name]
    assert "error" not in r, r["error"]
    return r


def read_mask(work: Path, name: str, w: int, h: int) -> np.ndarray:
    data = (work / name).read_bytes()
    assert len(data) == w * h, f"{name}: {len(data)} bytes for {w}x{h}"
    return np.frombuffer(data, np.uint8).reshape(h, w)


def assert_matte(got: np.ndarray, want: np.ndarray, what: str, tol: int = TOL):
    assert got.shape == want.shape, f"{what}: {got.shape} vs {want.shape}"
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= tol, (f"{what}: {int((diff > tol).sum())} pixels differ by more than {tol} "
                               f"(max {diff.max()}) from the daemon's matte")
    # and the matte is a real one, not empty or full
    assert 0.05 < (want > 128).mean() < 0.95, f"{what}: degenerate reference matte"


# --------------------------------------------------------------------------------------------
def test_runs_in_debian_krita_with_grpc_transport(krun, kroot):
    info = krun["import"]
    assert info["krita"].startswith(ROOTS[kroot].krita + "."), info["krita"]
    assert info["qt"] == ("PyQt6" if ROOTS[kroot].krita >= "6" else "PyQt5"), "the plug-in chose the wrong Qt binding"
    assert info["grpc"] is True, "the root has python3-grpcio: the gRPC transport must be used"
    assert info["lite"].endswith("pykrita/layermatte_krita/layermatte_lite.py")


def test_pixel_layouts_per_depth(krun, images):
    """Krita's pixelData layout, as the adapter assumes it (core.NATIVE)."""
    r8 = case(krun, "u8")["layer"]
    assert (r8["model"], r8["depth"]) == ("RGBA", "U8")
    px = bytes.fromhex(r8["first_pixels"])[:4]
    assert list(px) == list(images["rgb8"][0, 0, [2, 1, 0, 3]]), "8-bit is B,G,R,A"
    r16 = case(krun, "u16")["layer"]
    assert (r16["model"], r16["depth"], r16["profile"]) == ("RGBA", "U16", "sRGB-elle-V2-srgbtrc.icc")
    px16 = np.frombuffer(bytes.fromhex(r16["first_pixels"])[:8], "<u2")
    assert list(px16) == list(images["rgb16"][0, 0, [2, 1, 0, 3]]), "16-bit integer is B,G,R,A too"
    rf = case(krun, "f32")["layer"]
    assert (rf["model"], rf["depth"]) == ("RGBA", "F32")
    pxf = np.frombuffer(bytes.fromhex(rf["first_pixels"])[:16], "<f4")
    np.testing.assert_allclose(pxf, images["f32"][0, 0], atol=1e-6, err_msg="float is R,G,B,A")
    rg = case(krun, "gray8")["layer"]
    assert (rg["model"], rg["depth"]) == ("GRAYA", "U8")
    assert list(bytes.fromhex(rg["first_pixels"])[:2]) == list(images["gray8"][0, 0])


def test_8bit_mask_equals_daemon_matte_and_survives_kra_and_png(krun, kenv, images, expected):
    r = case(krun, "u8")
    assert r["layer"]["bounds"] == [0, 0, W, H]
    assert (r["mask_type"], r["mask_name"], r["n_masks"]) == ("transparencymask", "layermatte", 1)
    want = expected("rgb8")
    got = read_mask(kenv["work"], r["mask"], W, H)
    assert_matte(got, want, "8-bit RGBA")
    assert r["saved"] and r["exported"]
    assert r["reopened"]["n_masks"] == 1
    np.testing.assert_array_equal(read_mask(kenv["work"], r["reopened"]["mask"], W, H), got)
    png = np.array(Image.open(kenv["work"] / "u8-export.png"))
    assert png.shape == (H, W, 4), "PNG export keeps the alpha channel"
    assert np.abs(png[..., 3].astype(int) - got).max() <= 1, "exported alpha is the mask"
    seen = png[..., 3] > 0  # (fully transparent pixels are written as 0,0,0,0)
    np.testing.assert_array_equal(png[..., :3][seen], images["rgb8"][..., :3][seen])  # colours untouched


def test_16bit_mask(krun, kenv, images, expected):
    r = case(krun, "u16")
    got = read_mask(kenv["work"], r["mask"], W, H)
    assert_matte(got, expected("rgb16"), "16-bit RGBA")
    np.testing.assert_array_equal(read_mask(kenv["work"], r["reopened"], W, H), got)


def test_16bit_linear_profile_is_encoded_to_srgb(krun, kenv, images, expected):
    r = case(krun, "lin16")
    assert r["same_samples"] and r["layer"]["profile"] == "sRGB-elle-V2-g10.icc"
    got = read_mask(kenv["work"], r["mask"], W, H)
    assert_matte(got, expected("lin16", srgb_encode16(images["rgb16"])), "16-bit linear")


def test_float_mask(krun, kenv, expected):
    r = case(krun, "f32")
    assert_matte(read_mask(kenv["work"], r["mask"], W, H), expected("f32"), "32-bit float RGBA")


def test_grayscale_mask(krun, kenv, expected):
    r = case(krun, "gray8")
    assert_matte(read_mask(kenv["work"], r["mask"], W, H), expected("gray8"), "8-bit gray+alpha")


def test_offset_and_oversized_layers(krun, kenv, images, expected):
    r = case(krun, "offset")
    big, small = r["big"], r["small"]
    assert big["layer"]["bounds"] == [*BIG_AT, 400, 300], "the layer's real bounds, past the canvas"
    assert small["layer"]["bounds"] == [*SMALL_AT, 160, 120]
    assert_matte(read_mask(kenv["work"], big["mask"], 400, 300), expected("big"), "oversized layer")
    assert_matte(read_mask(kenv["work"], small["mask"], 160, 120), expected("small"), "offset layer")
    assert big["mask_parent"] == "big" and small["mask_parent"] == "small"
    assert r["saved"]


def test_group_layer_uses_projection(krun, kenv, expected):
    r = case(krun, "group")
    assert r["layer"]["bounds"] == [0, 0, W, H]
    assert r["mask_parent"] == "people"
    assert r["children"][-1] == ["layermatte", "transparencymask"]
    assert_matte(read_mask(kenv["work"], r["mask"], W, H), expected("rgb8"), "group projection")


def test_refine_existing_mask(krun, kenv, images, expected):
    r = case(krun, "refine")
    assert r["names"] == ["rough"] and r["returned"] == "rough", "the refined mask replaces the rough one"
    want = expected("refine", "rgb8", guide=kenv["rough"])
    got = read_mask(kenv["work"], r["mask"], W, H)
    assert_matte(got, want, "refined mask")
    assert (got != kenv["rough"]).mean() > 0.01, "refinement changed the rough mask"
    # quality="hq" reaches the daemon: the result is the daemon's hq refinement of that mask
    assert r["hq_returned"] == "rough"
    hq = read_mask(kenv["work"], r["hq_mask"], W, H)
    assert_matte(hq, expected("refine-hq", "rgb8", guide=got, quality="hq"), "hq-refined mask")
    # fast refinement of the same mask is deterministic: any change is hq's (on an already
    # refined mask hq moves ~2000 pixels by a few levels; on a model matte it moves more)
    assert (hq != expected("refine-fast-again", "rgb8", guide=got)).sum() > 50, \
        "hq gave the fast result: the option was lost"


def test_selection_and_cutout_layer_outputs(krun, kenv, expected, images):
    r = case(krun, "outputs")
    assert r["nodes_unchanged"], "output=selection adds no nodes"
    assert r["selection_rect"] == [0, 0, W, H]
    assert_matte(read_mask(kenv["work"], "selection.mask", W, H), expected("feather2", "rgb8", feather=2.0),
                 "selection with feather 2")
    lay = r["layer"]
    assert lay["type"] == "paintlayer" and lay["same_pixels"] and lay["masks"] == ["layermatte"]
    assert lay["siblings"] == [lay["original"], lay["name"]], "the cut-out goes right above the layer"
    assert r["original_masks"] == 0
    assert_matte(read_mask(kenv["work"], lay["mask"], W, H), expected("rgb8"), "cut-out layer mask")
    # decontaminate=True: the cut-out's edge colours lose the background tint, the rest is kept
    bgra = np.frombuffer((kenv["work"] / r["clean_pixels"]).read_bytes(), np.uint8).reshape(H, W, 4)
    src, matte = images["rgb8"], expected("rgb8")
    band, solid = (matte > 20) & (matte < 230), matte == 255
    got = bgra[..., [2, 1, 0]].astype(int)
    assert band.sum() > 100 and np.abs(got[band] - src[..., :3][band]).mean() > 2
    assert np.abs(got[solid] - src[..., :3][solid]).max() <= 1
    assert np.array_equal(bgra[..., 3], src[..., 3])


def test_errors_leave_document_unchanged(krun):
    r = case(krun, "errors")
    down = r["down_no_autostart"]
    assert down["is_layermatte_error"] and "no layermatte daemon answers" in down["message"], down
    assert down["unchanged"]
    auto = r["down_autostart"]
    # auto-start needs the `layermatte` program, which does not exist inside the root
    assert auto["is_layermatte_error"] and "layermatte" in auto["message"], auto
    assert auto["unchanged"]
    assert r["cmyk"]["is_plugin_error"] and "Convert" in r["cmyk"]["message"], r["cmyk"]
    assert r["not_a_layer"]["is_plugin_error"], r["not_a_layer"]
    assert r["bad_option"]["is_plugin_error"] and "colour" in r["bad_option"]["message"]
    assert r["unchanged_after_all"]


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gui(kenv, daemon):
    """One run of the full application under Xvfb with the plug-in enabled in kritarc."""
    work, home = kenv["work"], kenv["guihome"]
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    (pykrita / "lm_e2e").mkdir(exist_ok=True)
    (pykrita / "lm_e2e" / "__init__.py").write_text(E2E)
    (pykrita / "lm_e2e.desktop").write_text(E2E_DESKTOP)
    (home / ".config").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "kritarc").write_text("[python]\nenable_layermatte_krita=true\nenable_lm_e2e=true\n")
    # Krita is a single-instance application keyed on a socket in TMPDIR: a private TMPDIR keeps a
    # Krita started by another test from swallowing this one.
    (work / "tmp").mkdir(exist_ok=True)
    try:
        p = run_in_root(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "krita", "--nosplash"], home=home,
                        root=kenv["root"],
                        env={"LAYERMATTE_SOCKET": str(daemon.socket), "LM_E2E_DIR": str(work),
                             "TMPDIR": str(work / "tmp")}, timeout=400)
    except subprocess.TimeoutExpired as e:
        p = e
    out = work / "e2e.json"
    assert out.exists(), f"the test extension never ran:\n{_output(p)}"
    r = json.loads(out.read_text())
    assert r.get("finished"), f"Krita did not finish the scenario: {r}\n{_output(p)}"
    assert getattr(p, "returncode", None) == 0, f"Krita did not quit cleanly:\n{_output(p)}"
    assert not r["exceptions"], "\n".join(r["exceptions"])
    shots = os.environ.get("LAYERMATTE_KRITA_SCREENSHOTS")
    if shots:  # docs/krita-*.png from Krita 5.2, docs/krita53-*.png, docs/krita6-*.png
        prefix = {"trixie": "krita-", "forky": "krita53-"}.get(kenv["root"], kenv["root"] + "-")
        for png in work.glob("krita-*.png"):
            shutil.copy(png, Path(shots) / png.name.replace("krita-", prefix, 1))
    r["kritarc"] = (home / ".config" / "kritarc").read_text()
    return r


def test_gui_registers_actions_in_menus(gui, kroot):
    qt6 = ROOTS[kroot].krita >= "6"
    assert gui["qt"][0] == ("PyQt6" if qt6 else "PyQt5") and gui["qt"][1].startswith("6." if qt6 else "5."), gui["qt"]
    assert gui["actions"] == {"layermatte_generate_mask": "Generate Layer Mask (layermatte)",
                              "layermatte_refine_mask": "Refine Layer Mask (layermatte)",
                              "layermatte_options": "layermatte Options…"}
    for action in gui["actions"]:
        assert sorted(gui["menus"][action]) == ["Layer", "tools/scripts"], gui["menus"]
    assert gui["layer_menu"] == list(gui["actions"].values())


def test_gui_generate_with_saved_options_progress_and_undo(gui, kenv, expected):
    assert gui["options_dialog"] == "layermatte options"
    assert "isnet-general" in gui["model_choices"], "the model list comes from the daemon"
    assert gui["settings"]["feather"] == "1.5", "the options dialog saves to Krita's settings"
    assert "[layermatte]" in gui["kritarc"] and "feather=1.5" in gui["kritarc"]
    assert "unexpected_box" not in gui, gui.get("unexpected_box")
    assert gui["mask_names"] == ["layermatte"]
    assert gui["active_node"] == ["layermatte", "transparencymask"], "the new mask becomes the active node"
    got = read_mask(kenv["work"], "gui.mask", W, H)
    assert_matte(got, expected("feather1.5", "rgb8", feather=1.5), "GUI action, feather 1.5 from settings")
    assert any("Masking 'Background'" in label for label in gui["progress_labels"]), gui["progress_labels"]
    assert gui["picked_from_menu"] == [True, True] and gui["menu_closed"], "Generate was not run from the Layer menu"
    assert gui["after_undo"] == [], "one Undo removes the mask"
    assert gui["after_redo"] == ["layermatte"]
    np.testing.assert_array_equal(read_mask(kenv["work"], "gui-redo.mask", W, H), got)


def test_gui_daemon_down_shows_message_box(gui):
    # the re-added mask was the active node: Generate used its layer (else: "select a layer")
    assert gui["active_after_redo"] == "transparencymask"
    box = gui["error_box"]
    assert box["title"] == "layermatte"
    assert "no layermatte daemon answers" in box["text"] and "not changed" in box["text"]
    assert gui["unchanged_after_error"], gui["after_error_children"]


def test_gui_cancel_in_progress_dialog(gui):
    c = gui["cancel"]
    assert c["dialog_gone"] and c["unchanged"], c
    assert c["seconds"] < 2, "Cancel abandons the request at once (the model run takes longer)"


# --------------------------------------------------------------------------------------------
def _core():
    sys.path.insert(0, str(REPO / "plugins" / "krita"))
    try:
        from layermatte_krita import core
    finally:
        sys.path.pop(0)
    return core


@pytest.mark.parametrize("model,depth", [("RGBA", "U8"), ("RGBA", "U16"), ("RGBA", "F16"), ("RGBA", "F32"),
                                         ("GRAYA", "U16"), ("GRAYA", "F32")])
def test_core_pure_python_path_matches_numpy(model, depth, monkeypatch):
    """Krita's bundled Python has no numpy: the fallback conversions must give the same bytes."""
    core = _core()
    rng = np.random.default_rng(5)
    ch = 4 if model == "RGBA" else 2
    kind = {"U8": "u1", "U16": "<u2", "F16": "<f2", "F32": "<f4"}[depth]
    arr = (rng.random((7, 9, ch)) * (1 if kind[1] == "f" else np.iinfo(kind).max)).astype(kind)
    results = []
    for profile in ("sRGB-elle-V2-srgbtrc.icc", "sRGB-elle-V2-g10.icc"):
        layer = core.Layer(0, 0, 9, 7, model, depth, profile, arr.tobytes())
        for use_numpy in (True, False):
            monkeypatch.setattr(core, "USE_NUMPY", use_numpy)
            results.append(core.encode(layer))
        assert results[-1] == results[-2], (profile, "numpy and pure-Python paths differ")
    fmt, data = results[0]
    if (model, depth) == ("RGBA", "U16"):
        assert fmt == "RGBA16"
        np.testing.assert_array_equal(np.frombuffer(data, "<u2").reshape(7, 9, 4), arr[..., [2, 1, 0, 3]])
    if depth == "F16":
        np.testing.assert_array_equal(np.frombuffer(data, "<f4").reshape(7, 9, ch), arr.astype("<f4"))
    lin = results[2][1]  # alpha is never gamma-encoded
    n = {"RGBA8": 1, "BGRA8": 1, "RGBA16": 2, "GRAYA16": 2}.get(fmt, 4)
    k = {1: "u1", 2: "<u2", 4: "<f4"}[n]
    np.testing.assert_array_equal(np.frombuffer(lin, k).reshape(7, 9, ch)[..., -1],
                                  np.frombuffer(data, k).reshape(7, 9, ch)[..., -1])


def test_core_quality_option_is_checked_and_passed_on():
    core = _core()
    opts = core.normalize_options({"quality": "HQ"})
    assert opts["quality"] == "hq" and core.lite_options(opts)["quality"] == "hq"
    assert core.normalize_options({})["quality"] == "fast"
    with pytest.raises(core.PluginError, match="quality must be one of fast, hq"):
        core.normalize_options({"quality": "best"})
