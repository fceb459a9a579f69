"""Photoshop documents: the daemon's mattes written as real layer masks.

For each chosen pixel layer, its own pixels (at its own bounds and offset) go
to a matte function, and the matte comes back as that layer's layer mask
(psd-tools 1.26 ``create_mask``; an existing pixel mask is rewritten in its own
record by masks.py). Every other record of the file is kept as psd-tools read
it. The merged composite is re-rendered only where psd-tools' renderer reproduces
the file's own (composite.py); otherwise it is kept as stored. Outputs are
written to a temporary file and renamed; a layer that cannot be processed is
reported by name and skipped.

The matte function is any ``MatteFn`` (see batch.py): the daemon client with
retry on a busy queue today, an in-process pipeline later.
"""
from __future__ import annotations

import dataclasses
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.compression import PSDDecompressionWarning
from psd_tools.constants import ChannelID, ColorMode, Compression, Resource
from psd_tools.psd.image_resources import ImageResource

from . import composite, masks
from ..system.atomic import atomic_output
from ..errors import Busy, Cancelled, InvalidInput, LayermatteError, TooLarge
from ..imaging.options import MatteOptions

SUPPORTED_MODES = {ColorMode.RGB: "RGB", ColorMode.GRAYSCALE: "Grayscale"}
# The daemon's default --max-pixels. Checked before decoding: psd-tools inflates a layer
# to float32 (~13 bytes per pixel at the peak), so a small ZIP-compressed file could
# otherwise take many GB before the daemon refuses the layer.
MAX_LAYER_PIXELS = 250_000_000
SIGNATURE = b"8BPS"
# (pixels, options, progress) -> reply with .matte (HxW uint8, or uint16 when options.depth16)
MatteFn = Callable[..., object]
LayerProgress = Callable[[str, str, float], None]       # (layer label, stage, fraction)


@dataclass
class LayerOutcome:
    label: str               # "Group/Layer" path, as shown to the user
    masked: bool
    reason: str = ""         # why it was skipped
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    slot: str = ""           # where the mask went: new, user (-2), real (-3)


@dataclass
class PsdResult:
    output: Path
    outcomes: list[LayerOutcome] = field(default_factory=list)
    backup: Path | None = None
    composite_rerendered: bool = False
    composite: str = ""      # what the saved composite shows, in words

    @property
    def masked(self) -> list[str]:
        return [o.label for o in self.outcomes if o.masked]

    @property
    def skipped(self) -> list[LayerOutcome]:
        return [o for o in self.outcomes if not o.masked]


# --- reading -----------------------------------------------------------------

