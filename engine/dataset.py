"""Dataset runs: many images into one Parquet table, resumable, on N processes or a Ray cluster.

:func:`run_dataset` explains every image of a list with one configuration
(:class:`RunConfig`) and writes, under ``OUT``:

``explanations.parquet/``
    The table: a folder of Parquet part files (a ``pyarrow.dataset``; pandas,
    polars and DuckDB read it too), one row per image × explained class, or one
    ``failed`` row per image that could not be explained, with its one-line
    reason. Columns: ``$defs/parquet_row`` of the shipped JSON Schema
    (:mod:`eac.engine.dataset_schema`); masks are COCO RLE.
``summary.json``
    Counts, this run's failures, throughput, the settings.
``overlays/`` (only when asked)
    One overlay PNG per image and target.

Safe and resumable
------------------
Rows are written in small part files (:data:`DEFAULT_PART_IMAGES` images or
:data:`DEFAULT_PART_SECONDS` seconds of work each), each written under a hidden
temporary name and renamed into place, so a process killed at any moment
(SIGKILL included) leaves a readable table and loses only the images not yet
in a part. Running again on the same ``OUT`` skips every image already
explained with the same settings: the key is the image's name, the SHA-256 of
its bytes and :func:`settings_hash` of the settings that change results. Every
file gets its own rows: a file whose bytes were already explained under another
name gets a copy of those rows under its own name, without being explained
again. Failed images are tried again. At the end of a run the parts are compacted into one
file (duplicates of retried images dropped); :func:`read_table` reads the table
at any moment, without duplicates.

Where it runs
-------------
``workers=1``: in this process. ``workers=N``: N engine processes (``spawn``),
each creating its sessions once, with ONNX Runtime intra-op threads
``max(1, cores // N)``. ``ray=...``: Ray Data — a dataset of image paths,
``map_batches`` through an actor pool whose actors create the sessions once
(one GPU each on CUDA/TensorRT); the driver writes the table. Same
configuration and seed, same values, whichever way it runs.

Library code here never prints: it logs through :mod:`logging` and reports
progress through callbacks; the ``eac explain`` command draws the progress bar.
pyarrow (and ray) are imported only when a run needs them.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..kernels import rle
from .atomic import (
    TMP_PREFIX,  # hidden temporary files (pyarrow.dataset ignores names starting with ".")
    cannot_create_in,
)
from .atomic import fsync_dir as _fsync_dir
from .atomic import write_file as _write_atomic
from .concepts import DEFAULT_MAX_CONCEPTS
from .dataset_schema import SCHEMA_VERSION
from .distribution import install_hint
from .errors import ConfigError, EacError, ImageError
from .images import DEFAULT_MAX_PIXELS, to_rgb_uint8

log = logging.getLogger(__name__)

#: The table (a folder of Parquet part files), the summary and the overlays, under OUT.
TABLE_NAME = "explanations.parquet"
SUMMARY_NAME = "summary.json"
OVERLAY_DIR = "overlays"
#: Lock file that keeps two runs from writing the same OUT at once.
LOCK_NAME = ".eac-run.lock"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
#: Tag of a compacted part; its Parquet metadata lists the parts it replaces.
COMPACT_TAG = "compact"
MERGED_KEY = b"eac.merged"
#: A part file is written after this many images, or this many seconds after its first image.
DEFAULT_PART_IMAGES = 16
DEFAULT_PART_SECONDS = 10.0
#: Images queued per worker process (the rest wait in the driver).
IN_FLIGHT_PER_WORKER = 2
#: Hex digits of the settings hash.
SETTINGS_HASH_CHARS = 16
#: Settings that do not change results (left out of the hash).
UNHASHED_SETTINGS = ("batch_size",)
#: Environment variables that size numpy's BLAS / OpenMP thread pools (set for worker processes).
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: CPUs (= ONNX Runtime threads) of one Ray actor when --threads is not given.
DEFAULT_RAY_ACTOR_CPUS = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STAGES = ("concepts", "evaluations", "fit", "values")
PARQUET_HINT = f"--format parquet needs pyarrow: {install_hint('parquet')}"
RAY_HINT = f"--ray needs Ray Data: {install_hint('ray')}"
#: Columns that identify a row (the newest row of a key wins, ok before failed).
KEY_COLUMNS = ("image", "image_sha256", "settings_hash", "target_index")
_HASH_CHUNK = 1 << 22


# ---------------------------------------------------------------------- optional packages
def _pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or ConfigError with the install line."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(PARQUET_HINT) from exc
    return pa, pq


def _ray() -> Any:
    """The ``ray`` module with Ray Data, or ConfigError with the install line."""
    try:
        import ray
        import ray.data  # the extra must include Ray Data
    except ImportError as exc:
        raise ConfigError(RAY_HINT) from exc
    return ray


def arrow_schema() -> Any:
    """The ``pyarrow.Schema`` of the table (see ``$defs/parquet_row`` of the JSON Schema)."""
    pa, _ = _pyarrow()
    floats = pa.list_(pa.float64())
    return pa.schema([
        ("schema_version", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("image", pa.string()),
        ("image_sha256", pa.string()),
        ("settings_hash", pa.string()),
        ("target_index", pa.int32()),
        ("target", pa.int64()),
        ("label", pa.string()),
        ("probability", pa.float64()),
        ("method", pa.string()),
        ("value_type", pa.string()),
        ("settings", pa.string()),
        ("num_concepts", pa.int32()),
        ("values", floats),
        ("stderr", floats),
        ("ranking", pa.list_(pa.int32())),
        ("ties", pa.list_(pa.list_(pa.int32()))),
        ("concept_areas", pa.list_(pa.int64())),
        ("masks", pa.list_(pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())]))),
        ("frame", pa.string()),
        ("num_evaluations", pa.int64()),
        ("timings", pa.struct([(s, pa.float64()) for s in STAGES])),
        ("seconds", pa.float64()),
        ("insertion_auc", pa.float64()),
        ("deletion_auc", pa.float64()),
        ("info", pa.string()),
        ("provider", pa.string()),
        ("eac_version", pa.string()),
        ("worker", pa.string()),
        ("finished_at", pa.string()),
        ("overlay", pa.string()),
    ])


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RunConfig:
    """Everything an engine process needs to explain images (picklable; sent to workers and actors).

    Parameters
    ----------
    classifier : str
        Classifier folder (``eac export classifier`` / ``eac import-onnx``).
    concepts : {"superpixels", "slic", "grid"} or None
        SAM-free concepts (default superpixels when neither ``sam`` nor ``masks`` is given).
    n_segments : int, optional
        Superpixel / grid cell count.
    sam : str, optional
        SAM folder: concepts from SAM's automatic mask generator.
    sam_settings : dict
        :class:`~eac.engine.sam.SamSettings` fields.
    masks : str, optional
        One masks file used for every image.
    method : str
        Registered method name.
    options : dict
        Method options (e.g. from an evaluation budget).
    seed : int
    batch_size : int, optional
    target : tuple of str or int, optional
        Classes to explain (None: top-1).
    max_concepts, max_pixels : int
        Limits; an image beyond them is a failure row.
    metrics : bool
        Also compute insertion/deletion AUC.
    overlays : bool
        Render overlay PNGs (``OUT/overlays``).
    top_k : int
        Concepts drawn on an overlay.
    providers, threads, device_id, trt_fp16, trt_cache
        ONNX Runtime settings (:class:`~eac.engine.session.SessionOptions`).
    verify : bool
        Check model files against their manifests.
    """

    classifier: str
    concepts: str | None = None
    n_segments: int | None = None
    sam: str | None = None
    sam_settings: dict[str, Any] = field(default_factory=dict)
    masks: str | None = None
    method: str = "eac"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int | None = None
    target: tuple[str | int, ...] | None = None
    max_concepts: int = DEFAULT_MAX_CONCEPTS
    max_pixels: int = DEFAULT_MAX_PIXELS
    metrics: bool = False
    overlays: bool = False
    top_k: int = 5
    providers: str = "auto"
    threads: int | None = None
    device_id: int = 0
    trt_fp16: bool = False
    trt_cache: str | None = None
    verify: bool = True

    @property
    def concept_kind(self) -> str:
        """``"sam"``, ``"masks"``, ``"slic"`` or ``"grid"``."""
        if self.sam:
            return "sam"
        if self.masks:
            return "masks"
        kind = self.concepts or "superpixels"
        return "slic" if kind == "superpixels" else kind


def run_settings(config: RunConfig) -> dict[str, Any]:
    """The settings recorded with every row (and hashed for resuming).

    Models are identified by the SHA-256 of their files (from their manifests),
    not by their path, so moving a model folder does not invalidate a table.

    Raises
    ------
    ModelFolderError
        A model folder is missing or has no valid manifest.
    ExplainError, ConfigError
        Invalid method options or limits.
    """
    from .explanation import strict_json
    from .manifest import ClassifierManifest, SamManifest, file_sha256
    from .methods import get_method
    from .sources import DEFAULT_SEGMENTS

    kind = config.concept_kind
    n = DEFAULT_SEGMENTS if config.n_segments is None else int(config.n_segments)
    if kind in ("slic", "grid") and n > config.max_concepts:
        raise ConfigError(f"--n-segments {n} is above --max-concepts {config.max_concepts}: each concept costs a "
                          "mask in memory and evaluations; raise --max-concepts to allow it")
    manifest = ClassifierManifest.read(config.classifier)
    concepts: dict[str, Any] = {"source": kind}
    if kind == "sam":
        sam = SamManifest.read(config.sam)
        concepts.update(model=_model_id(config.sam, sam.files), **config.sam_settings)
    elif kind == "masks":
        if not Path(config.masks).is_file():
            raise ConfigError(f"{config.masks}: no such masks file")
        concepts["file_sha256"] = file_sha256(config.masks)
    else:
        concepts["n_segments"] = n
    method = get_method(config.method)(**config.options)
    return strict_json({
        "classifier": _model_id(config.classifier, manifest.files),
        "concepts": concepts,
        "method": config.method,
        "options": method.options,
        "seed": int(config.seed),
        "baseline": "black",
        "target": None if config.target is None else list(config.target),
        "max_concepts": int(config.max_concepts),
        "metrics": bool(config.metrics),
        "batch_size": config.batch_size,
    })


def _model_id(folder: str | os.PathLike, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"name": Path(folder).name, "sha256": {role: entry.get("sha256") for role, entry in sorted(files.items())}}


def settings_hash(settings: dict[str, Any]) -> str:
    """Hash of the settings that change results (:data:`SETTINGS_HASH_CHARS` hex digits)."""
    hashed = {k: v for k, v in settings.items() if k not in UNHASHED_SETTINGS}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SETTINGS_HASH_CHARS]


@dataclass(frozen=True)
class _Job:
    """What an engine process is given: the config, its threads and the run's constants."""

    config: RunConfig
    threads: int | None
    settings_json: str
    settings_hash: str
    eac_version: str


