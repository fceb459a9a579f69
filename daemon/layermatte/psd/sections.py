"""A small reader of a PSD/PSB file's sections, at byte level and without psd-tools.

It splits a document into what the format says it is made of -- header, colour
mode data, image resources, layer records (with their mask data, blending ranges,
name and tagged blocks), each layer's channel data, the global layer mask, the
document's tagged blocks and the merged image data -- keeping each piece's exact
bytes. The PSD workflow uses it to keep the stored composite and to check its own
writing; the tests use it to prove that what layermatte did not mean to change
is unchanged, byte for byte, independently of the library that wrote the file.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

# Tagged blocks whose length field is 8 bytes in a PSB (the format's list).
_LONG_KEYS_PSB = {b"LMsk", b"Lr16", b"Lr32", b"Layr", b"Mt16", b"Mt32", b"Mtrn", b"Alph",
                  b"FMsk", b"lnk2", b"FEid", b"FXid", b"PxSD", b"cinf"}
_SIGNATURES = (b"8BIM", b"8B64")
USER_MASK, REAL_USER_MASK = -2, -3


class SectionError(ValueError):
    """The bytes do not follow the PSD/PSB layout."""


@dataclass
class Resource:
    id: int
    name: bytes
    data: bytes


@dataclass
class TaggedBlock:
    key: bytes
    data: bytes


@dataclass
class MaskRecord:
    """A layer's mask data block, split into its fields (raw bytes kept in `raw`)."""
    raw: bytes
    rect: tuple[int, int, int, int] = (0, 0, 0, 0)       # top, left, bottom, right
    background: int = 0
    flags: int = 0
    real_flags: int | None = None
    real_background: int | None = None
    real_rect: tuple[int, int, int, int] | None = None
    parameters: bytes = b""                              # the mask-parameters bytes, if any


@dataclass
class LayerRecord:
    rect: tuple[int, int, int, int]
    channels: list[tuple[int, int]]      # (id, length) in record order
    blend: bytes                         # signature, blend key, opacity, clipping, flags, filler
    mask: MaskRecord | None
    blending_ranges: bytes
    name: bytes
    blocks: list[TaggedBlock]
    channel_data: dict[int, bytes] = field(default_factory=dict)   # id -> compression + data


