"""The only module of the GIMP plug-in that touches the GIMP API (GIMP 3.0 and 3.2).

It turns a GIMP layer into plain values (size, offsets, pixel bytes in a
layermatte pixel format, existing mask bytes) and writes a matte back as a
layer mask, a new cut-out layer or the selection. Everything else in the
plug-in works on bytes and strings.

Layers that GIMP draws from something else (groups; text; GIMP 3.2's link and
vector layers) are read as drawn. A layer mask on them leaves them live, so the
mask output is the same as for pixel layers. Their pixels cannot be written
(GIMP kills a plug-in that writes to a group), so a cut-out of one is a new
plain pixel layer made from the drawn pixels.
"""
import contextlib

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

# Sample type per image precision: (babl type, layermatte suffix, 16-bit matte?)
_U8, _U16, _FLOAT = ("u8", "8", False), ("u16", "16", True), ("float", "F32", True)


def _sample_type(image):
    name = image.get_precision().value_nick  # e.g. "u8-non-linear", "half-linear"
    if name.startswith("u8"):
        return _U8
    if name.startswith("u16"):
        return _U16
    return _FLOAT  # u32, half, float, double: read as 32-bit float


def _rect(w, h, x=0, y=0):
    return Gegl.Rectangle.new(x, y, w, h)


def _get(drawable, babl, w, h):
    return bytes(drawable.get_buffer().get(_rect(w, h), 1.0, babl, Gegl.AbyssPolicy.CLAMP))


def mask_format(depth16):
    # Masks and the selection are stored linear ("Y", not "Y'"): write a coverage value as is.
    return "Y u16" if depth16 else "Y u8"


def selected_layers(drawables):
    """The layers the selected drawables stand for (a selected mask means its layer), in order,
    each once. Raises ValueError for anything that is not a layer or a layer mask."""
    layers, seen = [], set()
    for d in drawables or []:
        layer = Gimp.Layer.from_mask(d) if d.is_layer_mask() else d if d.is_layer() else None
        if layer is None:
            raise ValueError(f"'{d.get_name()}' is not a layer. Select one or more layers.")
        if layer.get_id() not in seen:
            seen.add(layer.get_id())
            layers.append(layer)
    if not layers:
        raise ValueError("no layer is selected. Select one or more layers.")
    return layers


# (kind, Gimp.Item method): is_link_layer / is_vector_layer exist from GIMP 3.2 on
_DRAWN_KINDS = (("group", "is_group"), ("text", "is_text_layer"), ("link", "is_link_layer"),
                ("vector", "is_vector_layer"))


def layer_kind(layer):
    """'pixel', or what GIMP draws the layer from: 'group', 'text', 'link', 'vector'. A text,
    link or vector layer that was rasterized (GIMP 3.2) is a pixel layer again."""
    for kind, method in _DRAWN_KINDS:
        check = getattr(layer, method, None)
        if check is not None and check():
            rasterized = getattr(layer, "is_rasterized", None)
            return "pixel" if (kind != "group" and rasterized is not None and rasterized()) else kind
    return "pixel"


def layer_facts(layer):
    return {"name": layer.get_name(), "has_mask": layer.get_mask() is not None, "kind": layer_kind(layer)}


def _babl(layer, alpha):
    """(babl format of the layer's own channels at the image's sample type, wire format)."""
    babl_type, suffix, _ = _sample_type(layer.get_image())
    if layer.is_gray():
        return ("Y'A " if alpha else "Y' ") + babl_type, ("GRAYA" if alpha else "GRAY") + suffix
    # RGB and indexed (babl converts palette entries)
    return ("R'G'B'A " if alpha else "R'G'B' ") + babl_type, ("RGBA" if alpha else "RGB") + suffix


def read_layer(layer, with_mask=False):
    """Plain values for one layer: its own pixels (as drawn, for groups, text, link and vector
    layers), whatever its offsets and type."""
    depth16 = _sample_type(layer.get_image())[2]
    w, h = layer.get_width(), layer.get_height()
    babl, fmt = _babl(layer, layer.has_alpha())
    mask = layer.get_mask()
    _, ox, oy = layer.get_offsets()
    return dict(layer_facts(layer), width=w, height=h, offsets=(ox, oy), format=fmt,
                pixels=_get(layer, babl, w, h), depth16=depth16,
                mask=_get(mask, "Y u8", w, h) if (with_mask and mask is not None) else None)


def write_mask(layer, matte, depth16, replace=False):
    """Add a layer mask holding the matte (replacing an existing one when asked)."""
    w, h = layer.get_width(), layer.get_height()
    if layer.get_mask() is not None:
        if not replace:
            raise ValueError(f"layer '{layer.get_name()}' already has a layer mask")
        layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    buf = mask.get_buffer()
    buf.set(_rect(w, h), mask_format(depth16), matte)
    buf.flush()
    mask.update(0, 0, w, h)
    return mask


