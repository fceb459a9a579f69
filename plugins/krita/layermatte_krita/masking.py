"""generate_mask / refine_mask, usable from scripts (no GUI needed) and from the actions.

A Job has three phases so the extension can run the slow one off the UI thread:
prepare (UI thread: read pixels) -> run (any thread: daemon call) -> apply
(UI thread: write the result). Nothing in the document changes before apply,
so a failure or a cancel leaves it untouched.
"""
from __future__ import annotations

from . import adapter, core
from .core import PluginError
from .lite import LayermatteError, lite

__all__ = ["generate_mask", "refine_mask", "Job", "LayermatteError", "PluginError"]


class Job:
    def __init__(self, document, node, options: dict | None = None, refine: bool = False):
        if document is None:
            raise PluginError("open a document first")
        self.document = document
        self.options = core.normalize_options(options)
        self.refine = refine
        if refine:
            if node is None:
                raise PluginError("select a transparency mask (or a layer with one) to refine")
            if node.type() != "transparencymask":
                masks = [c for c in node.childNodes() if c.type() == "transparencymask"]
                if not masks:
                    raise PluginError(f"layer '{node.name()}' has no transparency mask to refine")
                node = masks[-1]  # the topmost one
            self.old_mask = node
            self.node = adapter.parent_layer(node)
        else:
            if node is not None and node.type().endswith("mask") and node.parentNode() is not None:
                node = node.parentNode()  # a mask is active (e.g. the last one made): use its layer
            self.node = node
        self.layer = adapter.read_layer(document, self.node)
        self.guide = adapter.read_mask(self.old_mask, self.layer) if refine else None
        self.depth16 = adapter.mask_sample_size(document, self.layer) == 2
        self.matte: bytes | None = None
        self.summary: dict = {}

    @property
    def title(self) -> str:
        what = "Refining the mask of" if self.refine else "Masking"
        return f"{what} '{self.layer.name}' ({self.layer.width}×{self.layer.height})"

    def run(self, progress=None, cancel=None) -> None:
        self.matte, self.summary = core.compute(lite(), self.layer, self.options, self.guide,
                                                self.depth16, progress, cancel)

    def apply(self):
        if self.matte is None:
            raise PluginError("no matte to apply")
        if self.refine:
            return adapter.replace_mask(self.document, self.old_mask, self.layer, self.matte)
        output = self.options["output"]
        if output == "selection":
            return adapter.set_selection(self.document, self.layer, self.matte)
        if output == "layer":
            colours = core.with_colours(self.layer, self.summary.get("foreground", b""))
            return adapter.add_cutout_layer(self.document, self.node, self.layer, self.matte, colours)
        return adapter.add_mask(self.document, self.node, self.layer, self.matte)


def generate_mask(document, node, progress=None, cancel=None, **options):
    """Run the daemon's model on node's pixels and add the matte as a new transparency
    mask (the default), the selection (output='selection') or a cut-out layer
    (output='layer'). Returns the new node (Selection for output='selection').

    options: model, feather, shift, smooth, contrast, output, autostart.
    Raises LayermatteError (daemon side) or PluginError; the document is then unchanged.
    """
    job = Job(document, node, options)
    job.run(progress, cancel)
    return job.apply()


def refine_mask(document, mask_node, progress=None, cancel=None, **options):
    """Refine an existing transparency mask (or a layer's topmost one) against its layer's
    pixels without running the model (feather, shift, smooth, contrast apply). The refined
    mask replaces the old one; returns it."""
    job = Job(document, mask_node, options, refine=True)
    job.run(progress, cancel)
    return job.apply()