@dataclass
class Sections:
    header: bytes
    version: int
    channels: int
    height: int
    width: int
    depth: int
    color_mode: int
    color_mode_data: bytes
    resources: list[Resource]
    layer_count_raw: int                  # signed: negative = first alpha is the merged transparency
    layers: list[LayerRecord]
    global_mask: bytes
    blocks: list[TaggedBlock]             # document-level tagged blocks (Lr16/Lr32 data as read)
    image_data: bytes                     # compression + data

    def resource(self, rid: int) -> Resource | None:
        return next((r for r in self.resources if r.id == rid), None)


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise SectionError(f"needs {n} bytes at {self.pos}, only {self.end - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))

    def left(self) -> int:
        return self.end - self.pos


def read(data: bytes) -> Sections:
    r = _Reader(data)
    header = r.take(26)
    sig, version, _, channels, height, width, depth, mode = struct.unpack(">4sH6sHIIHH", header)
    if sig != b"8BPS" or version not in (1, 2):
        raise SectionError("not a PSD/PSB header")
    big = version == 2
    color_mode_data = r.take(r.unpack("I")[0])
    res_len = r.unpack("I")[0]
    resources = _resources(_Reader(data, r.pos, r.pos + res_len))
    r.pos += res_len
    lm_len = r.unpack("Q" if big else "I")[0]
    lm = _Reader(data, r.pos, r.pos + lm_len)
    r.pos += lm_len
    count, layers, global_mask, blocks = 0, [], b"", []
    if lm.left():
        li_len = lm.unpack("Q" if big else "I")[0]
        if li_len:
            count, layers = _layer_info(_Reader(data, lm.pos, lm.pos + li_len), big)
        lm.pos += li_len
        if lm.left() >= 4:
            global_mask = lm.take(lm.unpack("I")[0])
        blocks = _blocks(lm, big, document=True)
    for b in blocks:
        if b.key in (b"Lr16", b"Lr32") and not layers and b.data:
            count, layers = _layer_info(_Reader(b.data), big)
    return Sections(header, version, channels, height, width, depth, mode, color_mode_data,
                    resources, count, layers, global_mask, blocks, data[r.pos:])


def _resources(r: _Reader) -> list[Resource]:
    out = []
    while r.left() >= 12:
        if r.take(4) not in (b"8BIM", b"MeSa", b"AgHg", b"PHUT", b"DCSR"):
            raise SectionError(f"bad image resource signature at {r.pos - 4}")
        rid = r.unpack("H")[0]
        n = r.unpack("B")[0]
        name = r.take(n)
        if (n + 1) % 2:
            r.take(1)
        size = r.unpack("I")[0]
        out.append(Resource(rid, name, r.take(size)))
        if size % 2:
            r.take(1)
    return out


def _layer_info(r: _Reader, big: bool) -> tuple[int, list[LayerRecord]]:
    count = r.unpack("h")[0]
    layers = [_record(r, big) for _ in range(abs(count))]
    for layer in layers:
        for cid, length in layer.channels:
            layer.channel_data[cid] = r.take(length)
    return count, layers


def _record(r: _Reader, big: bool) -> LayerRecord:
    rect = r.unpack("4i")
    n = r.unpack("H")[0]
    channels = [r.unpack("hQ" if big else "hI") for _ in range(n)]
    blend = r.take(12)
    if blend[:4] != b"8BIM":
        raise SectionError(f"bad blend mode signature at {r.pos - 12}")
    extra = _Reader(r.data, r.pos + 4, r.pos + 4 + r.unpack("I")[0])
    r.pos = extra.end
    mask_raw = extra.take(extra.unpack("I")[0])
    has_real = any(cid == REAL_USER_MASK for cid, _ in channels)
    mask = parse_mask(mask_raw, has_real) if mask_raw else None
    ranges = extra.take(extra.unpack("I")[0])
    name_len = extra.unpack("B")[0]
    name = extra.take(name_len)
    extra.take((4 - (name_len + 1) % 4) % 4)
    return LayerRecord(tuple(rect), [tuple(c) for c in channels], blend, mask, ranges, name,
                       _blocks(extra, big))


def parse_mask(raw: bytes, has_real: bool) -> MaskRecord:
    """Fields of a mask data block. With a real user mask (-3 channel) the real flags,
    background and rectangle follow the flags; the mask parameters (flags bit 4) come
    last (the order Photoshop writes, as psd-tools also found)."""
    r = _Reader(raw)
    m = MaskRecord(raw, tuple(r.unpack("4i")), *r.unpack("BB"))
    if has_real and len(raw) >= 36:
        m.real_flags, m.real_background = r.unpack("BB")
        m.real_rect = tuple(r.unpack("4i"))
    if m.flags & 0x10:
        m.parameters = r.take(r.left())
    return m


def _blocks(r: _Reader, big: bool, document: bool = False) -> list[TaggedBlock]:
    out = []
    while r.left() >= 12:
        sig = r.take(4)
        if sig not in _SIGNATURES:
            if document:      # padding between the sections' end and the blocks' stated length
                r.pos -= 3
                continue
            raise SectionError(f"bad tagged block signature {sig!r} at {r.pos - 4}")
        key = r.take(4)
        size = r.unpack("Q" if big and key in _LONG_KEYS_PSB else "I")[0]
        out.append(TaggedBlock(key, r.take(min(size, r.left()))))
        while r.left() and r.pos % 2 and r.data[r.pos] == 0 and document:
            r.take(1)
    return out


# --- the merged image --------------------------------------------------------

def decode_image_data(s: Sections) -> np.ndarray:
    """The stored composite as channels x height x width (uint8/uint16/float32 by depth)."""
    comp = struct.unpack(">H", s.image_data[:2])[0]
    body = s.image_data[2:]
    row_bytes = (s.width * s.depth + 7) // 8
    rows = s.channels * s.height
    if comp == 0:
        raw = body[:row_bytes * rows]
    elif comp == 1:
        size = 4 if s.version == 2 else 2
        counts = np.frombuffer(body[:rows * size], ">u4" if size == 4 else ">u2").astype(np.int64)
        pos, parts = rows * size, []
        for c in counts:
            parts.append(unpackbits(body[pos:pos + c], row_bytes))
            pos += c
        raw = b"".join(parts)
    else:
        raw = zlib.decompress(body)
    dtype = {8: ">u1", 16: ">u2", 32: ">f4"}.get(s.depth)
    if dtype is None:
        raise SectionError(f"{s.depth}-bit image data")
    arr = np.frombuffer(raw, dtype).reshape(s.channels, s.height, s.width)
    if comp == 3:   # ZIP with prediction: deltas per row
        arr = np.cumsum(arr.astype(np.int64), axis=2).astype(arr.dtype)
    return arr


def unpackbits(row: bytes, size: int) -> bytes:
    """PackBits, one row."""
    out, i, n = bytearray(), 0, len(row)
    while i < n and len(out) < size:
        h = row[i]
        if h < 128:
            out += row[i + 1:i + 2 + h]
            i += 2 + h
        elif h > 128:
            out += row[i + 1:i + 2] * (257 - h)
            i += 2
        else:
            i += 1
    if len(out) != size:
        raise SectionError(f"PackBits row of {len(out)} bytes, expected {size}")
    return bytes(out)
