"""`layermatte batch INPUT OUTPUT --ray [ADDRESS]`: the batch on a Ray cluster (Ray Data).

One streamed dataset, three stages:
  1. read (tasks): batch.process_image reads and prepares each image (its MatteFn stops
     it before anything is written); pipeline.model_input makes the model's input;
  2. infer (actor pool, map_batches with a callable class): each actor loads the model
     once through the catalogue (sha256-verified; fetched into the node's cache only if
     missing; LAYERMATTE_CACHE may point at shared storage) and keeps it resident; a GPU
     per actor when the cluster has GPUs, CPU actors otherwise. No model in task args;
  3. finish (tasks): batch.process_image with a MatteFn running pipeline.run on the
     actor's coarse matte (the daemon's re-refine path): refinement, encoding, atomic write.
Existing outputs are skipped unless force; a failing image is reported, never fatal.

Paths: local folders, fully (multi-node: shared storage at the same path everywhere).
Also URLs pyarrow.fs knows (s3://, gs://, hdfs://, file://), else fsspec's (backend
installed): listed on the driver, each image copied to a local temp file and its output
uploaded (object stores publish an object only when complete; others: temp name + move).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np

from . import batch
from ..imaging import formats, pipeline
from .batch import Job, Outcome, Summary
from ..transport.client import MatteReply
from ..errors import InvalidInput, LayermatteError

RAY_REQUIREMENT = "ray[data]>=2.50,<2.61"   # as the extra in pyproject.toml
INSTALL_HINT = ("--ray needs Ray, an optional extra: pip install 'layermatte[ray]' (that is "
                f"{RAY_REQUIREMENT}) in this environment and on every node of the cluster")
ACTOR_MEMORY = 2 * 2**30       # one ISNet CPU actor peaks at about 1.4 GiB RSS at 1024²
MAX_ACTOR_THREADS = 4          # onnxruntime threads per CPU actor; more actors beyond that
OBJECT_STORES = ("s3", "gcs", "abfs")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LayermatteError(INSTALL_HINT) from None
    return ray


def _is_url(p) -> bool:
    return "://" in str(p)


@lru_cache(maxsize=16)
def _fs(root: str):
    """(pyarrow filesystem, path) for a local folder or a URL; cached per process."""
    from pyarrow import fs as pafs
    if not _is_url(root):
        return pafs.LocalFileSystem(), os.path.abspath(root)
    try:
        return pafs.FileSystem.from_uri(root)
    except ValueError:                       # a scheme pyarrow lacks: fsspec's
        import fsspec
        fs, path = fsspec.core.url_to_fs(root)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _path(root: str, rel: str = "") -> str:
    return _fs(root)[1].rstrip("/") + (f"/{rel}" if rel else "")


def _files(root: str) -> dict[str, object]:
    """Relative path -> FileInfo of every file under root (one recursive listing)."""
    from pyarrow import fs as pafs
    base = _path(root)
    sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return {f.path[len(base) + 1:]: f for f in _fs(root)[0].get_file_info(sel)
            if f.type == pafs.FileType.File}


def plan(src_root: str, out_root: str, fmt: str) -> list[tuple[str, str]]:
    """(source, output) relative paths: batch.plan for local folders; its rules (hidden
    files, suffixes, output folder left out, clashing names) for URLs."""
    if not _is_url(src_root) and not _is_url(out_root):
        return [(j.relative.as_posix(), j.output.relative_to(out_root).as_posix())
                for j in batch.plan(Path(src_root), Path(out_root), fmt)]
    from pyarrow import fs as pafs
    if _fs(src_root)[0].get_file_info(_path(src_root)).type != pafs.FileType.Directory:
        raise InvalidInput(f"{src_root}: no such folder")
    if src_root.rstrip("/") == out_root.rstrip("/"):
        raise InvalidInput("OUTPUT_DIR must differ from INPUT_DIR")
    inside = _path(out_root) + "/" if type(_fs(out_root)[0]) is type(_fs(src_root)[0]) else "\0"
    rels = sorted(r for r, f in _files(src_root).items()
                  if not any(part.startswith(".") for part in r.split("/"))
                  and PurePosixPath(r).suffix.lower() in batch.IMAGE_SUFFIXES
                  and not f.path.startswith(inside))
    suffix = batch.OUTPUT_SUFFIX[fmt]
    plain = {r: PurePosixPath(r).with_suffix(suffix).as_posix() for r in rels}
    taken = Counter(plain.values())
    return [(r, o if taken[o] == 1 else r + suffix) for r, o in plain.items()]


@contextmanager
def _job(row: dict, src_root: str, out_root: str, data: bytes):
    """A batch.Job on local paths: the files themselves for local folders; for URLs a
    temp copy of the source (`data`) and a temp output, uploaded once complete."""
    rel, out_rel = row["rel"], row["out_rel"]
    with tempfile.TemporaryDirectory(prefix="layermatte-ray-") as tmp:
        src, out = Path(src_root) / rel, Path(out_root) / out_rel
        if _is_url(src_root):
            src = Path(tmp) / PurePosixPath(rel).name
            src.write_bytes(data)
        if _is_url(out_root):
            out = Path(tmp) / "out" / PurePosixPath(out_rel).name
        yield Job(src, out, Path(rel))
        if _is_url(out_root) and out.exists():
            fs, dest = _fs(out_root)[0], _path(out_root, out_rel)
            folder, atomic = dest.rsplit("/", 1)[0], fs.type_name in OBJECT_STORES
            target = dest if atomic else f"{folder}/.{out.name}.{os.getpid()}.part"
            if not atomic:
                fs.create_dir(folder, recursive=True)
            with fs.open_output_stream(target) as f:
                f.write(out.read_bytes())
            if not atomic:
                fs.move(target, dest)


def _describe(e: Exception, job: Job | None = None, src_root: str = "") -> str:
    msg = str(e) if isinstance(e, LayermatteError) else f"{type(e).__name__}: {e}"
    if job is not None and _is_url(src_root):  # name the URL, not the temp copy
        msg = msg.replace(str(job.source), f"{src_root.rstrip('/')}/{job.relative.as_posix()}")
    return msg


class _Captured(Exception):
    """Carries the pixels process_image hands to its MatteFn out of it, before any write."""


def _capture(pixels, options, progress=None):
    raise _Captured(pixels)


def _pixel_format(pixels: np.ndarray) -> formats.PixelFormat:
    return formats.lookup(formats.code_for_array(pixels))


def _read(row: dict, *, src_root, out_root, fmt, options, spec) -> dict:
    t0, job, data = time.perf_counter(), None, b""
    row = dict(row, tensor=b"", data=b"", error="", view_shown=b"", view_alpha=b"", view_backdrop=b"")
    try:
        if _is_url(src_root):
            with _fs(src_root)[0].open_input_file(_path(src_root, row["rel"])) as f:
                data = f.readall()
        with _job(row, src_root, out_root, data) as job:
            try:
                batch.process_image(job, _capture, fmt, options)
                raise LayermatteError("process_image did not call its MatteFn")
            except _Captured as c:
                pixels = c.args[0]
        # model_input reads only the model's spec: no weights needed here
        fed = pipeline.model_input(pixels, _pixel_format(pixels), spec,
                                   layer_alpha=not options.ignore_layer_alpha)
        row.update(tensor=fed.tensor.tobytes(), padded=fed.padded,
                   frame=list(fed.frame) if fed.frame else None, data=data)
        if fed.view is not None:   # a cut-out: what the actor needs for another look (refeed.py)
            row.update(view_shown=fed.view.shown.tobytes(), view_alpha=fed.view.alpha.tobytes(),
                       view_backdrop=np.float64(fed.view.backdrop).tobytes())
    except Exception as e:
        row["error"] = _describe(e, job, src_root)
    row["seconds"] = time.perf_counter() - t0
    return row


class _Infer:
    """One actor: the model resident; tensor in, coarse matte (0..1 float32) out."""

    def __init__(self, spec, cache: str | None, threads: int):
        from ..models.catalog import Catalog
        from ..models.engine import Engine
        catalog = Catalog(cache=Path(cache) if cache else None, extra_entries=[spec])
        catalog.pull(spec.id, show_progress=False)   # verified by sha256; fetched only if missing
        self.model, _ = Engine(catalog, threads=threads).load(spec.id)   # verified again

    def __call__(self, table):
        import pyarrow as pa
        rows, s = table.to_pylist(), self.model.spec.preprocess.input_size
        for row in rows:
            t0, coarse = time.perf_counter(), np.zeros((0, 0), np.float32)
            if not row["error"]:
                try:
                    tensor = np.frombuffer(row.pop("tensor"), np.float32).reshape(1, 3, s, s)
                    coarse = self._infer(tensor)
                    if row.get("view_alpha"):
                        coarse = self._second_look(row, coarse, s)
                except Exception as e:
                    row["error"] = _describe(e)
            for k in ("tensor", "view_shown", "view_alpha", "view_backdrop"):
                row.pop(k, None)
            row.update(coarse=coarse.tobytes(), coarse_h=coarse.shape[0], coarse_w=coarse.shape[1],
                       seconds=row["seconds"] + time.perf_counter() - t0)
        return pa.Table.from_pylist(rows)

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        return pipeline.postprocess(self.model.run(tensor), self.model)

    def _second_look(self, row: dict, raw: np.ndarray, s: int) -> np.ndarray:
        """The daemon's rule for cut-outs (refeed.second_look), on the model's
        grid: the row's matte is then no longer in the padded input's frame."""
        from ..imaging import backdrop, refeed
        view = refeed.CutOutView(np.frombuffer(row["view_shown"], np.float32).reshape(s, s, 3),
                                 np.frombuffer(row["view_alpha"], np.float32).reshape(s, s),
                                 tuple(float(v) for v in np.frombuffer(row["view_backdrop"], np.float64)))
        row["padded"] = False
        return refeed.second_look(backdrop.unpad(raw), view, self.model.spec.preprocess, self._infer)


def _finish(row: dict, *, src_root, out_root, fmt, options, input_size) -> dict:
    import ray
    t0, job, error = time.perf_counter(), None, row["error"]
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    coarse = np.frombuffer(row["coarse"], np.float32).reshape(row["coarse_h"], row["coarse_w"])
    if coarse.size and (row.get("padded") or row.get("frame")):   # fed with a margin, or upright
        from ..imaging import backdrop
        frame = tuple(row["frame"]) if row.get("frame") else None
        coarse = np.ascontiguousarray(backdrop.to_layer(coarse, bool(row.get("padded")), frame))

    def matte(pixels, opts, progress=None) -> MatteReply:
        f = _pixel_format(pixels)   # the guide on the model's input grid, as pipeline.run makes it
        c = pipeline.Coarse(coarse, pipeline.low_res(pixels, f, input_size, input_size,
                                                     layer_alpha=not opts.ignore_layer_alpha))
        r = pipeline.run(pixels, f, opts, coarse=c, threads=threads)
        return MatteReply(r.matte, r.foreground)
    if not error:
        try:
            with _job(row, src_root, out_root, row["data"]) as job:
                batch.process_image(job, matte, fmt, options)
        except Exception as e:
            error = _describe(e, job, src_root)
    return {"rel": row["rel"], "out_rel": row["out_rel"], "status": "failed" if error else "done",
            "error": error, "seconds": row["seconds"] + time.perf_counter() - t0}


def _layout(ray) -> tuple[dict, int, int, str]:
    """(actor resources, pool size, onnxruntime threads, description) for this cluster:
    a GPU per actor; else actors of up to 4 threads, a CPU per node left for tasks."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = [int(n.get("CPU", 0)) for n in nodes], int(sum(n.get("GPU", 0) for n in nodes))
    if sum(cpus) < 2:
        raise InvalidInput("the Ray cluster needs at least 2 CPUs (a model actor, reading and refining)")
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1}, gpus, 1, f"{len(nodes)} nodes, {gpus} GPU actors"
    threads = max(1, min(MAX_ACTOR_THREADS, max(cpus) - 1))
    n = max(1, sum(min(max(0, c - 1) // threads, int(node.get("memory", 0) // ACTOR_MEMORY))
                   for c, node in zip(cpus, nodes)))
    res = {"num_cpus": threads, "memory": ACTOR_MEMORY}
    if not any(node.get("memory", 0) >= ACTOR_MEMORY for node in nodes):
        res.pop("memory")
    return res, n, threads, f"{len(nodes)} nodes, up to {n} CPU actors x {threads} threads"


def run(src_root: str, out_root: str, fmt: str = "png", options=pipeline.MatteOptions(), *,
        address: str | None = None, model_id: str = "", force: bool = False,
        on_outcome=None, verbose: bool = False) -> tuple[Summary, str]:
    """Every image under src_root through Ray; returns (summary, cluster layout).
    address: as ray.init takes it; None: a new local instance (unless already connected).
    Errors that stop the job go to summary.aborted. verbose: workers' logs are shown."""
    ray = _ray()
    from ..models.catalog import Catalog
    src_root, out_root = (r if _is_url(r) else os.path.abspath(r) for r in (src_root, out_root))
    pairs = plan(src_root, out_root, fmt)
    existing = set() if force else set(_files(out_root))
    summary, todo, layout = Summary(), [], "Ray not started: nothing to do"

    def record(rel: str, out_rel: str, status: str, error: str = "", seconds: float = 0.0) -> None:
        o = Outcome(Job(Path(src_root) / rel, Path(out_root) / out_rel, Path(rel)), status, error, seconds)
        summary.outcomes.append(o)
        if on_outcome:
            on_outcome(o, len(pairs))
    for rel, out_rel in pairs:
        if out_rel in existing:
            record(rel, out_rel, "skipped")
        else:
            todo.append({"rel": rel, "out_rel": out_rel})
    if not todo:
        return summary, layout
    spec = Catalog().get(model_id or None)
    if not _is_url(out_root):
        Path(out_root).mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        extra = {} if address else {"include_dashboard": False}
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose, **extra)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise LayermatteError(f"cannot connect to Ray at {address or 'a new local instance'}: {e}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)   # our progress and summary instead
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        actor_res, actors, threads, layout = _layout(ray)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.target_max_block_size = 2**20             # a block per image (rows are > 1 MiB): streamed
        ctx.op_resource_reservation_enabled = False   # else small clusters starve the finish tasks
        kw = dict(src_root=src_root, out_root=out_root, fmt=fmt, options=options)
        ds = (ray.data.from_items(todo, override_num_blocks=min(len(todo), 1000))
              .map(_read, fn_kwargs=dict(kw, spec=spec), num_cpus=1)
              .map_batches(_Infer, fn_constructor_args=(spec, os.environ.get("LAYERMATTE_CACHE"), threads),
                           compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
                           batch_size=1, batch_format="pyarrow", **actor_res)
              .map(_finish, fn_kwargs=dict(kw, input_size=spec.preprocess.input_size), num_cpus=1))
        for r in ds.iter_rows():
            record(r["rel"], r["out_rel"], r["status"], r["error"], r["seconds"])
    except (KeyboardInterrupt, LayermatteError):
        raise
    except Exception as e:   # the job itself failed (cluster, model): stop, with its reason
        lines = [ln for ln in str(e).splitlines() if ln.strip()] or [repr(e)]
        summary.aborted = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])
    finally:
        if started:
            ray.shutdown()
    summary.not_run = len(pairs) - len(summary.outcomes)
    return summary, layout


def main(args, options) -> int:
    """The CLI: a progress bar on a terminal, failures, the summary; exit codes as batch."""
    from tqdm import tqdm
    bar, t0 = None, time.monotonic()

    def on_outcome(o: Outcome, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit="img", disable=not sys.stderr.isatty(), leave=False)
        bar.update(1)
    try:
        summary, layout = run(str(args.input_dir), str(args.output_dir), args.format, options,
                              address=args.ray or None, model_id=args.model, force=args.force,
                              on_outcome=on_outcome, verbose=args.verbose)
    finally:
        if bar is not None:
            bar.close()
    if not summary.outcomes and not summary.aborted:
        print(f"batch: no images under {args.input_dir}", file=sys.stderr)
        return 0
    for o in summary.failed:
        print(f"failed {o.job.relative}: {o.error}", file=sys.stderr)
    print(f"batch: {summary.line()} (of {len(summary.outcomes) + summary.not_run}) -> "
          f"{args.output_dir} [{layout}, {time.monotonic() - t0:.1f} s]", file=sys.stderr)
    if summary.aborted:
        print(f"layermatte: error: batch stopped: {summary.aborted}", file=sys.stderr)
        return 2
    return 3 if summary.failed else 0   # as cli.batch.EXIT_FAILURES
