"""Byte-level comparison of a PSD before and after `layermatte psd`, through
layermatte.psd.sections (not psd-tools): everything but the new pixel masks must
be unchanged."""
from __future__ import annotations

import struct

import numpy as np

from layermatte.psd import sections as S


def decode_channel(data: bytes, w: int, h: int, depth: int, version: int) -> np.ndarray:
    """One layer channel (compression + data) as HxW."""
    comp = struct.unpack(">H", data[:2])[0]
    body = data[2:]
    row = (w * depth + 7) // 8
    if comp == 0:
        raw = body[:row * h]
    elif comp == 1:
        size = 4 if version == 2 else 2
        counts = np.frombuffer(body[:h * size], ">u4" if size == 4 else ">u2").astype(np.int64)
        pos, parts = h * size, []
        for c in counts:
            parts.append(S.unpackbits(body[pos:pos + c], row))
            pos += c
        raw = b"".join(parts)
    else:
        import zlib
        raw = zlib.decompress(body)
    arr = np.frombuffer(raw, ">u1" if depth == 8 else ">u2").reshape(h, w)
    if comp == 3:
        arr = np.cumsum(arr.astype(np.int64), axis=1).astype(arr.dtype)
    return arr


def same_block(a: bytes, b: bytes) -> bool:
    """Equal, or `a` (stored unpadded by a non-Adobe writer, e.g. 'luni' names or the
    global mask info) with the zero padding to 4 bytes that psd-tools adds on saving."""
    return b == a or (len(a) % 4 != 0 and b == a + bytes(-len(a) % 4))


def mask_fields_except(m: S.MaskRecord | None, slot: int) -> tuple:
    """Every field of a mask record but the rectangle and background of the pixel mask in `slot`."""
    if m is None:
        return ()
    fields = [m.flags, m.parameters]
    fields += [m.rect, m.background] if slot != -2 else []
    fields += [m.real_flags] + ([m.real_rect, m.real_background] if slot != -3 else [])
    return tuple(fields)


def compare(before: bytes, after: bytes, masked: dict[int, int]) -> S.Sections:
    """Assert `after` equals `before` except the pixel masks of the layers in `masked`
    (record index -> channel id of the new pixel mask). Returns the parsed `after`."""
    a, b = S.read(before), S.read(after)
    assert b.header == a.header
    assert b.color_mode_data == a.color_mode_data
    assert [(r.id, r.name, r.data) for r in b.resources] == [(r.id, r.name, r.data) for r in a.resources]
    assert b.layer_count_raw == a.layer_count_raw and len(b.layers) == len(a.layers)
    for i, (la, lb) in enumerate(zip(a.layers, b.layers)):
        where = f"layer {i} {la.name!r}"
        assert (lb.rect, lb.blend, lb.blending_ranges, lb.name) == (la.rect, la.blend, la.blending_ranges,
                                                                     la.name), where
        assert [k.key for k in lb.blocks] == [k.key for k in la.blocks], where
        for ka, kb in zip(la.blocks, lb.blocks):
            assert same_block(ka.data, kb.data), f"{where}: block {ka.key!r} changed"
        slot = masked.get(i)
        if slot is None:
            assert lb.channels == la.channels, where
            assert lb.mask == la.mask, where
            assert lb.channel_data == la.channel_data, where
            continue
        ids_a = [c for c, _ in la.channels]
        ids_b = [c for c, _ in lb.channels]
        assert [c for c in ids_b if c != slot] == [c for c in ids_a if c != slot], where
        if la.mask is not None:
            assert mask_fields_except(lb.mask, slot) == mask_fields_except(la.mask, slot), where
        rendered = slot == REAL and la.mask is not None and la.mask.flags & RENDERED and USER in ids_a
        for cid, data in la.channel_data.items():
            if cid != slot and not (rendered and cid == USER):
                assert lb.channel_data[cid] == data, f"{where}: channel {cid} changed"
        if rendered:
            rendered_follows(la, lb, a.depth, a.version, where)
    assert same_block(a.global_mask, b.global_mask)
    blocks = lambda s: [k for k in s.blocks if k.key not in (b"Lr16", b"Lr32")]
    assert [k.key for k in blocks(b)] == [k.key for k in blocks(a)]
    for ka, kb in zip(blocks(a), blocks(b)):
        assert same_block(ka.data, kb.data), f"document block {ka.key!r} changed"
    return b


def _on(rect: tuple, arr: np.ndarray, bg: int, box: tuple) -> np.ndarray:
    """A mask channel (at `rect`, `bg` outside it) over the rectangle `box`."""
    t, l, b, r = box
    out = np.full((b - t, r - l), bg, np.int64)
    y0, y1, x0, x1 = max(t, rect[0]), min(b, rect[2]), max(l, rect[1]), min(r, rect[3])
    if y1 > y0 and x1 > x0:
        out[y0 - t:y1 - t, x0 - l:x1 - l] = arr[y0 - rect[0]:y1 - rect[0], x0 - rect[1]:x1 - rect[1]]
    return out


def _channel_on(layer: S.LayerRecord, cid: int, depth: int, version: int, box: tuple) -> np.ndarray:
    """Mask channel `cid` of `layer` (-2 or -3, with its rectangle and background) over `box`."""
    m = layer.mask
    rect, bg = (m.real_rect, m.real_background) if cid == REAL else (m.rect, m.background)
    t, l, b, r = rect
    return _on(rect, decode_channel(layer.channel_data[cid], r - l, b - t, depth, version), bg, box)


def rendered_follows(la: S.LayerRecord, lb: S.LayerRecord, depth: int, version: int, where: str = "") -> None:
    """Channel -2 beside a replaced -3, flagged as rendered (Photoshop's -3 clipped by the vector
    mask), follows the new -3, judged without rasterizing the vector: on the pixels where the
    input's -2 equalled its -3 (> 0: inside the vector) the new -2 equals the new -3, and where
    the input's -2 was 0 under a -3 > 0 (outside the vector) it stays 0. The rectangle and
    background stay unless the background was not 0."""
    if la.mask.background == 0:
        assert (lb.mask.rect, lb.mask.background) == (la.mask.rect, la.mask.background), where
    box = lb.mask.rect
    old2, old3, new2, new3 = (_channel_on(ly, c, depth, version, box) for ly in (la, lb) for c in (USER, REAL))
    inside, outside = (old2 == old3) & (old3 > 0), (old2 == 0) & (old3 > 0)
    assert inside.any(), f"{where}: no pixel of -2 known to be inside the vector mask"
    assert np.array_equal(new2[inside], new3[inside]), f"{where}: -2 does not follow the new -3"
    assert not new2[outside].any(), f"{where}: -2 shows the new mask outside the vector mask"


def pixel_mask(s: S.Sections, index: int) -> tuple[np.ndarray, tuple, int]:
    """The pixel mask of layer `index`: (HxW, rect, background), from the record alone."""
    layer = s.layers[index]
    ids = [c for c, _ in layer.channels]
    m = layer.mask
    if REAL in ids:
        rect, bg, cid = m.real_rect, m.real_background, REAL
    else:
        rect, bg, cid = m.rect, m.background, USER
    t, l, bt, r = rect
    return decode_channel(layer.channel_data[cid], r - l, bt - t, s.depth, s.version), rect, bg


USER, REAL = S.USER_MASK, S.REAL_USER_MASK
RENDERED = 0x08   # mask flags bit 3: channel -2 came from rendering other data (the vector mask)
