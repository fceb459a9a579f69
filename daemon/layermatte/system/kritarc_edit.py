"""Setting one key in kritarc without disturbing anything Krita wrote.

kritarc is Qt's QSettings INI: real files begin with keys before any section,
repeat sections, hold lines configparser rejects, and use CRLF on Windows.
So it is edited as bytes, line by line: only our key's line is added,
changed or removed; every other byte stays where it was.
"""
from __future__ import annotations

import os
from pathlib import Path

SECTION = b"[python]"


def _lines(rc: Path) -> tuple[list[bytes], bytes]:
    data = rc.read_bytes() if rc.exists() else b""
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    return data.splitlines(keepends=True), newline


def _section_of(lines: list[bytes]) -> list[bytes | None]:
    """The section header each line belongs to (None before the first)."""
    out, current = [], None
    for line in lines:
        s = line.strip()
        if s.startswith(b"[") and s.endswith(b"]"):
            current = s
        out.append(current)
    return out


def _key_of(line: bytes) -> bytes | None:
    s = line.strip()
    if not s or s.startswith((b"#", b";", b"[")) or b"=" not in s:
        return None
    return s.split(b"=", 1)[0].strip()


def _write(rc: Path, lines: list[bytes]) -> None:
    rc.parent.mkdir(parents=True, exist_ok=True)
    tmp = rc.with_name(rc.name + ".layermatte-tmp")
    tmp.write_bytes(b"".join(lines))
    if rc.exists():
        os.chmod(tmp, rc.stat().st_mode & 0o7777)
    os.replace(tmp, rc)


def set_key(rc: Path, key: str, value: str) -> bool:
    """Set [python] key=value. Returns True when the [python] section had to be added."""
    lines, nl = _lines(rc)
    sections = _section_of(lines)
    k = key.encode()
    entry = k + b"=" + value.encode()
    for i, line in enumerate(lines):
        if sections[i] == SECTION and _key_of(line) == k:
            ending = line[len(line.rstrip(b"\r\n")):] or nl
            lines[i] = entry + ending
            _write(rc, lines)
            return False
    headers = [i for i, s in enumerate(sections) if s == SECTION and lines[i].strip() == SECTION]
    if headers:
        at = headers[0] + 1
        if not lines[headers[0]].endswith(b"\n"):
            lines[headers[0]] += nl
        lines.insert(at, entry + nl)
        _write(rc, lines)
        return False
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += nl
    lines += ([nl] if lines else []) + [SECTION + nl, entry + nl]
    _write(rc, lines)
    return True


def remove_key(rc: Path, key: str, drop_section: bool = False) -> None:
    """Remove our key; with drop_section (we added [python]) also the header and
    the blank line before it, when the section is then empty."""
    if not rc.exists():
        return
    lines, _ = _lines(rc)
    sections = _section_of(lines)
    k = key.encode()
    keep = [line for line, sec in zip(lines, sections) if not (sec == SECTION and _key_of(line) == k)]
    if drop_section:
        sections = _section_of(keep)
        body = [line for line, sec in zip(keep, sections) if sec == SECTION and line.strip() != SECTION]
        if not any(line.strip() for line in body):
            at = next((i for i, line in enumerate(keep) if line.strip() == SECTION), None)
            if at is not None:
                end = at + 1 + len(body)
                start = at - 1 if at > 0 and not keep[at - 1].strip() else at
                keep = keep[:start] + keep[end:]
    _write(rc, keep)
