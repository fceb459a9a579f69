"""The daemon over real gRPC: results, formats, streaming, errors, limits."""
from __future__ import annotations

import threading

import cv2
import grpc
import numpy as np
import pytest

from conftest import iou, with_alpha
from layermatte.imaging import formats, pipeline
from layermatte.models.catalog import Catalog
from layermatte.models.engine import Engine
from layermatte.errors import Busy, Cancelled, InvalidInput, ModelNotFound
from layermatte.imaging.pipeline import MatteOptions
from layermatte.proto.layermatte.v1 import matting_pb2 as pb
from layermatte.proto.layermatte.v1 import matting_pb2_grpc as pb_grpc
from layermatte.imaging.refine import EdgeOptions

# Points of skimage's astronaut photo (512x512): (x, y) inside the subject / background.
SUBJECT = [(230, 120), (300, 300), (430, 450), (120, 400)]
BACKGROUND = [(30, 30), (480, 30), (20, 250), (490, 250)]


def check_astronaut(matte: np.ndarray, scale: float = 1.0):
    for x, y in SUBJECT:
        assert matte[int(y * scale), int(x * scale)] > 200, (x, y)
    for x, y in BACKGROUND:
        assert matte[int(y * scale), int(x * scale)] < 30, (x, y)


@pytest.fixture(scope="module")
def astro_matte(daemon, photos):
    with daemon.client() as c:
        reply = c.matte(with_alpha(photos["astronaut"]))
    return reply


def test_matte_of_a_real_photo(astro_matte, photos):
    m = astro_matte.matte
    assert m.shape == (512, 512) and m.dtype == np.uint8
    check_astronaut(m)
    # A real matte has soft edges, not a binary cut.
    assert ((m > 10) & (m < 245)).sum() > 500
    assert astro_matte.summary["provider"] == "CPUExecutionProvider"
    assert astro_matte.summary["model_id"] == "isnet-general"
    assert {"inference", "upsample", "total", "receive"} <= set(astro_matte.summary["stage_ms"])


def test_daemon_equals_in_process_pipeline(astro_matte, photos, model_cache):
    model, _ = Engine(Catalog(cache=model_cache)).load(None)
    local = pipeline.run(with_alpha(photos["astronaut"]), formats.lookup(1), MatteOptions(), model=model)
    assert np.abs(local.matte.astype(int) - astro_matte.matte).max() <= 1


def test_tcp_gives_the_same_matte(daemon, photos, astro_matte):
    with daemon.client(tcp=True) as c:
        reply = c.matte(photos["astronaut"])  # RGB8 this time
    assert np.abs(reply.matte.astype(int) - astro_matte.matte).max() <= 1


def test_second_request_does_not_reload_the_model(daemon, photos, astro_matte):
    with daemon.client() as c:
        reply = c.matte(photos["astronaut"])
        assert reply.summary["stage_ms"]["load"] < 50
        models = {m["id"]: m for m in c.list_models()}
    assert models["isnet-general"]["loaded"] and models["isnet-general"]["pulled"]
    assert models["isnet-general"]["is_default"]
    assert models["isnet-general"]["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize("tcp", [False, True], ids=["unix-file", "tcp-chunks"])
def test_layer_above_40mb_streams_and_matches(daemon, photos, astro_matte, tcp):
    big = cv2.resize(with_alpha(photos["astronaut"]), (3500, 3500), interpolation=cv2.INTER_CUBIC)
    big[:16, :16, :3] = 255 * tcp   # not the other case's pixels: the model must run (no re-refine)
    assert big.nbytes > 40 * 2 ** 20
    stages = []
    with daemon.client(tcp=tcp) as c:
        reply = c.matte(big, progress=lambda s, f: stages.append((s, f)))
    assert reply.matte.shape == (3500, 3500)
    assert reply.summary["result_in_file"] is (not tcp)   # the answer came in /dev/shm, or in chunks
    check_astronaut(reply.matte, scale=3500 / 512)
    small = cv2.resize(reply.matte, (512, 512), interpolation=cv2.INTER_AREA)
    assert iou(small, astro_matte.matte) > 0.97
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"receive", "inference", "refine", "send"} <= {s for s, _ in stages}


