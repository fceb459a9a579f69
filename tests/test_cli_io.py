"""cut's ergonomics with the real daemon and model: stdin/stdout, many inputs
into a folder, default names, --bg-color and JPEG, --json, -v timings and
global options after the command; batch --mask-only; argument parsing of
psd --layers and batch --ray; help on every option."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layermatte.cli import COMMANDS, build_parser


def lm(*args, env=None, input=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "layermatte", *map(str, args)], env=env,
                          input=input, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def inputs(photos, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("inputs")
    out = []
    for name in ("astronaut", "cat"):
        p = d / f"{name}.jpg"
        Image.fromarray(photos[name]).save(p, quality=95)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def singles(daemon, inputs, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each input cut on its own (RGBA)."""
    d = tmp_path_factory.mktemp("singles")
    got = {}
    for p in inputs:
        r = lm("cut", p, d / f"{p.stem}.png", "--socket", daemon.socket, env=daemon.env)
        assert r.returncode == 0, r.stderr.decode()
        got[p.stem] = np.asarray(Image.open(d / f"{p.stem}.png"))
    return got


def test_stdin_to_stdout_is_the_same_cut(daemon, inputs, singles):
    r = lm("cut", "-", "-", "--socket", daemon.socket, env=daemon.env, input=inputs[0].read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.stdout))), singles["astronaut"])
    r = lm("cut", "-", "--format", "webp", "--mask-only", "--socket", daemon.socket, env=daemon.env,
           input=inputs[0].read_bytes())
    im = Image.open(io.BytesIO(r.stdout))
    assert r.returncode == 0 and im.format == "WEBP"
    assert np.abs(np.asarray(im.convert("L")).astype(int) - singles["astronaut"][..., 3]).max() <= 1
    bad = lm("cut", "-", "-", "--socket", daemon.socket, env=daemon.env, input=b"not an image")
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().strip().startswith("layermatte: error: stdin: not a readable image")


def test_many_inputs_into_a_folder_match_single_runs(daemon, inputs, singles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = lm("cut", *inputs, out, "--json", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    records = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [rec["output"] for rec in records] == [str(out / "astronaut.png"), str(out / "cat.png")]
    for rec in records:
        assert rec["ok"] and rec["model"] == "isnet-general" and rec["stage_ms"]
        assert np.array_equal(np.asarray(Image.open(rec["output"])), singles[Path(rec["input"]).stem])
    assert records[1]["width"] == 451 and records[1]["height"] == 300


def test_partial_failure_exits_3(daemon, inputs, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    out.mkdir()
    r = lm("cut", inputs[1], broken, out, "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 3, r.stderr.decode()
    assert (out / "cat.png").exists() and not (out / "broken.png").exists()
    assert f"failed {broken}" in r.stderr.decode() and "1 of 2 done" in r.stderr.decode()


def test_default_name_bg_color_and_jpeg(daemon, inputs, singles, tmp_path):
    src = tmp_path / "cat.jpg"
    src.write_bytes(inputs[1].read_bytes())
    r = lm("cut", src, "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cat.cut.png")), singles["cat"])
    r = lm("cut", src, tmp_path / "red.png", "--bg-color", "#ff0000", "--socket", daemon.socket,
           env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    flat = np.asarray(Image.open(tmp_path / "red.png")).astype(float)
    rgba = singles["cat"].astype(float)
    a = rgba[..., 3:] / 255
    want = rgba[..., :3] * a + np.array([255, 0, 0]) * (1 - a)
    assert flat.shape == (300, 451, 3) and np.abs(flat - want).max() <= 1
    r = lm("cut", src, tmp_path / "cat.jpg.jpg", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    jpg = Image.open(tmp_path / "cat.jpg.jpg")
    assert jpg.format == "JPEG" and jpg.mode == "RGB"
    white = np.asarray(jpg).astype(float)
    clear = singles["cat"][..., 3] == 0
    assert white[clear].mean() > 240   # the background became white


def test_verbose_after_the_command_shows_stage_timings(daemon, inputs, tmp_path):
    r = lm("cut", inputs[1], tmp_path / "o.png", "-v", "--socket", daemon.socket, env=daemon.env)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    line = next(ln for ln in err.splitlines() if ln.startswith("cat.jpg: "))
    assert " s (" in line and "inference" in line and "preprocess" in line and " ms" in line
    quiet = lm("cut", inputs[1], tmp_path / "o2.png", "--socket", daemon.socket, env=daemon.env)
    assert quiet.stderr.decode().strip() == f"wrote {tmp_path / 'o2.png'}"
    assert lm("--version").stdout.decode().startswith("layermatte ")


def test_local_prints_no_info_logs(model_cache, inputs, tmp_path):
    import os
    r = lm("cut", inputs[1], tmp_path / "o.png", "--local", "--mask-only",
           env=dict(os.environ, LAYERMATTE_CACHE=str(model_cache)))
    assert r.returncode == 0 and r.stderr.decode().strip() == f"wrote {tmp_path / 'o.png'}"


def test_batch_mask_only(daemon, inputs, singles, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "cat.jpg").write_bytes(inputs[1].read_bytes())
    r = lm("batch", src, tmp_path / "out", "--mask-only", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr.decode()
    m = np.asarray(Image.open(tmp_path / "out" / "cat.png"))
    assert m.ndim == 2 and np.abs(m.astype(int) - singles["cat"][..., 3]).max() <= 1


def test_files_after_list_options_parse(tmp_path):
    """`psd --layers A in.psd out.psd` and `batch --ray in out` name the files."""
    missing = tmp_path / "in.psd"
    r = lm("psd", "--layers", "Hero", "Group/Logo", missing, tmp_path / "out.psd")
    assert r.returncode == 2 and r.stderr.decode().strip() == f"layermatte: error: {missing}: no such file"
    r = lm("batch", "--ray", tmp_path / "nope", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.decode().strip() == f"layermatte: error: {tmp_path / 'nope'}: no such folder"


def test_help_on_every_option_and_cheap_registration():
    parser = build_parser()
    assert {n for n in COMMANDS} <= set(parser._subparsers._group_actions[0].choices)
    sub = parser._subparsers._group_actions[0]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, (_, summary) in COMMANDS.items():
        assert helps[name] == summary, name   # the placeholder says what the real parser says
    missing = []

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, child in a.choices.items():
                    walk(child, f"{path} {n}")
            elif not a.help:
                missing.append(f"{path} {a.dest}")
    walk(parser, "layermatte")
    assert missing == []
    from layermatte.imaging import pipeline
    from layermatte.cli.common import QUALITIES
    assert QUALITIES == pipeline.QUALITIES
