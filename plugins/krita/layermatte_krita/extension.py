"""The Krita GUI side: actions, options dialog, progress dialog with Cancel.

The daemon call runs in a Python thread; a QTimer on the UI thread feeds the
progress dialog and, when the thread is done, applies the result (Krita's node
API must only be used from the UI thread).
"""
from __future__ import annotations

import threading

from krita import Extension, Krita

from .qt import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QIcon,
                 QLabel, QMessageBox, QProgressDialog, Qt, QTimer)

from . import core
from .lite import Cancelled, LayermatteError, list_models
from .masking import Job, PluginError

GROUP = "layermatte"
TITLE = "layermatte"
STAGES = {"receive": "Sending the layer", "queue": "Waiting for the daemon", "load": "Loading the model",
          "preprocess": "Preparing", "inference": "Running the model", "upsample": "Upsampling",
          "refine": "Refining edges", "decontaminate": "Cleaning edge colours",
          "send": "Receiving the matte", "done": "Done"}
OUTPUT_LABELS = {"mask": "Transparency mask", "selection": "Selection", "layer": "New layer (cut-out)"}
QUALITY_LABELS = {"fast": "Fast (edge-aware upsampling)", "hq": "High quality (matting on hair and fur, slower)"}


def load_options() -> dict:
    """Options remembered in Krita's settings (kritarc, group [layermatte])."""
    app = Krita.instance()
    raw = {k: app.readSetting(GROUP, k, str(v)) for k, v in core.DEFAULTS.items()}
    try:
        return core.normalize_options(raw)
    except (PluginError, ValueError):
        return dict(core.DEFAULTS)


def save_options(options: dict) -> None:
    app = Krita.instance()
    for key, value in core.normalize_options(options).items():
        app.writeSetting(GROUP, key, str(value).lower() if isinstance(value, bool) else str(value))


class OptionsDialog(QDialog):
    def __init__(self, parent=None, options: dict | None = None):
        super().__init__(parent)
        self.setWindowTitle("layermatte options")
        opts = options or load_options()
        form = QFormLayout(self)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItem("")
        for m in list_models():
            note = "default" if m["default"] else ("" if m["pulled"] else "not downloaded yet")
            self.model.addItem(m["id"])
            self.model.setItemData(self.model.count() - 1, f"{m['title']} {note}".strip(),
                                   Qt.ItemDataRole.ToolTipRole)
        if opts["model"] and self.model.findText(opts["model"]) < 0:
            self.model.addItem(opts["model"])
        self.model.setCurrentText(opts["model"])
        self.model.lineEdit().setPlaceholderText("daemon default")
        self.feather = self._spin(*core.RANGES["feather"], 1, opts["feather"], " px")
        self.shift = self._spin(*core.RANGES["shift"], 1, opts["shift"], " px")
        self.smooth = self._spin(*core.RANGES["smooth"], 2, opts["smooth"], "")
        self.contrast = self._spin(*core.RANGES["contrast"], 2, opts["contrast"], "")
        self.quality = QComboBox()
        for key, label in QUALITY_LABELS.items():
            self.quality.addItem(label, key)
        self.quality.setCurrentIndex(list(QUALITY_LABELS).index(opts["quality"]))
        self.output = QComboBox()
        for key, label in OUTPUT_LABELS.items():
            self.output.addItem(label, key)
        self.output.setCurrentIndex(list(OUTPUT_LABELS).index(opts["output"]))
        self.decontaminate = QCheckBox("Decontaminate colours (cut-out layer output, 8-bit RGB)")
        self.decontaminate.setChecked(opts["decontaminate"])
        self.autostart = QCheckBox("Start the layermatte daemon when it is not running")
        self.autostart.setChecked(opts["autostart"])
        for label, widget in (("Model", self.model), ("Feather", self.feather), ("Shift edge", self.shift),
                              ("Smooth", self.smooth), ("Contrast", self.contrast),
                              ("Edge quality", self.quality), ("Output", self.output),
                              ("", self.decontaminate), ("", self.autostart)):
            form.addRow(label, widget)
        form.addRow(QLabel("Refine Layer Mask uses feather, shift, smooth, contrast and edge quality only."))
        button = QDialogButtonBox.StandardButton
        buttons = QDialogButtonBox(button.Save | button.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    @staticmethod
    def _spin(lo, hi, decimals, value, suffix):
        spin = QDoubleSpinBox()
        spin.setRange(lo, hi)
        spin.setDecimals(decimals)
        spin.setSingleStep(1.0 if decimals < 2 else 0.05)
        spin.setSuffix(suffix)
        spin.setValue(value)
        return spin

    def options(self) -> dict:
        return {"model": self.model.currentText().strip(), "feather": self.feather.value(),
                "shift": self.shift.value(), "smooth": self.smooth.value(),
                "contrast": self.contrast.value(), "quality": self.quality.currentData(),
                "output": self.output.currentData(),
                "decontaminate": self.decontaminate.isChecked(), "autostart": self.autostart.isChecked()}


class Runner:
    """One job: worker thread + progress dialog; applies the result on the UI thread."""

    def __init__(self, parent, job: Job, done):
        self.job, self.parent, self.done = job, parent, done
        self.cancel = threading.Event()
        self.progress = ("receive", 0.0)
        self.error: BaseException | None = None
        self.dialog = QProgressDialog(job.title, "Cancel", 0, 1000, parent)
        self.dialog.setWindowTitle(TITLE)
        self.dialog.setAutoClose(False)
        self.dialog.setAutoReset(False)
        self.dialog.setMinimumDuration(0)
        self.dialog.canceled.connect(self.cancel.set)
        self.thread = threading.Thread(target=self._work, name="layermatte", daemon=True)
        self.timer = QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self._poll)

    def start(self):
        self.dialog.show()
        self.thread.start()
        self.timer.start()

    def _work(self):
        try:
            self.job.run(progress=self._on_progress, cancel=self.cancel)
        except BaseException as e:  # reported on the UI thread
            self.error = e

    def _on_progress(self, stage, fraction):
        self.progress = (stage, fraction)

    def _poll(self):
        stage, fraction = self.progress
        self.dialog.setLabelText(f"{self.job.title}\n{STAGES.get(stage, stage)}…")
        self.dialog.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        if self.thread.is_alive():
            return
        self.timer.stop()
        cancelled = self.cancel.is_set()
        self.dialog.canceled.disconnect(self.cancel.set)  # closing the dialog emits canceled
        self.dialog.close()
        result = None
        if cancelled or isinstance(self.error, Cancelled):
            message = "Cancelled; the document is unchanged."
        elif self.error is not None:
            show_error(self.parent, self.error)
            message = None
        else:
            try:
                result = self.job.apply()
                message = "Mask added" if not self.job.refine else "Mask refined"
            except Exception as e:
                show_error(self.parent, e)
                message = None
        self.done(self, result, message)