# ---------------------------------------------------------------------- one engine
@dataclass
class ImageResult:
    """The rows of one image (one per target, or one failure row) and its overlay PNGs.

    Attributes
    ----------
    image : str
    rows : list of dict
        Table rows (columns of :func:`arrow_schema`).
    overlays : list of (str, bytes)
        Overlay PNGs: path relative to OUT, encoded bytes.
    """

    image: str
    rows: list[dict[str, Any]]
    overlays: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["status"] == STATUS_OK for r in self.rows)

    @property
    def error(self) -> str | None:
        return next((r["error"] for r in self.rows if r["error"]), None)


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes to H×W×3 ``uint8`` RGB (as :func:`eac.engine.images.load_image` does).

    Raises
    ------
    ImageError
        Empty, corrupt or too large.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:
        raise ImageError(f"{name}: opencv cannot decode it (too large or corrupt: "
                         f"{str(exc).strip().splitlines()[-1]})") from exc
    if decoded is None:
        raise ImageError(f"{name}: corrupt or unsupported image (opencv could not decode it)")
    h, w = decoded.shape[:2]
    if h * w > max_pixels:
        raise ImageError(f"{name}: {w}×{h} pixels is more than the limit of {max_pixels} (--max-pixels raises it)")
    return to_rgb_uint8(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), name=name)


