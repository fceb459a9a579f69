"""Execution-provider choice and the resident session."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from layermatte import formats, pipeline
from layermatte.catalog import Catalog
from layermatte.engine import Engine, choose_provider
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