def open_document(path: Path) -> PSDImage:
    """Open a PSD/PSB, turning every parse failure into a clear InvalidInput."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] != SIGNATURE:
        raise InvalidInput(f"{path}: not a Photoshop document (no PSD/PSB signature)")
    if head[4:6] not in (b"\x00\x01", b"\x00\x02"):
        raise InvalidInput(f"{path}: unknown Photoshop file version {head[4:6].hex()}")
    try:
        psd = PSDImage.open(path)
    except MemoryError:
        raise InvalidInput(f"{path}: too large to open") from None
    except Exception as e:  # psd-tools raises ValueError, OSError, struct.error, EOFError ...
        raise InvalidInput(f"{path}: damaged or truncated Photoshop document ({e})") from None
    if not _image_data_complete(psd):
        raise InvalidInput(f"{path}: damaged or truncated Photoshop document "
                           "(its merged image data is incomplete)")
    if psd.color_mode not in SUPPORTED_MODES:
        raise InvalidInput(f"{path}: colour mode {psd.color_mode.name} is not supported "
                           "(RGB and Grayscale are)")
    if psd.depth not in (8, 16):
        raise InvalidInput(f"{path}: {psd.depth}-bit documents are not supported (8 and 16 bits are)")
    return psd


def _image_data_complete(psd: PSDImage) -> bool:
    """psd-tools reads the last section (the merged image) leniently, so a file cut
    short there opens without complaint; check its length without decoding it."""
    header, image = psd._record.header, psd._record.image_data
    data, rows = image.data, header.height * header.channels
    if image.compression == Compression.RAW:
        return len(data) >= ((header.width * header.depth + 7) // 8) * rows
    if image.compression == Compression.RLE:
        size = 2 if header.version == 1 else 4
        if len(data) < rows * size:
            return False
        counts = np.frombuffer(data[:rows * size], ">u2" if size == 2 else ">u4")
        return len(data) >= rows * size + int(counts.sum(dtype=np.int64))
    stream, rest = zlib.decompressobj(), data  # ZIP: inflate in bounded steps, keep nothing
    try:
        while rest and not stream.eof:
            stream.decompress(rest, 1 << 22)
            rest = stream.unconsumed_tail
    except zlib.error:
        return False
    return stream.eof


def label(layer) -> str:
    parts = [layer.name]
    parent = layer.parent
    while parent is not None and not isinstance(parent, PSDImage):
        parts.append(parent.name)
        parent = parent.parent
    return "/".join(reversed(parts))


def choose_layers(psd: PSDImage, mode: str = "all", names: Iterable[str] = ()) -> list:
    """Layers to matte: "all" pixel layers, the "visible" ones, or those named
    (by name or by "Group/Layer" path; every layer of that name). Named layers
    that are not pixel layers are returned too, to be reported as skipped."""
    layers = list(psd.descendants())
    if mode == "names":
        names = list(names)
        chosen = [ly for ly in layers if ly.name in names or label(ly) in names]
        missing = [n for n in names if not any(ly.name == n or label(ly) == n for ly in layers)]
        if missing:
            have = ", ".join(sorted({label(ly) for ly in layers})) or "none"
            raise InvalidInput(f"no layer named {', '.join(map(repr, missing))}; layers: {have}")
        return chosen
    chosen = [ly for ly in layers if ly.kind == "pixel"]
    if mode == "visible":
        chosen = [ly for ly in chosen if ly.is_visible()]
    return chosen


def _rle_damaged(layer) -> bool:
    """psd-tools decodes a broken PackBits channel leniently (no error, wrong pixels).
    Each RLE channel starts with a table of row byte counts; a whole row takes at
    least 2 bytes, and the rows must fit in the data that follows."""
    size = 2 if layer._psd.version == 1 else 4
    rows = layer.height
    for info, data in zip(layer._record.channel_info, layer._channels):
        if info.id < -1 or data.compression != Compression.RLE or not data.data:
            continue  # user masks have their own geometry; ZIP/RAW failures raise in psd-tools
        if len(data.data) < rows * size:
            return True
        counts = np.frombuffer(data.data[:rows * size], ">u2" if size == 2 else ">u4")
        if counts.min(initial=2) < 2 or int(counts.sum(dtype=np.int64)) > len(data.data) - rows * size:
            return True
    return False


def layer_pixels(layer, depth: int) -> np.ndarray | None:
    """HxWxC uint8/uint16 colour(+alpha) at the layer's own bounds, None if empty.
    Raises ValueError when the layer's pixel data is damaged."""
    if layer.width <= 0 or layer.height <= 0 or not layer.has_pixels():
        return None
    if _rle_damaged(layer):
        raise ValueError("damaged compressed data")
    with warnings.catch_warnings():  # psd-tools turns undecodable channels black: refuse instead
        warnings.simplefilter("error", PSDDecompressionWarning)
        arr = layer.numpy()  # float32 0..1, exact for 8- and 16-bit data
    if arr is None or arr.size == 0:
        return None
    scale, dtype = (255.0, np.uint8) if depth == 8 else (65535.0, np.uint16)
    out = np.rint(arr * scale).astype(dtype)
    if out.shape[2] in (2, 4) and not out[..., -1].any():
        return None  # fully transparent
    return np.ascontiguousarray(out)


# --- writing -----------------------------------------------------------------