class DatasetWorker:
    """One engine (:class:`~eac.engine.holder.EngineHolder`), created once, explaining image files into rows.

    Parameters
    ----------
    job : _Job
        The run's configuration and constants.
    """

    def __init__(self, job: _Job) -> None:
        from .holder import EngineHolder

        self.job = job
        self.config = job.config
        self.engine = EngineHolder(job.config, threads=job.threads)
        self.classifier, self.source, self.explainer = self.engine.classifier, self.engine.source, self.engine.explainer
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.target = self.engine.target

    def explain_file(self, path: str) -> ImageResult:
        """Explain one image file; every error becomes a failure row with a one-line reason."""
        start = time.perf_counter()
        sha = None
        try:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
            sha = hashlib.sha256(data).hexdigest()
            image = decode_image(data, path, self.config.max_pixels)
            explanation = self.engine.explain(image, self.target)
            overlays = self._overlays(explanation, path, sha) if self.config.overlays else []
        except EacError as exc:
            return self._failure(path, sha, _first_line(exc), start)
        except Exception as exc:  # one image must never end the run
            log.debug("unexpected error on %s", path, exc_info=True)
            return self._failure(path, sha, f"unexpected {type(exc).__name__}: {_first_line(exc)}", start)
        rows = self._rows(explanation, path, sha, time.perf_counter() - start, [name for name, _ in overlays])
        if explanation.num_concepts == 0:
            for row in rows:
                row.update(status=STATUS_FAILED, error=f"no concepts; {_zero_concepts_hint(self.config)}")
        return ImageResult(path, rows, overlays)

    def _base(self, path: str, sha: str | None) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "image": path, "image_sha256": sha,
                "settings_hash": self.job.settings_hash, "method": self.config.method,
                "settings": self.job.settings_json, "eac_version": self.job.eac_version, "worker": self.name,
                "finished_at": _now()}

    def _failure(self, path: str, sha: str | None, error: str, start: float) -> ImageResult:
        prefix = f"{path}: "
        error = error[len(prefix):] if error.startswith(prefix) else error  # the row names the image
        row = {name: None for name in _COLUMNS}
        row.update(self._base(path, sha), status=STATUS_FAILED, error=error, target_index=0,
                   seconds=time.perf_counter() - start)
        return ImageResult(path, [row])

    def _rows(self, expl: Any, path: str, sha: str, seconds: float, overlays: list[str]) -> list[dict[str, Any]]:
        from .explanation import strict_json

        masks = rle.encode_masks(expl.masks)
        areas = [int(a) for a in expl.masks.reshape(expl.num_concepts, -1).sum(axis=1)]
        values = expl.values_2d
        stderr = expl.stderr_2d
        ranking = np.argsort(-values, axis=-1, kind="stable")
        info = {k: v for k, v in expl.info.items() if k != "heatmaps"}
        metrics = info.get("metrics") or {}
        timings = {s: _finite(expl.timings.get(s)) for s in STAGES}
        frame = None if expl.frame is None else json.dumps(expl.frame.to_dict())
        info_json = json.dumps(strict_json(info), allow_nan=False)
        rows = []
        for t, target in enumerate(expl.targets):
            row = self._base(path, sha)
            row.update(
                status=STATUS_OK, error=None, target_index=t, target=int(target),
                label=expl.labels[t] if expl.labels else None,
                probability=_finite(expl.probabilities[t]), value_type=expl.value_type,
                num_concepts=expl.num_concepts, values=[_finite(v) for v in values[t]],
                stderr=None if stderr is None else [_finite(v) for v in stderr[t]],
                ranking=[int(i) for i in ranking[t]], ties=expl.ties if t == 0 else None,
                concept_areas=areas, masks=masks, frame=frame, num_evaluations=int(expl.num_evaluations),
                timings=timings, seconds=seconds, insertion_auc=_finite(metrics.get("insertion_auc")),
                deletion_auc=_finite(metrics.get("deletion_auc")), info=info_json, provider=expl.provider,
                overlay=overlays[t] if t < len(overlays) else None,
            )
            rows.append(row)
        return rows

    def _overlays(self, expl: Any, path: str, sha: str) -> list[tuple[str, bytes]]:
        from .render.overlay import render_overlay

        if expl.crop is None:
            return []
        out = []
        stem = Path(path).stem
        for t in range(len(expl.targets)):
            ok, buf = cv2.imencode(".png", render_overlay(expl, top_k=self.config.top_k, target_index=t))
            if not ok:
                raise ImageError(f"{path}: opencv could not encode the overlay PNG")
            suffix = "" if t == 0 else f"-target{t}"
            out.append((f"{OVERLAY_DIR}/{stem}-{sha[:12]}{suffix}.png", buf.tobytes()))
        return out


