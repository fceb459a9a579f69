"""The default cut-out end to end: `layermatte cut` (decontaminated, PNG out)
vs a plain pipeline with the same model, and what PNG encoding costs.

    .venv/bin/python bench/bench_cut.py [--rounds 5] [--size 4096] [--out bench/RESULTS.md]

Contenders, paired round by round (order rotated each round; the VM's speed
drifts up to 2x within minutes, so ratios are taken within a round and the
median over rounds is reported):

- model: the daemon's own ONNX session on a ready input tensor (the floor).
- plain pipeline: in this process, with a resident session (no start-up):
  decode the PNG, resize to the model's input, infer, bilinear up, PNG
  encode (the same writer as `cut`, imageio.write).
- daemon cut-out / daemon cut-out, decontaminated: Client.matte with the
  cut-out's colours, without and with decontamination (the default).
- cut: `layermatte cut IN.png OUT.png` as a user runs it, a new process
  against a warm daemon; cut --no-decontaminate likewise.

Every call gets an input the model has not seen (a 16x16 block flipped), so
the daemon's coarse-matte cache never answers. Then the cut-out is encoded
with Pillow and OpenCV at several zlib levels and strategies (time, bytes).
Writes its section of bench/RESULTS.md (between the bench_cut markers).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BEGIN, END = "<!-- bench_cut: begin -->", "<!-- bench_cut: end -->"
PILLOW_PLAIN = "plain, Pillow's default PNG"
CUTS = {"cut": [], "cut --no-decontaminate": ["--no-decontaminate"]}


def photo(w: int, h: int) -> np.ndarray:
    import skimage.data
    return cv2.resize(skimage.data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)


def flip(img: np.ndarray, k: int) -> np.ndarray:
    """A copy with a change the model can see (a 16x16 block flipped by 128)."""
    out = img.copy()
    h, w = img.shape[:2]
    y, x = (k * 16) % (h - 16), (k * 48) % (w - 16)
    out[y:y + 16, x:x + 16] ^= 0x80
    return out


def encoders():
    """PNG encoders of an RGBA uint8 array: name -> (array -> bytes)."""
    from PIL import Image

    def pil(level: int, strategy: int = -1):
        def enc(rgba):
            b = io.BytesIO()
            Image.fromarray(rgba).save(b, format="PNG", compress_level=level, compress_type=strategy)
            return b.getvalue()
        return enc

    def ocv(*params):
        def enc(rgba):
            return cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), list(params))[1].tobytes()
        return enc
    return {
        "Pillow level 6 (Pillow's default)": pil(6), "Pillow level 3": pil(3),
        "Pillow level 1": pil(1), "Pillow level 1, Z_RLE (cut's choice)": pil(1, 3),
        "Pillow level 1, Huffman only": pil(1, 2), "Pillow level 0 (stored)": pil(0),
        "OpenCV default": ocv(), "OpenCV level 1, Z_RLE": ocv(cv2.IMWRITE_PNG_COMPRESSION, 1,
                                                              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE),
        "OpenCV level 3": ocv(cv2.IMWRITE_PNG_COMPRESSION, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--png-rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()

    from conftest import CACHE, start_daemon, stop_daemon
    from PIL import Image
    from layermatte.imaging import formats, imageio
    from layermatte.imaging.pipeline import MatteOptions, model_tensor, postprocess
    from layermatte.models.catalog import Catalog
    from layermatte.models.engine import Engine

    os.environ["LAYERMATTE_CACHE"] = str(CACHE)
    Catalog(cache=CACHE).pull(show_progress=False)
    model, _ = Engine(Catalog(cache=CACHE)).load(None)
    rgb8 = formats.lookup(formats.BY_NAME["RGB8"])
    s = args.size
    img = photo(s, s)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cut-"))
    counter = iter(range(1 << 30))

    def fresh_file() -> Path:
        k = next(counter)
        path = tmp / f"in{k}.png"
        Image.fromarray(flip(img, k)).save(path, compress_level=1)
        return path

    def plain(path: Path, out: Path, pillow_default: bool = False) -> None:
        pixels = imageio.read(path).pixels
        tensor, _ = model_tensor(pixels, rgb8, model.spec)
        m = postprocess(model.session.run(None, {model.input_name: tensor})[0], model)
        up = cv2.resize(m, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
        rgba = np.dstack([pixels, cv2.convertScaleAbs(up, alpha=255.0)])
        if pillow_default:   # as a script would write it: Image.save's defaults
            Image.fromarray(rgba).save(out)
        else:
            imageio.write(out, rgba)

    daemon = start_daemon(CACHE)
    client = daemon.client()
    client.load_model()
    env = dict(daemon.env)

    def cut(extra: list[str]):
        def run(path: Path) -> None:
            subprocess.run([sys.executable, "-m", "layermatte", "cut", str(path), str(tmp / "out.png"),
                            "--socket", str(daemon.socket), "--no-autostart", *extra],
                           env=env, check=True, capture_output=True)
        return run

    tensor, _ = model_tensor(img, rgb8, model.spec)
    stage_ms: list[dict] = []

    def daemon_cut(decon: bool):
        def run(arr: np.ndarray) -> None:
            r = client.matte(arr, options=MatteOptions(return_foreground=True, decontaminate=decon))
            assert r.summary["stage_ms"]["inference"] > 0, "the cache answered: not a fair timing"
            if decon:
                stage_ms.append(r.summary["stage_ms"])
        return run
    contenders = {
        "model": (lambda: None, lambda _: model.session.run(None, {model.input_name: tensor})),
        "plain pipeline": (fresh_file, lambda p: plain(p, tmp / "plain.png")),
        PILLOW_PLAIN: (fresh_file, lambda p: plain(p, tmp / "plain.png", True)),
        "daemon cut-out": (lambda: flip(img, next(counter)), daemon_cut(False)),
        "daemon cut-out, decontaminated": (lambda: flip(img, next(counter)), daemon_cut(True)),
        **{name: (fresh_file, cut(extra)) for name, extra in CUTS.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    try:
        for make, fn in contenders.values():   # warm every path once
            fn(make())
        stage_ms.clear()
        order = list(contenders.items())
        for r in range(args.rounds):
            for name, (make, fn) in order[r % len(order):] + order[:r % len(order)]:
                x = make()   # inputs are made outside the timing
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        client.close()
        stop_daemon(daemon)

    # PNG encoders on the default cut's own output, interleaved.
    cutout = imageio.read(tmp / "out.png").pixels
    enc = encoders()
    png: dict[str, list[float]] = {k: [] for k in enc}
    size: dict[str, int] = {}
    for r in range(args.png_rounds):
        names = list(enc)
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            data = enc[name](cutout)
            png[name].append(time.perf_counter() - t0)
            size[name] = len(data)
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    write(args, times, stage_ms, png, size)


def write(args, times, stage_ms, png, size) -> None:
    import onnxruntime as ort
    s = args.size
    mp = s * s / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    def diff(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(times[a], times[b]))
    decon_stage = statistics.median(m.get("decontaminate", 0.0) for m in stage_ms) / 1000
    cols = list(times)
    lines = [
        BEGIN, "", f"## The default cut-out at {s}×{s} (`bench/bench_cut.py`)", "",
        f"Generated on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, onnxruntime {ort.__version__} "
        f"(CPU), default model isnet-general, skimage's astronaut resized to {s}×{s}, PNG in. "
        f"{args.rounds} rounds, contenders paired round by round (order rotated), medians; ratios "
        "are the median of each round's own ratio. *plain pipeline*: decode, resize, infer, bilinear "
        "up, PNG encode, in one process with a resident session and the same PNG writer as `cut` "
        "(*plain, Pillow's default PNG*: the same with `Image.save`'s default, zlib level 6). "
        "*cut*: `layermatte cut IN.png OUT.png` as a user runs it (a new process, warm daemon; "
        "decontamination on, the default). *daemon cut-out*: `Client.matte` returning the colours, "
        "without and with decontamination. Each call gets an input the model has not seen.", "",
        "| size | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols),
        f"| {s}×{s} | " + " | ".join(f"{med[k]:.2f} s" for k in cols) + " |", "",
        "| ratio | median over rounds | target |", "|---|---:|---|",
        f"| cut (default) / plain, Pillow's default PNG (the issue's plain pipeline) | "
        f"{paired('cut', PILLOW_PLAIN):.2f}× | ≤ 1.3× (issue 21) |",
        f"| cut (default) / plain pipeline with cut's own PNG writer | {paired('cut', 'plain pipeline'):.2f}× | |",
        f"| cut --no-decontaminate / plain pipeline with cut's own PNG writer | "
        f"{paired('cut --no-decontaminate', 'plain pipeline'):.2f}× | |",
        f"| cut / cut --no-decontaminate | {paired('cut', 'cut --no-decontaminate'):.2f}× | |",
        f"| daemon cut-out, decontaminated / daemon cut-out | "
        f"{paired('daemon cut-out, decontaminated', 'daemon cut-out'):.2f}× | |",
        "",
        f"Decontamination at full resolution: the daemon's own `decontaminate` stage "
        f"{decon_stage:.2f} s ({decon_stage / mp:.3f} s/MP); decontaminated minus plain daemon cut-out "
        f"{diff('daemon cut-out, decontaminated', 'daemon cut-out'):.2f} s "
        f"({diff('daemon cut-out, decontaminated', 'daemon cut-out') / mp:.3f} s/MP), medians over rounds. "
        "Target ≤ 0.1 s/MP on 2 cores (issue 21).", "",
        "Which plain pipeline the 1.3× target is against: issue 21 measured its plain pipeline "
        "(decode, resize, infer, bilinear up, PNG encode) at 9.3 s beside `cut --no-decontaminate` "
        "at 8.1 s, when `cut` wrote PNGs with Pillow's defaults: its encode was a standard one, no "
        "faster than that; and it asks `cut` to choose its PNG encoding for speed. It also allows decontamination 0.1 s/MP, "
        f"{0.1 * mp:.1f} s at this size: more than 0.3× a plain pipeline that shares cut's faster "
        f"writer ({0.3 * med['plain pipeline']:.2f} s here), so that row cannot be under 1.3× "
        "whenever decontamination uses the budget the issue gives it. It is shown as what "
        "decontamination and the separate process cost beside a writer as fast as ours.", "",
        f"PNG encoding of that cut-out ({s}×{s} RGBA, straight colours kept under alpha 0), "
        f"median of {args.png_rounds} interleaved rounds:", "",
        "| encoder | time | size | vs Pillow's default |", "|---|---:|---:|---:|",
    ]
    base = "Pillow level 6 (Pillow's default)"
    for name, ts in png.items():
        t = statistics.median(ts)
        lines.append(f"| {name} | {t:.2f} s | {size[name] / 1e6:.2f} MB | "
                     f"{t / statistics.median(png[base]):.2f}× time, {size[name] / size[base]:.2f}× bytes |")
    lines += ["", "`cut`, `batch` and every 8-bit PNG the CLI writes use Pillow level 1 with zlib's Z_RLE "
              "strategy (`imageio.PNG_OPTIONS`): after PNG's row filters a photo's bytes are mostly short "
              "runs, which Z_RLE finds at the speed of level 1; longer matches (level 6's search) save a "
              "few percent more. 16-bit PNGs go through OpenCV's writer as before.", "", END]
    section = "\n".join(lines)
    text = args.out.read_text() if args.out.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
