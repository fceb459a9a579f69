"""Execution-provider choice and the resident session."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from layermatte.imaging import formats, pipeline
from layermatte.models.catalog import Catalog
from layermatte.models.engine import Engine, choose_provider
from layermatte.errors import Cancelled, InvalidInput

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_best_available_provider_with_reason():
    name, why = choose_provider(None)
    assert name in ort.get_available_providers()
    if not HAS_CUDA:
        assert name == "CPUExecutionProvider" and "CUDAExecutionProvider" in why


def test_override_must_be_available():
    assert choose_provider("cpu")[0] == "CPUExecutionProvider"
    if "DmlExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(InvalidInput, match="not available"):
            choose_provider("directml")


def test_the_provider_list_is_recorded_per_build(tmp_path):
    """doctor reads onnxruntime's providers from a record naming the build, in a
    new process that then never imports onnxruntime; a record of another build
    (an upgrade) is not believed."""
    import json
    import os
    import subprocess
    import sys
    code = ("import json, sys\nfrom layermatte.models.providers import runtime_info\n"
            "print(json.dumps([runtime_info(), 'onnxruntime' in sys.modules]))")
    env = dict(os.environ, LAYERMATTE_CACHE=str(tmp_path))

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    live = [ort.__version__, list(ort.get_available_providers())]
    assert run() == [live, True]      # first: imported, and recorded
    assert run() == [live, False]     # then: from the record
    record = tmp_path / "onnxruntime-build.json"
    stale = dict(json.loads(record.read_text()), key="another build", providers=["FakeProvider"])
    record.write_text(json.dumps(stale))
    assert run() == [live, True]


def test_one_session_per_model_is_reused(model_cache):
    engine = Engine(Catalog(cache=model_cache), provider="cpu")
    first, fresh = engine.load(None)
    again, fresh2 = engine.load("isnet-general")
    assert fresh and not fresh2 and again is first
    assert engine.loaded("isnet-general") is first


def test_cancel_terminates_a_running_inference(model_cache):
    engine = Engine(Catalog(cache=model_cache), provider="cpu")
    model, _ = engine.load(None)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    tensor = np.zeros((1, 3, 1024, 1024), np.float32)
    with pytest.raises(Cancelled):
        model.run(tensor, cancel)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA execution provider in this onnxruntime build "
                    "(CPU-only machine); the GPU path runs on the accelerator machine")
def test_cuda_matches_cpu(model_cache, photos):
    rgb = photos["astronaut"]
    fmt = formats.lookup(2)
    results = {}
    for prov in ("cuda", "cpu"):
        model, _ = Engine(Catalog(cache=model_cache), provider=prov).load(None)
        results[prov] = pipeline.run(rgb, fmt, pipeline.MatteOptions(), model=model)
        assert model.provider.lower().startswith(prov)
    assert np.abs(results["cuda"].matte.astype(int) - results["cpu"].matte).mean() < 1.0


def test_cpu_session_runs_a_float32_matte_only_graph_with_the_downloads_matte(model_cache, photos):
    onnx = pytest.importorskip("onnx")
    catalog = Catalog(cache=model_cache)
    model, _ = Engine(catalog, provider="cpu").load(None)
    spec, download = catalog.require(None)
    assert model.source.endswith(".matte-only.fp32.onnx") and model.output_index == 0
    derived = onnx.load(model.source)
    assert len(derived.graph.output) == 1
    assert {t.data_type for t in derived.graph.initializer} == {onnx.TensorProto.FLOAT}
    original = ort.InferenceSession(str(download), providers=["CPUExecutionProvider"])
    assert len(original.get_outputs()) > 1
    tensor, _ = pipeline.model_tensor(photos["astronaut"], formats.lookup(2), spec)
    want = original.run(None, {original.get_inputs()[0].name: tensor})[spec.preprocess.output_index]
    got = model.run(tensor)
    assert got.shape == want.shape
    assert np.abs(got.astype(np.float32) - want.astype(np.float32)).max() < 1e-3


def test_float16_graph_is_widened_with_its_casts_and_constants(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from layermatte.models import graph
    half = np.array([0.5, 2.0], np.float16)
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(half, "c")),
             helper.make_node("Mul", ["xh", "w"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])],
                          [numpy_helper.from_array(np.array([3.0, 4.0], np.float16), "w")])
    src, dst = tmp_path / "half.onnx", tmp_path / "wide.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert graph.derive(src, 0, dst, fp32=True) == (dst, 0)
    s = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.array([1.0, 1.5], np.float32)})[0]
    assert y.dtype == np.float32 and np.allclose(y, [3.5, 8.0])
    # Nothing to change (one output, float32 wanted only for float16): the file as it is.
    assert graph.derive(dst, 0, tmp_path / "again.onnx", fp32=True) == (dst, 0)
    assert not (tmp_path / "again.onnx").exists()