_COLUMNS = ("schema_version", "status", "error", "image", "image_sha256", "settings_hash", "target_index",
            "target", "label", "probability", "method", "value_type", "settings", "num_concepts", "values",
            "stderr", "ranking", "ties", "concept_areas", "masks", "frame", "num_evaluations", "timings",
            "seconds", "insertion_auc", "deletion_auc", "info", "provider", "eac_version", "worker",
            "finished_at", "overlay")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _zero_concepts_hint(config: RunConfig) -> str:
    if config.sam:
        return ("SAM kept no mask: lower --pred-iou-thresh / --stability-score-thresh (e.g. 0.7 / 0.8) or raise "
                "--points-per-side, or use --concepts superpixels")
    return "the concept source gave no mask: check the masks file, or use --concepts superpixels"


# ---------------------------------------------------------------------- worker processes
# Set only inside spawned worker processes (the pool initializer); never in the driver.
_PROCESS_WORKER: DatasetWorker | None = None
_PROCESS_ERROR: EacError | None = None


def _init_process(job: _Job) -> None:
    global _PROCESS_WORKER, _PROCESS_ERROR
    try:
        _PROCESS_WORKER = DatasetWorker(job)
    except EacError as exc:
        _PROCESS_ERROR = exc
    except Exception as exc:  # reported to the driver as one line
        _PROCESS_ERROR = EacError(f"the engine could not start in a worker process: "
                                  f"{type(exc).__name__}: {_first_line(exc)}")


def _process_image(path: str) -> ImageResult:
    if _PROCESS_WORKER is None:
        raise _PROCESS_ERROR or EacError("worker process not initialised")
    return _PROCESS_WORKER.explain_file(path)


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _local_results(paths: list[str], job: _Job) -> Iterator[ImageResult]:
    worker = DatasetWorker(job)
    for path in paths:
        yield worker.explain_file(path)


