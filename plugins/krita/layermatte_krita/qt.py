"""The one place that knows Qt5 from Qt6: PyQt5 in Krita 5.x, PyQt6 in Krita 6.

The binding is the one Krita itself loaded (its `krita` module is built against it), never
the first that happens to import: Krita 6 refuses PyQt5 outright ("This version of Krita is
not compatible with PyQt5!"), and in a Krita 5 whose Python also has PyQt6, importing PyQt6
would load a second Qt into the process. Everything else in the plug-in imports Qt names from here and
writes enums fully scoped (Qt.ItemDataRole.ToolTipRole, QDialog.DialogCode.Accepted) and
`exec()`, which PyQt5 5.11+ accepts as well as PyQt6 (checked in PyQt5 5.15.11).
Qt6 moved QAction and QShortcut from QtWidgets to QtGui: they are re-exported from here.
"""
from __future__ import annotations

import importlib
import sys


def binding_name() -> str:
    """'PyQt6' or 'PyQt5': the one Krita's `krita` module loaded, else by Krita's major version."""
    from krita import Krita  # built against Krita's binding: importing it loads that binding
    for name in ("PyQt6", "PyQt5"):
        if name + ".QtCore" in sys.modules:
            return name
    major = Krita.instance().version().split(".")[0]
    return "PyQt6" if major.isdigit() and int(major) >= 6 else "PyQt5"


BINDING = binding_name()
QtCore = importlib.import_module(BINDING + ".QtCore")
QtGui = importlib.import_module(BINDING + ".QtGui")
QtWidgets = importlib.import_module(BINDING + ".QtWidgets")
QT_MAJOR = int(QtCore.QT_VERSION_STR.split(".")[0])

Qt, QTimer = QtCore.Qt, QtCore.QTimer
QIcon = QtGui.QIcon
_MOVED = QtGui if QT_MAJOR >= 6 else QtWidgets  # Qt6 moved these two to QtGui
QAction, QShortcut = _MOVED.QAction, _MOVED.QShortcut
QApplication, QCheckBox, QComboBox = QtWidgets.QApplication, QtWidgets.QCheckBox, QtWidgets.QComboBox
QDialog, QDialogButtonBox = QtWidgets.QDialog, QtWidgets.QDialogButtonBox
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QFormLayout, QLabel, QMessageBox = QtWidgets.QFormLayout, QtWidgets.QLabel, QtWidgets.QMessageBox
QProgressDialog = QtWidgets.QProgressDialog