def test_pixel_formats_agree(daemon, photos, astro_matte):
    rgb = photos["astronaut"]
    rgba = with_alpha(rgb)
    with daemon.client() as c:
        bgra = c.matte(np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), format_code=formats.BY_NAME["BGRA8"])
        deep = c.matte(rgba.astype(np.uint16) * 257, options=MatteOptions(depth16=True))
        flt = c.matte(rgba.astype(np.float32) / 255)
        gray = c.matte(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    assert np.abs(bgra.matte.astype(int) - astro_matte.matte).max() <= 1
    assert deep.matte.dtype == np.uint16
    assert np.abs((deep.matte / 257.0) - astro_matte.matte).max() <= 3  # rounding in the 16-bit resize
    assert np.abs(flt.matte.astype(int) - astro_matte.matte).max() <= 2
    check_astronaut(gray.matte)


def test_layer_alpha_is_respected(daemon, photos):
    rgba = with_alpha(photos["astronaut"])
    rgba[:, :256, 3] = 0
    with daemon.client() as c:
        m = c.matte(rgba).matte
        ignored = c.matte(rgba, options=MatteOptions(ignore_layer_alpha=True)).matte
    assert m[:, :256].max() == 0
    assert m[300, 300] > 200
    assert ignored[:, :256].max() > 200


def test_edge_options_change_the_matte_as_named(daemon, photos, astro_matte):
    with daemon.client() as c:
        grown = c.matte(photos["astronaut"], options=MatteOptions(edges=EdgeOptions(shift_px=6))).matte
        shrunk = c.matte(photos["astronaut"], options=MatteOptions(edges=EdgeOptions(shift_px=-6))).matte
        soft = c.matte(photos["astronaut"], options=MatteOptions(edges=EdgeOptions(feather_px=8))).matte
        with pytest.raises(InvalidInput, match="feather_px"):
            c.matte(photos["astronaut"], options=MatteOptions(edges=EdgeOptions(feather_px=-3)))
    base = (astro_matte.matte > 127).sum()
    assert (grown > 127).sum() > base * 1.02 > base / 1.02 > (shrunk > 127).sum()
    partial = lambda m: ((m > 10) & (m < 245)).sum()
    assert partial(soft) > 2 * partial(astro_matte.matte)


def synthetic_composite(photos, n=2400):
    """Known alpha: a wavy disc of one real photo over another, antialiased."""
    yy, xx = np.mgrid[0:n, 0:n]
    ang, rad = np.arctan2(yy - n / 2, xx - n / 2), np.hypot(yy - n / 2, xx - n / 2)
    edge = n * 0.3 * (1 + 0.15 * np.sin(7 * ang) + 0.05 * np.sin(41 * ang))
    gt = np.clip(edge - rad + 0.5, 0, 1).astype(np.float32)
    fg = cv2.resize(photos["astronaut"], (n, n)).astype(np.float32)
    bg = cv2.resize(photos["coffee"], (n, n)).astype(np.float32)
    img = (fg * gt[..., None] + bg * (1 - gt[..., None]) + 0.5).astype(np.uint8)
    return img, gt


def test_edge_aware_upsampling_beats_bilinear(daemon, photos):
    """The daemon refines a coarse (model-resolution, blurred) matte of an image
    with known alpha; edge-aware must land closer to the truth than bilinear."""
    img, gt = synthetic_composite(photos)
    n = gt.shape[0]
    coarse = cv2.GaussianBlur(cv2.resize(gt, (n // 4, n // 4), interpolation=cv2.INTER_AREA), (0, 0), 1.0)
    guide = cv2.resize((coarse * 255).astype(np.uint8), (n, n), interpolation=cv2.INTER_NEAREST)
    with daemon.client() as c:
        guided = c.matte(img, guide_mask=guide).matte
        plain = c.matte(img, guide_mask=guide, options=MatteOptions(plain_upsample=True)).matte
    hard = (gt > 0.5).astype(np.uint8)
    k = np.ones((15, 15), np.uint8)
    band = cv2.dilate(hard, k) != cv2.erode(hard, k)
    err = lambda m: np.abs(m.astype(np.float32) / 255 - gt)[band].mean()
    assert err(guided) < 0.75 * err(plain), (err(guided), err(plain))


def test_refine_a_provided_mask_without_the_model(daemon, photos, astro_matte):
    rough = cv2.resize(cv2.resize(astro_matte.matte, (32, 32), interpolation=cv2.INTER_AREA),
                       (512, 512), interpolation=cv2.INTER_NEAREST)
    with daemon.client() as c:
        reply = c.matte(photos["astronaut"], guide_mask=rough)
    assert reply.summary["provider"] == "" and reply.summary["stage_ms"]["load"] == 0
    err_rough = np.abs(rough.astype(int) - astro_matte.matte).mean()
    err_refined = np.abs(reply.matte.astype(int) - astro_matte.matte).mean()
    assert err_refined < err_rough


def test_foreground_decontamination(daemon, photos):
    """Cut-out colours in the edge band lose the background's tint."""
    rgb = photos["astronaut"].copy()
    with daemon.client() as c:
        plain = c.matte(rgb, options=MatteOptions(return_foreground=True))
        clean = c.matte(rgb, options=MatteOptions(return_foreground=True, decontaminate=True))
    assert np.array_equal(plain.foreground, rgb)
    band = (clean.matte > 20) & (clean.matte < 230)
    assert band.sum() > 200
    assert np.abs(clean.foreground[band].astype(int) - rgb[band]).mean() > 3
    assert np.array_equal(clean.foreground[clean.matte == 255], rgb[clean.matte == 255])


def test_concurrent_clients_get_identical_results(daemon, photos, astro_matte):
    results, errors = [], []

    def one():
        try:
            with daemon.client() as c:
                results.append(c.matte(photos["astronaut"]).matte)
        except Exception as e:  # surfaced below
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    for r in results:
        assert np.abs(r.astype(int) - astro_matte.matte).max() <= 1


def test_cancel_mid_stream(daemon, photos):
    big = cv2.resize(photos["astronaut"], (3000, 3000))
    cancel = threading.Event()

    def progress(stage, fraction):
        if stage == "inference":
            cancel.set()
    with daemon.client() as c:
        with pytest.raises(Cancelled):
            c.matte(big, progress=progress, cancel=cancel)
        assert daemon.alive()
        check_astronaut(c.matte(photos["astronaut"]).matte)


# -- bad input over raw gRPC --------------------------------------------------------
def raw_call(daemon, messages):
    with grpc.insecure_channel(daemon.address) as ch:
        stub = pb_grpc.MattingStub(ch)
        try:
            list(stub.Matte(iter(messages), timeout=60))
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def header(**kw):
    base = dict(width=4, height=4, format=pb.PIXEL_FORMAT_RGB8)
    base.update(kw)
    return pb.MatteRequest(header=pb.MatteHeader(**base))


def chunk(data, plane=pb.PLANE_PIXELS):
    return pb.MatteRequest(chunk=pb.Chunk(plane=plane, data=data))


@pytest.mark.parametrize("messages,code,words", [
    ([chunk(b"x")], "INVALID_ARGUMENT", "first message"),
    ([], "INVALID_ARGUMENT", "first message"),
    ([header(width=0)], "INVALID_ARGUMENT", "at least 1x1"),
    ([header(width=100000, height=100000)], "RESOURCE_EXHAUSTED", "limit"),
    ([header(format=0)], "INVALID_ARGUMENT", "pixel format"),
    ([header(format=99)], "INVALID_ARGUMENT", "pixel format"),
    ([header(), chunk(b"\0" * 47)], "INVALID_ARGUMENT", "ended early"),
    ([header(), chunk(b"\0" * 49)], "INVALID_ARGUMENT", "too much data"),
    ([header(), chunk(b"\0" * 48), chunk(b"\0")], "INVALID_ARGUMENT", "too much data"),
    ([header(), header()], "INVALID_ARGUMENT", "one header"),
    ([header(), chunk(b"\0" * 16, plane=pb.PLANE_GUIDE_MASK)], "INVALID_ARGUMENT", "plane"),
    ([header(model_id="no-such-model"), chunk(b"\0" * 48)], "NOT_FOUND", "unknown model"),
    ([header(request_id="x" * 500)], "INVALID_ARGUMENT", "request_id"),
    ([header(refinement=pb.Refinement(contrast=float("nan")))], "INVALID_ARGUMENT", "contrast"),
])
def test_bad_input_gets_a_specific_status(daemon, messages, code, words):
    got, details = raw_call(daemon, messages)
    assert got == getattr(grpc.StatusCode, code), details
    assert words in details
    assert daemon.alive()


def test_client_maps_errors(daemon, photos):
    with daemon.client() as c:
        with pytest.raises(ModelNotFound):
            c.matte(photos["astronaut"], model_id="nope")
        with pytest.raises(InvalidInput):
            c.matte(np.zeros((4, 4, 5), np.uint8))


def test_health_and_reflection(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.address) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="layermatte.v1.Matting"))
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
    assert {"layermatte.v1.Matting", "grpc.health.v1.Health"} <= names


def test_queue_full_is_resource_exhausted(model_cache):
    """concurrency 1, queue 0: a second call while one is open is refused at once."""
    from conftest import start_daemon, stop_daemon
    d = start_daemon(model_cache, "--concurrency", "1", "--queue", "0", "--no-warm")
    release = threading.Event()

    def held():
        yield header(source=pb.MATTE_SOURCE_PROVIDED)
        release.wait(30)
        yield chunk(b"\0" * 48)
        yield chunk(b"\xff" * 16, plane=pb.PLANE_GUIDE_MASK)
    try:
        with grpc.insecure_channel(d.address) as ch:
            call = pb_grpc.MattingStub(ch).Matte(held(), timeout=60)
            first = next(call)  # admitted (queue/receive progress)
            assert first.WhichOneof("kind") == "progress"
            with d.client() as c:
                with pytest.raises(Busy, match="busy"):
                    c.matte(np.zeros((4, 4, 3), np.uint8), guide_mask=np.zeros((4, 4), np.uint8))
            release.set()
            rest = list(call)
            assert rest[-1].WhichOneof("kind") == "summary"
            mattes = [r.chunk.data for r in rest if r.WhichOneof("kind") == "chunk"]
            assert b"".join(mattes) == b"\xff" * 16  # flat image: the guide mask is kept
    finally:
        release.set()
        stop_daemon(d)