@contextmanager
def _child_thread_env(threads: int | None) -> Iterator[None]:
    """Cap the BLAS/OpenMP thread pools of processes started inside the block at ``threads``.

    numpy's BLAS reads these variables when it loads, so they must be in the
    environment a worker process starts with; variables the user has set are
    left alone, and everything is restored when the block ends. (Measured on
    the 2-core machine under load: two workers with OpenBLAS's default two
    threads each spent 6× longer in the values stage.)
    """
    if threads is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _process_results(paths: list[str], job: _Job, workers: int) -> Iterator[ImageResult]:
    context = multiprocessing.get_context("spawn")
    pending: set[cf.Future] = set()
    queue = iter(paths)
    with _child_thread_env(job.threads), cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_process, initargs=(job,)) as pool:
        try:
            for path in queue:
                pending.add(pool.submit(_process_image, path))
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    break
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    try:
                        result = future.result()
                    except cf.process.BrokenProcessPool as exc:
                        raise EacError("a worker process died (out of memory?); the finished images are in the "
                                       "table, run the same command again to go on") from exc
                    yield result
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(_process_image, nxt))
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------------- Ray
class RayExplainer:
    """Ray Data actor: creates one engine in ``__init__``, explains a batch of image paths per call.

    Returns a ``pyarrow.Table`` with the table's columns plus ``_overlays``
    (overlay PNGs, on the first row of each image) and ``_result`` (which rows
    belong to one image).
    """

    def __init__(self, job: _Job) -> None:
        self.worker = DatasetWorker(job)

    def __call__(self, batch: Any) -> Any:
        pa, _ = _pyarrow()
        paths = batch["path"]
        paths = paths.to_pylist() if hasattr(paths, "to_pylist") else [str(p) for p in paths]
        rows = []
        for path in paths:
            result = self.worker.explain_file(path)
            tag = secrets.token_hex(8)
            for i, row in enumerate(result.rows):
                rows.append({**row, "_result": tag,
                             "_overlays": [{"name": n, "png": b} for n, b in result.overlays] if i == 0 else None})
        return pa.Table.from_pylist(rows, schema=_ray_schema())


def _ray_schema() -> Any:
    pa, _ = _pyarrow()
    overlay = pa.list_(pa.struct([("name", pa.string()), ("png", pa.binary())]))
    return arrow_schema().append(pa.field("_result", pa.string())).append(pa.field("_overlays", overlay))


def _ray_results(paths: list[str], job: _Job, address: str, actors: int | None,
                 run_info: dict[str, Any]) -> Iterator[ImageResult]:
    from .session import GPU_PROVIDERS, resolve_providers

    ray = _ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=cpu_cores(), include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        started = True
    context = ray.data.DataContext.get_current()
    progress_bars = context.enable_progress_bars
    if started:  # our own Ray: no progress bars of its own (restored below); a caller's Ray is left alone
        context.enable_progress_bars = False
    try:
        gpu = resolve_providers(job.config.providers)[0] in GPU_PROVIDERS
        cpus = job.threads or DEFAULT_RAY_ACTOR_CPUS
        resources = ray.cluster_resources()
        if actors is None:
            actors = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1)) // cpus
        actors = max(1, actors)
        run_info.update(workers=actors, threads_per_worker=cpus)
        # ONNX Runtime threads = the actor's CPUs; each GPU actor sees its one GPU as device 0
        job = replace(job, threads=cpus, config=replace(job.config, device_id=0) if gpu else job.config)
        log.info("Ray: %d actors, %d CPUs%s each", actors, cpus, " and 1 GPU" if gpu else "")
        ds = ray.data.from_items([{"path": p} for p in paths])
        ds = ds.map_batches(RayExplainer, fn_constructor_kwargs={"job": job}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
                            num_gpus=1 if gpu else 0)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from _results_of_batch(batch)
    finally:
        if started:
            context.enable_progress_bars = progress_bars
            ray.shutdown()


def _results_of_batch(batch: Any) -> Iterator[ImageResult]:
    overlays_col = batch.column("_overlays").to_pylist()
    tags = batch.column("_result").to_pylist()
    rows = batch.drop_columns(["_result", "_overlays"]).to_pylist()
    groups: dict[str, ImageResult] = {}
    for tag, row, overlays in zip(tags, rows, overlays_col, strict=True):
        result = groups.setdefault(tag, ImageResult(row["image"], []))
        result.rows.append(row)
        if overlays:
            result.overlays.extend((o["name"], o["png"]) for o in overlays)
    yield from groups.values()


# ---------------------------------------------------------------------- the table on disk
def table_path(out: str | os.PathLike) -> Path:
    """The table folder of a run's output folder."""
    return Path(out) / TABLE_NAME