def show_error(parent, error: BaseException) -> None:
    if isinstance(error, (LayermatteError, PluginError)):
        text = str(error)
    else:
        text = f"Unexpected error ({type(error).__name__}: {error}). Please report it."
    QMessageBox.warning(parent, TITLE, f"{text}\n\nThe document was not changed.")


class LayermatteExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self.runner: Runner | None = None

    def setup(self):
        pass

    def createActions(self, window):
        specs = (("layermatte_generate_mask", "Generate Layer Mask (layermatte)", self.generate),
                 ("layermatte_refine_mask", "Refine Layer Mask (layermatte)", self.refine),
                 ("layermatte_options", "layermatte Options…", self.configure))
        for action_id, text, slot in specs:
            action = window.createAction(action_id, text, "tools/scripts")
            action.triggered.connect(slot)
            # The menu bar is still empty here, and `window` is deleted after this call:
            # add to Layer once the main window is set up.
            QTimer.singleShot(0, lambda a=action, w=window.qwindow(): _add_to_menu(w, a, "layer"))

    def _window_widget(self):
        window = Krita.instance().activeWindow()
        return window.qwindow() if window is not None else None

    def configure(self):
        dialog = OptionsDialog(self._window_widget())
        if dialog.exec() == QDialog.DialogCode.Accepted:
            save_options(dialog.options())

    def generate(self):
        self._start(refine=False)

    def refine(self):
        self._start(refine=True)

    def _start(self, refine: bool):
        parent = self._window_widget()
        if self.runner is not None:
            QMessageBox.information(parent, TITLE, "layermatte is still working on the previous request.")
            return
        document = Krita.instance().activeDocument()
        try:
            job = Job(document, document.activeNode() if document else None, load_options(), refine=refine)
        except (PluginError, LayermatteError) as e:
            show_error(parent, e)
            return
        self.runner = Runner(parent, job, self._finished)
        self.runner.start()

    def _finished(self, runner, result, message):
        self.runner = None
        document = runner.job.document
        if result is not None and hasattr(result, "type"):
            # not at once: Krita's layer docker learns about the new node asynchronously, and
            # activating it before that fails (SAFE ASSERT "shape" in kis_node_manager.cpp)
            QTimer.singleShot(200, lambda: document.setActiveNode(result))
        window = Krita.instance().activeWindow()
        view = window.activeView() if window is not None else None
        if message and view is not None:
            view.showFloatingMessage(message, QIcon(), 2000, 1)


def _add_to_menu(main_window, action, menu_name: str) -> None:
    """Also list the action in a top-level menu (createAction puts it under Tools > Scripts)."""
    bar = main_window.menuBar()
    for entry in bar.actions():
        if entry.objectName().lower() == menu_name and entry.menu() is not None:
            entry.menu().addAction(action)
            return