def set_mask(layer, matte: np.ndarray, depth: int) -> str:
    """Write `matte` (layer-sized, uint8 or uint16) as the layer's pixel mask; returns
    where it went (masks.MaskSlot.kind).

    A new mask goes through psd-tools, which takes masks as PIL images, i.e. 8 bits;
    in a 16-bit document the stored channel is then widened with 8-bit precision and
    a uint16 matte is written back into it at full precision (pinned psd-tools 1.26).
    An existing pixel mask is rewritten in place by masks.py (its flags, density,
    feather and any vector mask stay as they were).
    """
    h, w = matte.shape
    if (layer.height, layer.width) != (h, w):
        raise ValueError(f"matte {w}x{h} does not fit layer {layer.width}x{layer.height}")
    if layer.has_mask():
        return masks.write_pixel_mask(layer, matte, depth).kind
    m8 = matte if matte.dtype == np.uint8 else ((matte.astype(np.uint32) + 128) // 257).astype(np.uint8)
    layer.create_mask(Image.fromarray(m8, "L"), top=layer.top, left=layer.left)
    if depth == 16 and matte.dtype == np.uint16:
        _store_deep_mask(layer, matte)
    return "new"


def _store_deep_mask(layer, matte16: np.ndarray) -> None:
    h, w = matte16.shape
    for info, data in zip(layer._record.channel_info, layer._channels):
        if info.id == ChannelID.USER_LAYER_MASK:
            data.set_data(matte16.astype(">u2").tobytes(), w, h, 16, layer._psd.version)
            info.length = data._length
            return


def save_atomic(psd: PSDImage, output: Path, mode_from: Path | None = None,
                before_replace: Callable[[], None] | None = None, render: bool = True) -> None:
    """Save to a temporary file beside `output`, then rename over it
    (`before_replace` runs once the new file is complete, e.g. to take a backup).
    `render=False` writes the records as they are: the stored composite is kept."""
    try:
        with atomic_output(output, mode_from=mode_from, before_replace=before_replace) as tmp:
            with open(tmp, "wb") as f:
                if render:
                    psd.save(f)
                else:
                    psd._record.write(f)
    except LayermatteError:
        raise
    except Exception as e:  # psd-tools failing to encode the document
        raise LayermatteError(f"{output}: psd-tools could not write the document ({e})") from None


def backup_path(path: Path) -> Path:
    """photo.psd -> photo.bak.psd, then photo.bak-2.psd, ... (never overwrites a backup)."""
    path = Path(path)
    candidate = path.with_name(f"{path.stem}.bak{path.suffix}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.bak-{n}{path.suffix}")
        n += 1
    return candidate


# --- the workflow ------------------------------------------------------------

def matte_layers(psd: PSDImage, layers: list, matte: MatteFn, options: MatteOptions, *,
                 replace_masks: bool = False, progress: LayerProgress | None = None,
                 on_layer: Callable[[LayerOutcome], None] | None = None) -> list[LayerOutcome]:
    """Mask each layer in place (in memory). Per-layer problems become skipped outcomes;
    errors that would fail every layer (daemon gone, model missing) propagate."""
    depth = psd.depth
    opts = dataclasses.replace(options, depth16=depth == 16, return_foreground=False)
    outcomes = []
    for layer in layers:
        name = label(layer)
        outcome = _one_layer(layer, name, depth, matte, opts, replace_masks, progress)
        outcomes.append(outcome)
        if on_layer:
            on_layer(outcome)
    return outcomes


def _one_layer(layer, name, depth, matte, opts, replace_masks, progress) -> LayerOutcome:
    bbox = tuple(layer.bbox)

    def skip(reason: str) -> LayerOutcome:
        return LayerOutcome(name, False, reason, bbox)

    if layer.kind != "pixel":
        return skip(f"not a pixel layer ({layer.kind})")
    if is_background(layer):
        return skip("Photoshop Background layer (no transparency); layermatte leaves it as it is: "
                    "make it a normal layer in Photoshop (Layer > New > Layer from Background) first")
    if layer.has_mask():
        try:
            masks.pixel_mask_slot(layer)
        except masks.MaskRefused as e:
            return skip(str(e))
        if not replace_masks:
            return skip("already has a layer mask (use --replace-masks)")
    if layer.width * layer.height > MAX_LAYER_PIXELS:
        return skip(f"too large: {layer.width}x{layer.height} is more than {MAX_LAYER_PIXELS:,} pixels")
    try:
        pixels = layer_pixels(layer, depth)
    except MemoryError:
        return skip("too large to read")
    except Exception as e:  # damaged channel data
        return skip(f"pixel data cannot be read ({e})")
    if pixels is None:
        return skip("empty (no visible pixels)")
    cb = (lambda stage, f: progress(name, stage, f)) if progress else None
    try:
        reply = matte(pixels, opts, cb)
    except (TooLarge, InvalidInput) as e:
        return skip(str(e))
    except (Busy, Cancelled):
        raise
    slot = set_mask(layer, reply.matte, depth)
    return LayerOutcome(name, True, "", bbox, slot)


def is_background(layer) -> bool:
    """Photoshop's Background: the bottom layer of the document, with no transparency
    channel. Photoshop never lets it have a mask."""
    psd = layer._psd
    return (layer.parent is psd and len(psd) > 0 and psd[0] is layer
            and all(ci.id != ChannelID.TRANSPARENCY_MASK for ci in layer._record.channel_info))


def renders_right(psd: PSDImage, outcomes: list[LayerOutcome]) -> str:
    """Why psd-tools' renderer would still be wrong after our masks ("" if it is not)."""
    for o in outcomes:
        if not o.masked:
            continue
        layer = next(ly for ly in psd.descendants() if label(ly) == o.label)
        data = layer._record.mask_data
        if o.slot == "real":
            return "psd-tools does not render a pixel mask combined with a vector mask"
        if data is not None and data.flags.parameters_applied:
            return "psd-tools does not render mask density/feather"
    return ""


def process(input_path: Path, output: Path | None, matte: MatteFn, options: MatteOptions = MatteOptions(), *,
            mode: str = "all", names: Iterable[str] = (), replace_masks: bool = False,
            in_place: bool = False, progress: LayerProgress | None = None,
            on_layer: Callable[[LayerOutcome], None] | None = None,
            on_plan: Callable[[int], None] | None = None) -> PsdResult:
    """Read `input_path`, mask the chosen layers, write `output` (or the input, with a backup)."""
    input_path = Path(input_path)
    if in_place:
        if output is not None and Path(output).resolve() != input_path.resolve():
            raise InvalidInput("--in-place writes over INPUT; give no OUTPUT with it")
        output = input_path
    elif output is None:
        raise InvalidInput("give an OUTPUT file, or --in-place to overwrite INPUT (a backup is kept)")
    elif Path(output).exists() and Path(output).resolve() == input_path.resolve():
        raise InvalidInput(f"{output} is the input file; use --in-place to overwrite it (a backup is kept)")
    output = Path(output)
    if not output.parent.is_dir():
        raise InvalidInput(f"{output.parent}: output folder does not exist")
    psd = open_document(input_path)
    data = input_path.read_bytes()
    layers = choose_layers(psd, mode, names)
    if not layers:
        what = "visible pixel layers" if mode == "visible" else "pixel layers"
        raise InvalidInput(f"{input_path}: no {what} to process")
    if on_plan:
        on_plan(len(layers))
    check = composite.check_renderer(psd, data)   # on the document as it came
    outcomes = matte_layers(psd, layers, matte, options, replace_masks=replace_masks,
                            progress=progress, on_layer=on_layer)
    result = PsdResult(output, outcomes)
    if not result.masked:
        result.composite = "composite and thumbnail kept as stored (no mask added)"
    elif not check.trusted:
        result.composite = check.describe(rerendered=False)
    elif why := renders_right(psd, outcomes):
        result.composite = f"composite and thumbnail kept as stored, without the new masks ({why})"
    else:
        result.composite_rerendered = True
        result.composite = check.describe(rerendered=True)
    if in_place:
        result.backup = backup_path(input_path)
    save_atomic(psd, output, mode_from=input_path if in_place else None,
                before_replace=(lambda: shutil.copy2(input_path, result.backup)) if in_place else None,
                render=result.composite_rerendered)
    return result


def write_cutout_psd(path: Path, pixels: np.ndarray, matte: np.ndarray, foreground: np.ndarray,
                     icc_profile: bytes | None = None) -> None:
    """Two-layer document for hand-finishing: "Original" (hidden) under "Cut-out"
    (decontaminated colours with the matte as its layer mask). 8 or 16 bits, as the input."""
    depth = 16 if pixels.dtype == np.uint16 else 8
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] in (1, 2):  # gray(+alpha) -> RGB(A); the document is RGB
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)
    if foreground.dtype != pixels.dtype:
        raise ValueError("foreground and pixels differ in depth")
    h, w = pixels.shape[:2]
    psd = PSDImage.new("RGB", (w, h), color=1.0, depth=depth)
    original = psd.create_pixel_layer_from_array(np.ascontiguousarray(pixels), name="Original")
    original.visible = False
    cut = psd.create_pixel_layer_from_array(np.ascontiguousarray(foreground), name="Cut-out")
    set_mask(cut, matte, depth)
    if icc_profile:
        psd.image_resources[Resource.ICC_PROFILE] = ImageResource(key=Resource.ICC_PROFILE,
                                                                  data=icc_profile)
    save_atomic(psd, path)