def _part_name(run_id: str, tag: str) -> str:
    return f"{PART_PREFIX}{time.time_ns():020d}-{run_id}-{tag}{PART_SUFFIX}"


def part_files(folder: str | os.PathLike) -> list[Path]:
    """The table's visible part files, oldest first, without those a compacted part replaces."""
    _, pq = _pyarrow()
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir()
                   if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX))
    replaced: set[str] = set()
    for p in files:
        if COMPACT_TAG in p.name:
            metadata = pq.read_schema(p).metadata or {}
            replaced.update(json.loads(metadata.get(MERGED_KEY, b"[]")))
    return [p for p in files if p.name not in replaced]


def _winners(files: list[Path]) -> list[Any]:
    """Per file, the row indices to keep: the newest row of each key, ok rows before failed ones.

    A failure is also dropped when a later row exists for the same image path, settings and
    target with other bytes: the file was repaired or replaced and tried again.
    """
    _, pq = _pyarrow()
    best: dict[tuple, tuple] = {}
    newest: dict[tuple, tuple] = {}  # (image, settings_hash, target_index) → its latest row's stamp
    for f, path in enumerate(files):
        keys = pq.read_table(path, columns=[*KEY_COLUMNS, "status", "finished_at"]).to_pylist()
        for r, row in enumerate(keys):
            key = tuple(row[c] for c in KEY_COLUMNS)
            stamp = (row["finished_at"] or "", f, r)
            rank = (row["status"] == STATUS_OK, *stamp)
            if key not in best or rank > best[key]:
                best[key] = rank
            path_key = _path_key(row)
            if path_key not in newest or stamp > newest[path_key]:
                newest[path_key] = stamp
    keep: list[list[int]] = [[] for _ in files]
    for key, (ok, *stamp) in best.items():
        if not ok and newest[_path_key(dict(zip(KEY_COLUMNS, key, strict=True)))] != tuple(stamp):
            continue
        keep[stamp[1]].append(stamp[2])
    return [sorted(k) for k in keep]


def _path_key(row: dict[str, Any]) -> tuple:
    """A row's image path, settings and target: its key without the image's bytes."""
    return tuple(row[c] for c in KEY_COLUMNS if c != "image_sha256")


def read_table(out: str | os.PathLike, columns: Sequence[str] | None = None) -> Any:
    """The table of a run as one ``pyarrow.Table``, at any moment (also while a run writes it).

    Rows of images tried again (a failure, then a later result) and parts a
    compaction has just replaced are left out. ``pyarrow.dataset.dataset(
    table_path(out))`` reads the same files without that clean-up.

    Parameters
    ----------
    out : path-like
        The run's output folder.
    columns : sequence of str, optional

    Returns
    -------
    pyarrow.Table
    """
    pa, pq = _pyarrow()
    files = part_files(table_path(out))
    schema = arrow_schema()
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    if not files:
        return schema.empty_table()
    tables = [pq.read_table(path, columns=list(columns) if columns else None).take(keep)
              for path, keep in zip(files, _winners(files), strict=True)]
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])


def _done_images(folder: Path, settings_hash_: str) -> dict[str, set[str]]:
    """Images already explained (status ok) with these settings: SHA-256 of the bytes → the names it has rows of."""
    import pyarrow.compute as pc

    _, pq = _pyarrow()
    done: dict[str, set[str]] = {}
    for path in part_files(folder):
        table = pq.read_table(path, columns=["image", "image_sha256", "settings_hash", "status"])
        mask = pc.and_(pc.equal(table["settings_hash"], settings_hash_), pc.equal(table["status"], STATUS_OK))
        kept = table.filter(mask)
        for image, sha in zip(kept["image"].to_pylist(), kept["image_sha256"].to_pylist()):
            if sha:
                done.setdefault(sha, set()).add(image)
    return done


