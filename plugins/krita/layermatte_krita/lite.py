"""Finds the shared editor client, layermatte_lite.

`layermatte install krita` copies it (with the descriptor set and the JSON file
saying how to run `layermatte`) into this package; in a source checkout it is
plugins/common/layermatte_lite.py.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .core import PluginError

_HERE = Path(__file__).resolve().parent


def lite():
    if (_HERE / "layermatte_lite.py").is_file():
        return importlib.import_module(__package__ + ".layermatte_lite")
    common = _HERE.parent.parent / "common"
    if (common / "layermatte_lite.py").is_file():
        if str(common) not in sys.path:
            sys.path.insert(0, str(common))
        return importlib.import_module("layermatte_lite")
    raise PluginError("the plug-in is incomplete (layermatte_lite.py is missing): reinstall it with "
                      "`layermatte install krita`")


try:
    LayermatteError = lite().LayermatteError
    Cancelled = lite().Cancelled
except PluginError:  # reported again when a mask is requested
    class LayermatteError(Exception):
        pass

    class Cancelled(LayermatteError):
        pass


def list_models(timeout: float = 1.0) -> list[dict]:
    """The daemon's catalogue for the options dialog ([] when it cannot be asked: no grpc in
    this Python, or no daemon running). Uses the same run-time descriptors as layermatte_lite."""
    try:
        mod = lite()
        if not mod.grpc_available():
            return []
        import grpc
        from google.protobuf import descriptor_pb2, descriptor_pool
        pool = descriptor_pool.DescriptorPool()
        for fdp in descriptor_pb2.FileDescriptorSet.FromString(mod.DESCRIPTOR_FILE.read_bytes()).file:
            pool.Add(fdp)
        reply = mod._message_class(pool, "layermatte.v1.ListModelsResponse")
        channel = grpc.insecure_channel(mod.resolve_address())
        try:
            call = channel.unary_unary("/layermatte.v1.Matting/ListModels",
                                       request_serializer=lambda b: b,
                                       response_deserializer=reply.FromString)
            models = call(b"", timeout=timeout).models
        finally:
            channel.close()
        return [{"id": m.id, "title": m.title, "pulled": m.pulled, "default": m.is_default}
                for m in models]
    except Exception:  # only a convenience: the model stays a free-text field
        return []
