"""The only module that touches Krita's node API: nodes in, plain values out, and back.

Quirks of Krita 5.2 handled here (see core.py for the pixel layouts):
* Node.bounds() is the layer's exact content rectangle in image coordinates; it
  may start at negative offsets and reach past the canvas.
* Group layers have no paint device (pixelData is empty): their projection is
  read instead, which Krita clips to the canvas.
* Transparency masks are always Alpha/U8 (1 byte per pixel), whatever the
  document's depth. They are created with Document.createTransparencyMask and
  filled *before* they are attached: addChildNode is a single undoable command,
  setPixelData is not undoable at all. (createNode(..., 'transparencymask') gives
  a mask without pixel storage in 5.2.)
"""
from __future__ import annotations

from .core import Layer, PluginError

MASK_NAME = "layermatte"


def read_layer(document, node) -> Layer:
    """The pixels the matte is computed from: a paint layer's own pixels, any other
    layer's projection (groups, vector, file and fill layers)."""
    if node is None or node.type() not in ("paintlayer", "grouplayer", "vectorlayer", "filelayer",
                                           "filllayer", "clonelayer"):
        kind = node.type() if node is not None else "nothing"
        raise PluginError(f"select a layer to mask (the active node is {kind or 'not a layer'})")
    document.waitForDone()
    r = node.bounds()
    if r.isEmpty():
        raise PluginError(f"layer '{node.name()}' is empty")
    x, y, w, h = r.x(), r.y(), r.width(), r.height()
    if node.type() == "paintlayer":
        data = node.pixelData(x, y, w, h)
    else:
        data = node.projectionPixelData(x, y, w, h)
    return Layer(x, y, w, h, node.colorModel(), node.colorDepth(), node.colorProfile(),
                 bytes(data), node.name())


def read_mask(mask, layer: Layer) -> bytes:
    """An existing transparency mask over the layer's rectangle, GRAY8."""
    if mask is None or mask.type() != "transparencymask":
        raise PluginError("select a transparency mask to refine")
    data = bytes(mask.pixelData(layer.x, layer.y, layer.width, layer.height))
    if len(data) != layer.width * layer.height:
        raise PluginError(f"unexpected mask format {mask.colorModel()}/{mask.colorDepth()}")
    return data


def parent_layer(mask):
    parent = mask.parentNode() if mask is not None else None
    if parent is None:
        raise PluginError("the mask is not attached to a layer")
    return parent


def _new_mask(document, layer: Layer, matte: bytes, name: str):
    mask = document.createTransparencyMask(name)
    if mask is None:
        raise PluginError("Krita could not create a transparency mask")
    mask.setPixelData(matte, layer.x, layer.y, layer.width, layer.height)
    return mask


def add_mask(document, node, layer: Layer, matte: bytes, name: str = MASK_NAME):
    """One undo step: a new transparency mask holding the matte, on top of node's masks."""
    mask = _new_mask(document, layer, matte, name)
    node.addChildNode(mask, None)
    document.waitForDone()
    return mask


def replace_mask(document, old_mask, layer: Layer, matte: bytes):
    """The refined mask takes the old one's place (two undo steps: add, remove)."""
    parent = parent_layer(old_mask)
    mask = _new_mask(document, layer, matte, old_mask.name())
    parent.addChildNode(mask, old_mask)
    old_mask.remove()
    document.waitForDone()
    return mask


def set_selection(document, layer: Layer, matte: bytes):
    from krita import Selection
    selection = Selection()
    selection.setPixelData(matte, layer.x, layer.y, layer.width, layer.height)
    document.setSelection(selection)
    return selection


def add_cutout_layer(document, node, layer: Layer, matte: bytes, pixels: bytes | None = None):
    """A new paint layer above node with node's pixels (or the given ones, e.g.
    decontaminated colours) and the matte as its mask."""
    if (layer.model, layer.depth) != (document.colorModel(), document.colorDepth()):
        raise PluginError("a cut-out layer needs the layer in the document's colour space; "
                          "use the transparency mask output instead")
    copy = document.createNode(f"{layer.name} (cut-out)", "paintlayer")
    copy.setPixelData(pixels or layer.pixels, layer.x, layer.y, layer.width, layer.height)
    copy.addChildNode(_new_mask(document, layer, matte, MASK_NAME), None)
    node.parentNode().addChildNode(copy, node)
    document.waitForDone()
    return copy


def mask_sample_size(document, layer: Layer) -> int:
    """Bytes per pixel of a transparency mask in this document (1 in Krita 5.2)."""
    probe = document.createTransparencyMask("probe")
    return len(probe.pixelData(layer.x, layer.y, 1, 1)) if probe is not None else 1