def _copied_results(out: Path, settings_hash_: str, copies: dict[str, str]) -> list[ImageResult]:
    """Rows for files whose bytes were already explained under another name (``copies``: name → SHA-256).

    The values depend only on the bytes and the settings, so the rows of one name with those bytes
    are copied under the new name (with a new ``finished_at``) instead of explaining the image again.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_table(out)
    mask = pc.and_(pc.and_(pc.equal(table["settings_hash"], settings_hash_), pc.equal(table["status"], STATUS_OK)),
                   pc.is_in(table["image_sha256"], value_set=pa.array(sorted(set(copies.values())))))
    source: dict[str, tuple[str, list[dict[str, Any]]]] = {}  # sha → (the name copied from, its rows)
    for row in table.filter(mask).to_pylist():
        name, rows = source.setdefault(row["image_sha256"], (row["image"], []))
        if row["image"] == name:
            rows.append(row)
    finished = _now()
    results = []
    for image, sha in copies.items():
        rows = sorted(source[sha][1], key=lambda r: r["target_index"])
        results.append(ImageResult(image, [{**r, "image": image, "finished_at": finished} for r in rows]))
    return results


def _clean(folder: Path) -> None:
    """Remove temporary files of killed runs and parts a compaction replaced."""
    visible = set(part_files(folder))
    for path in folder.iterdir():
        stale_tmp = path.name.startswith(TMP_PREFIX)
        replaced = path.name.startswith(PART_PREFIX) and path.name.endswith(PART_SUFFIX) and path not in visible
        if stale_tmp or replaced:
            path.unlink(missing_ok=True)


def compact(out: str | os.PathLike) -> int:
    """Merge the table's parts into one file (newest row per key); returns the number of rows.

    Crash-safe: the merged file is renamed into place before the parts it
    replaces are deleted, and its metadata names them, so a reader (and the
    next run) ignores parts left by a crash between the two steps.
    """
    _, pq = _pyarrow()
    folder = table_path(out)
    files = part_files(folder)
    keep = _winners(files)
    total = sum(len(k) for k in keep)
    duplicates = sum(pq.read_metadata(p).num_rows for p in files) - total
    if len(files) <= 1 and not duplicates:
        return total
    schema = arrow_schema().with_metadata({MERGED_KEY: json.dumps([p.name for p in files]).encode()})

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for path, rows in zip(files, keep, strict=True):
                if rows:
                    table = pq.read_table(path).take(rows).select(schema.names).cast(arrow_schema())
                    writer.write_table(table.replace_schema_metadata(schema.metadata))

    _write_atomic(folder / _part_name(secrets.token_hex(4), COMPACT_TAG), write)
    for path in files:
        path.unlink(missing_ok=True)
    _fsync_dir(folder)
    return total


class _PartWriter:
    """Buffers finished images and writes them as part files (atomically) every few images or seconds."""

    def __init__(self, out: Path, run_id: str, part_images: int, part_seconds: float) -> None:
        self.out = out
        self.folder = table_path(out)
        self.run_id = run_id
        self.part_images = part_images
        self.part_seconds = part_seconds
        self.rows: list[dict[str, Any]] = []
        self.images = 0
        self.first = 0.0
        self.parts = 0

    def add(self, result: ImageResult) -> None:
        for name, png in result.overlays:
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(target, lambda tmp, data=png: tmp.write_bytes(data))
        if not self.images:
            self.first = time.monotonic()
        self.rows.extend(result.rows)
        self.images += 1
        if self.images >= self.part_images or time.monotonic() - self.first >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        pa, pq = _pyarrow()
        table = pa.Table.from_pylist(self.rows, schema=arrow_schema())
        self.parts += 1
        _write_atomic(self.folder / _part_name(self.run_id, f"{self.parts:06d}"),
                      lambda tmp: pq.write_table(table, tmp))
        log.debug("wrote part %d (%d rows)", self.parts, table.num_rows)
        self.rows, self.images = [], 0


class _RunLock:
    """An exclusive lock on OUT for the length of a run (released by the OS if the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self.handle: Any = None

    def __enter__(self) -> _RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            self.handle = open(self.path, "a+")
            return self
        while self.handle is None:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                raise ConfigError(f"{self.path.parent}: another eac run is writing there; wait for it or give "
                                  "another --out") from exc
            # The run that held the lock removes the file before releasing it (see __exit__): locking a file
            # it has just removed would lock nothing, so open the live one again.
            if _same_file(handle, self.path):
                self.handle = handle
            else:
                handle.close()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.path.unlink(missing_ok=True)  # still locked: no other run can be holding this file
        finally:
            self.handle.close()
            self.handle = None


def _same_file(handle: Any, path: Path) -> bool:
    """Whether the open ``handle`` is the file now at ``path``."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


# ---------------------------------------------------------------------- the run
def _sha_or_none(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; give a folder path for the output")
    try:
        table_path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    reason = cannot_create_in(out)
    if reason is not None:
        raise ConfigError(f"{out}: cannot write there: nothing can be created in it ({reason}); "
                          "give another output folder")


def run_dataset(
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: RunConfig,
    *,
    workers: int = 1,
    ray: str | None = None,
    ray_actors: int | None = None,
    part_images: int = DEFAULT_PART_IMAGES,
    part_seconds: float = DEFAULT_PART_SECONDS,
    on_plan: Callable[[int, int], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> dict[str, Any]:
    """Explain image files into ``out``'s table, skipping those already done; see the module docs.

    Parameters
    ----------
    images : sequence of path-like
        Image files, in order.
    out : path-like
        Output folder (created); the table is ``out/explanations.parquet``.
    config : RunConfig
    workers : int
        Engine processes on this machine (1: this process). Ignored with ``ray``.
    ray : str, optional
        Run on Ray Data: ``""`` starts a local Ray, anything else is the
        address of a cluster to join (``"auto"``, ``"ray://host:10001"``...).
        A Ray already initialised by the caller is used as it is.
    ray_actors : int, optional
        Actors of the pool (default: one per GPU on CUDA/TensorRT, else the
        cluster's CPUs divided by each actor's threads).
    part_images : int
        Images per part file.
    part_seconds : float
        Longest time finished images wait in memory before a part is written.
    on_plan : callable(images, to_do), optional
        Called once before the work starts; ``to_do`` counts the images that will be explained
        (not those already in the table, nor those whose bytes are, whose rows are copied).
    on_result : callable(ImageResult), optional
        Called in this process after each image explained.

    Returns
    -------
    dict
        The summary (also written to ``out/summary.json``).

    Raises
    ------
    ConfigError
        pyarrow (or ray) missing, invalid settings, an output folder that
        cannot be written, or another run writing there.
    EacError
        The engine cannot start (models, providers), or a worker process died.
    """
    _pyarrow()
    if ray is not None:
        _ray()  # missing Ray Data is said before the output folder is touched
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if part_images < 1 or not part_seconds > 0:
        raise ConfigError("part_images must be at least 1 and part_seconds positive")
    from .manifest import eac_version
    from .session import Runtime, SessionOptions

    started = time.time()
    started_at = _now()
    Runtime.from_options(SessionOptions(providers=config.providers))  # an unavailable provider fails now
    settings = run_settings(config)
    key = settings_hash(settings)
    mode = "ray" if ray is not None else "workers" if workers > 1 else "local"
    threads = config.threads
    if mode == "workers" and threads is None:
        threads = max(1, cpu_cores() // workers)
    job = _Job(config, threads, json.dumps(settings, sort_keys=True, allow_nan=False), key, eac_version())
    out = Path(out)
    _check_out(out)
    counts = {"images": len(images), "skipped": 0, "reused": 0, "explained": 0, "failed": 0, "rows": 0}
    failures: list[dict[str, str]] = []
    interrupted = True
    run_info: dict[str, Any] = {"workers": workers if mode == "workers" else 1, "threads_per_worker": threads}
    with _RunLock(out):
        folder = table_path(out)
        _clean(folder)
        done = _done_images(folder, key)
        todo = []
        copies: dict[str, str] = {}  # a new name of bytes already explained → their SHA-256
        for path in images:
            sha = _sha_or_none(Path(path))
            names = done.get(sha, set()) if sha is not None else set()
            if str(path) in names:
                counts["skipped"] += 1
            elif names:
                copies[str(path)] = sha
            else:
                todo.append(str(path))
        if on_plan is not None:
            on_plan(len(images), len(todo))
        log.info("%d images, %d already done, %d copied, %s mode", len(images), counts["skipped"], len(copies),
                 mode)
        writer = _PartWriter(out, secrets.token_hex(4), part_images, part_seconds)
        work_start = time.perf_counter()
        try:
            for copied in _copied_results(out, key, copies) if copies else []:
                writer.add(copied)
                counts["reused"] += 1
            if not todo:
                results: Iterator[ImageResult] = iter(())
            elif mode == "ray":
                results = _ray_results(todo, job, ray or "", ray_actors, run_info)
            elif mode == "workers":
                results = _process_results(todo, job, min(workers, len(todo)))
            else:
                results = _local_results(todo, job)
            for result in results:
                writer.add(result)
                if result.ok:
                    counts["explained"] += 1
                else:
                    counts["failed"] += 1
                    failures.append({"image": result.image, "error": result.error or "failed"})
                if on_result is not None:
                    on_result(result)
            interrupted = False
        finally:
            writer.flush()
            seconds = time.perf_counter() - work_start
            if not interrupted:
                counts["rows"] = compact(out)
            else:
                counts["rows"] = sum(len(k) for k in _winners(part_files(folder)))
            explained = counts["explained"]  # failures (a corrupt file fails at once) are no throughput
            summary = {
                "schema_version": SCHEMA_VERSION,
                "eac_version": job.eac_version,
                "table": TABLE_NAME,
                "settings": settings,
                "settings_hash": key,
                "counts": counts,
                "failures": failures,
                "throughput": {"images_per_second": explained / seconds if explained and seconds > 0 else None,
                               "seconds": round(time.time() - started, 3)},
                "run": {"mode": mode, **run_info, "ray_address": ray, "started_at": started_at,
                        "finished_at": _now(), "interrupted": interrupted},
            }
            text = json.dumps(summary, indent=1, allow_nan=False)
            _write_atomic(out / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    return summary