def replace_mask_contents(layer, matte, depth16):
    """Put the matte into the layer's existing mask, keeping its show/edit/apply state.

    Done as remove + add (both undoable) rather than through the shadow buffer: merge_shadow
    only applies inside the current selection, and the user may well have one."""
    state = (layer.get_apply_mask(), layer.get_edit_mask(), layer.get_show_mask())
    mask = write_mask(layer, matte, depth16, replace=True)
    layer.set_apply_mask(state[0])
    layer.set_edit_mask(state[1])
    layer.set_show_mask(state[2])
    return mask


def _rgb_under_alpha(rgb, rgba, sample_bytes):
    """Interleave RGB colours with an RGBA buffer's alpha, in pure Python (the
    editor's Python may have no numpy)."""
    out, n = bytearray(rgba), sample_bytes
    for byte in range(3 * n):
        out[byte::4 * n] = rgb[byte::3 * n]
    return bytes(out)


def _pixel_copy(layer):
    """A plain pixel layer (with alpha) holding the layer's pixels as drawn, same place, opacity
    and mode: the cut-out of a group, text, link or vector layer."""
    image = layer.get_image()
    w, h = layer.get_width(), layer.get_height()
    kind = (Gimp.ImageType.GRAYA_IMAGE if layer.is_gray() else
            Gimp.ImageType.INDEXEDA_IMAGE if layer.is_indexed() else Gimp.ImageType.RGBA_IMAGE)
    new = Gimp.Layer.new(image, layer.get_name(), w, h, kind, layer.get_opacity(), layer.get_mode())
    babl = _babl(layer, True)[0]
    buf = new.get_buffer()
    buf.set(_rect(w, h), babl, _get(layer, babl, w, h))
    buf.flush()
    _, ox, oy = layer.get_offsets()
    new.set_offsets(ox, oy)
    return new


def write_new_layer(layer, matte, depth16, colours=None, fmt="RGBA8"):
    """A copy of the layer above it, cut out by the matte (its alpha = layer alpha x matte),
    with the daemon's (decontaminated) colours when given. The copy of a drawn layer (group,
    text, link, vector) is a plain pixel layer."""
    image = layer.get_image()
    new = layer.copy() if layer_kind(layer) == "pixel" else _pixel_copy(layer)
    new.set_name(layer.get_name() + " (cutout)")
    image.insert_layer(new, layer.get_parent(), image.get_item_position(layer))
    if new.get_mask() is not None:
        new.remove_mask(Gimp.MaskApplyMode.DISCARD)
    if not new.has_alpha():
        new.add_alpha()
    if colours is not None:
        n = 1 if fmt.endswith("8") else 2
        babl = "R'G'B'A u8" if n == 1 else "R'G'B'A u16"
        w, h = new.get_width(), new.get_height()
        buf = new.get_buffer()
        buf.set(_rect(w, h), babl, _rgb_under_alpha(colours, _get(new, babl, w, h), n))
        buf.flush()
    write_mask(new, matte, depth16)
    new.remove_mask(Gimp.MaskApplyMode.APPLY)
    return new


def write_selection(layer, matte, depth16):
    """Replace the selection with the matte, placed at the layer's offsets (clipped to the canvas)."""
    image = layer.get_image()
    w, h = layer.get_width(), layer.get_height()
    _, ox, oy = layer.get_offsets()
    iw, ih = image.get_width(), image.get_height()
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + w, iw), min(oy + h, ih)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"layer '{layer.get_name()}' lies outside the canvas; nothing to select")
    bpp = 2 if depth16 else 1
    canvas = bytearray(iw * ih * bpp)
    for y in range(y0, y1):
        src = ((y - oy) * w + (x0 - ox)) * bpp
        canvas[(y * iw + x0) * bpp:(y * iw + x1) * bpp] = matte[src:src + (x1 - x0) * bpp]
    # Written straight into the selection mask (linear "Y", like layer masks). A helper channel
    # would not do: channels are stored non-linear ("Y'") and select_item copies their raw values.
    Gimp.Selection.none(image)  # merge_shadow applies inside the current selection: clear it first
    selection = image.get_selection()
    shadow = selection.get_shadow_buffer()
    shadow.set(_rect(iw, ih), mask_format(depth16), bytes(canvas))
    shadow.flush()
    selection.merge_shadow(True)
    selection.update(0, 0, iw, ih)


@contextlib.contextmanager
def undo_group(image):
    """Everything written inside is one undo step (one Ctrl+Z)."""
    image.undo_group_start()
    try:
        yield
    finally:
        image.undo_group_end()
        Gimp.displays_flush()


def message(text):
    """A note for the user (GIMP's message box or error console; stderr in batch mode)."""
    Gimp.message(text)


def progress_start(text):
    Gimp.progress_init(text)


def progress(fraction, text=None):
    if text:
        Gimp.progress_set_text(text)
    Gimp.progress_update(max(0.0, min(1.0, fraction)))


def progress_end():
    Gimp.progress_end()
