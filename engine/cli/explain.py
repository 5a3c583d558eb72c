"""``eac explain``: explain one or many images from the command line.

Each image gets a sub-folder of ``--out`` (or ``--out`` itself for a single
image file) holding ``explanation.json``, ``masks.npz``, the overlay and the
top-k cut-outs, written whole or not at all. A failing image is reported on one
line with its name and the run goes on; the exit code and a closing line say how
many failed.

``--json`` prints one object whatever the number of images::

    {"results": [<explanation>, ...], "failures": [{"image": ..., "error": ...}, ...]}

where each explanation is ``explanation.json``'s content plus ``image`` and
``output_folder``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..concepts import DEFAULT_MAX_CONCEPTS
from ..errors import ConfigError, EacError, ImageError
from ..images import DEFAULT_MAX_PIXELS, list_images, load_image
from ..methods import get_method, method_names, registry
from .concepts import check_sam_limits
from .options import (
    MAX_POINTS_PER_SIDE,
    add_sam_args,
    add_session_args,
    add_verify_arg,
    non_negative_int,
    positive_int,
    runtime_from_args,
    sam_settings_from_args,
)
from .report import plot_notice, summary_lines

#: Exit code of a run in which some images failed or had no concepts.
EXIT_SOME_FAILED = 1
CONCEPT_KINDS = ("superpixels", "slic", "grid")
FORMATS = ("folders", "parquet")


def _method_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in registry().items())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain classifier predictions with concepts")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--classifier", required=True, help="folder from `eac export classifier` or `eac import-onnx`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sam", default=None, help="SAM folder: concepts from SAM (the EAC method)")
    src.add_argument("--concepts", default=None, choices=CONCEPT_KINDS, help="concepts without SAM")
    src.add_argument("--masks", default=None, help="N×H×W .npy/.npz masks or a label image (PNG/.npy)")
    p.add_argument("--method", default="eac", choices=method_names(), help=_method_help())
    p.add_argument("--target", action="append", default=None,
                   help="class index or name to explain (repeatable; default: top-1)")
    p.add_argument("--out", default="eac-out", help="output folder (one sub-folder per image)")
    p.add_argument("--metrics", action="store_true", help="also compute insertion/deletion AUC")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    p.add_argument("--batch-size", type=positive_int, default=None, help="classifier batch size")
    p.add_argument("--evaluations", type=positive_int, default=None,
                   help="classifier-evaluation budget of the method (eac: the most it may use; "
                        "kernelshap/lime: samples; eac-faithful: coalitions)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--top-k", type=positive_int, default=5, help="concepts shown in the overlay and cut-outs")
    p.add_argument("--n-segments", type=positive_int, default=None, help="superpixel/grid concept count")
    p.add_argument("--max-concepts", type=positive_int, default=DEFAULT_MAX_CONCEPTS,
                   help="refuse images with more concepts than this (memory and evaluations grow with it)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this")
    p.add_argument("--allow-large", action="store_true", help=f"allow --points-per-side above {MAX_POINTS_PER_SIDE}")
    p.add_argument("--no-progress", action="store_true")
    add_dataset_args(p)
    add_sam_args(p)
    add_session_args(p)
    add_verify_arg(p)
    p.set_defaults(func=run)


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Flags of dataset runs (one Parquet table, resumable; :mod:`eac.engine.dataset`)."""
    from ..dataset import DEFAULT_PART_IMAGES

    g = p.add_argument_group("many images (one Parquet table, resumable)")
    g.add_argument("--format", choices=FORMATS, default=None,
                   help="folders: one folder per image (default); parquet: one table OUT/explanations.parquet and "
                        "OUT/summary.json, skipping images already done on a re-run (pip install '.[parquet]')")
    g.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="engine processes on this machine, CPU threads shared among them (implies --format parquet)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, or join the cluster at ADDRESS; --workers sets the actors "
                        "(implies --format parquet; pip install '.[ray]'; put it after the images, or --ray=ADDRESS)")
    g.add_argument("--overlays", action="store_true", help="--format parquet: also write overlay PNGs to OUT/overlays")
    g.add_argument("--part-images", type=positive_int, default=DEFAULT_PART_IMAGES, metavar="N",
                   help="--format parquet: images per part file (a crash loses at most the images not yet in one)")


def concept_source_from_args(args: argparse.Namespace, runtime=None):
    """The concept source asked for on the command line (SAM, masks file, superpixels or grid)."""
    if getattr(args, "sam", None):
        from ..sam import SamConceptGenerator

        check_sam_limits(args)
        return SamConceptGenerator.from_folder(args.sam, session_options=runtime,
                                               verify=not getattr(args, "no_verify", False),
                                               **sam_settings_from_args(args))
    if getattr(args, "masks", None):
        from ..sources import MaskSource

        return MaskSource.from_file(args.masks)
    from ..sources import make_source

    n = getattr(args, "n_segments", None)
    limit = getattr(args, "max_concepts", DEFAULT_MAX_CONCEPTS)
    if n is not None and n > limit:
        raise ConfigError(f"--n-segments {n} is above --max-concepts {limit}: each concept costs a mask in memory "
                          "and evaluations; raise --max-concepts to allow it")
    return make_source(getattr(args, "concepts", None) or "superpixels", n)


def method_options(method: str, evaluations: int | None) -> dict[str, Any]:
    """Method options for an evaluation budget given on the command line."""
    return {} if evaluations is None else get_method(method).budget(evaluations)


def zero_concepts_hint(args: argparse.Namespace) -> str:
    """What to change when an image has no concepts."""
    if getattr(args, "sam", None):
        return ("SAM kept no mask: lower --pred-iou-thresh / --stability-score-thresh (e.g. 0.7 / 0.8) or raise "
                "--points-per-side, or use --concepts superpixels")
    return "the concept source gave no mask: check the masks file, or use --concepts superpixels"


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..explainer import Explainer
    from ..explanation import check_output_folder
    from ..metrics import add_metrics

    paths = list_images(args.images)
    if not paths:
        raise ImageError(f"no images found in {' '.join(args.images)}")
    if _dataset_mode(args):
        return run_dataset_command(args, paths)
    out = Path(args.out)
    single = len(paths) == 1 and not Path(args.images[0]).is_dir()
    check_output_folder(out, replace=single)  # before any work: a bad destination fails at once
    runtime = runtime_from_args(args)
    classifier = Classifier.from_folder(args.classifier, session_options=runtime, verify=not args.no_verify,
                                        batch_size=args.batch_size)
    source = concept_source_from_args(args, runtime)
    explainer = Explainer(classifier, method=args.method, batch_size=args.batch_size, seed=args.seed,
                          progress=False, max_concepts=args.max_concepts,
                          **method_options(args.method, args.evaluations))
    target = None
    if args.target:
        target = args.target[0] if len(args.target) == 1 else list(args.target)
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    log = sys.stderr if args.json else sys.stdout
    bar = tqdm(paths, desc="explaining", unit="image", disable=args.no_progress or len(paths) < 2, file=sys.stderr)
    used: set[str] = set()
    start = time.perf_counter()
    for path in bar:
        bar.set_postfix_str(path.name)
        name = path.stem if path.stem not in used else f"{path.stem}_{len(used)}"
        used.add(name)
        folder = out if single else out / name
        try:
            image = load_image(path, max_pixels=args.max_pixels)
            explanation = explainer.explain(image, source, target)
            if args.metrics and explanation.num_concepts:
                add_metrics(explanation, classifier, args.batch_size)
            explanation.info["image"] = str(path)
            explanation.save(folder, top_k=args.top_k)
        except EacError as exc:
            _fail(failures, path, str(exc), args)
            continue
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            _fail(failures, path, f"unexpected {type(exc).__name__}: {_first_line(exc)} (--debug shows the "
                                  "traceback)", args)
            continue
        record = explanation.to_dict()
        record["image"] = str(path)
        record["output_folder"] = str(folder)
        results.append(record)
        print(f"{path} → {folder}", file=log)
        for line in summary_lines(explanation, args.top_k):
            print(line, file=log)
        if explanation.num_concepts == 0:
            _fail(failures, path, f"no concepts; {zero_concepts_hint(args)}", args)
    seconds = time.perf_counter() - start
    if args.json:
        json.dump({"results": results, "failures": failures}, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    if results:
        plot_notice()
    done = len(paths) - len({f["image"] for f in failures})
    print(f"eac: {done} of {len(paths)} images explained in {seconds:.1f}s"
          + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    return EXIT_SOME_FAILED if failures else 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(failures: list[dict[str, str]], path: Path, message: str, args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    prefix = f"{path}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    failures.append({"image": str(path), "error": message})
    print(f"eac: error: {path}: {message}", file=sys.stderr)


# ---------------------------------------------------------------------- many images: one table
def _dataset_mode(args: argparse.Namespace) -> bool:
    """Whether the run writes one Parquet table (``--format parquet``, ``--workers``, ``--ray``)."""
    parallel = getattr(args, "workers", None) is not None or getattr(args, "ray", None) is not None
    fmt = getattr(args, "format", None)
    if fmt == "folders" and parallel:
        raise ConfigError("--workers and --ray write one Parquet table; use --format parquet")
    return fmt == "parquet" or parallel


def run_dataset_command(args: argparse.Namespace, paths: list[Path]) -> int:
    """``eac explain ... --format parquet``: one resumable table (:func:`eac.engine.dataset.run_dataset`)."""
    from ..dataset import RunConfig, run_dataset, table_path

    if args.ray and Path(args.ray).exists():
        raise ConfigError(f"--ray took {args.ray!r} as the cluster address; put --ray after the images "
                          "(or write --ray=ADDRESS)")
    if args.sam:
        check_sam_limits(args)
    config = RunConfig(
        classifier=args.classifier, concepts=args.concepts, n_segments=args.n_segments, sam=args.sam,
        sam_settings=sam_settings_from_args(args) if args.sam else {}, masks=args.masks, method=args.method,
        options=method_options(args.method, args.evaluations), seed=args.seed, batch_size=args.batch_size,
        target=tuple(args.target) if args.target else None, max_concepts=args.max_concepts,
        max_pixels=args.max_pixels, metrics=args.metrics, overlays=args.overlays, top_k=args.top_k,
        providers=args.providers, threads=args.threads, device_id=args.device_id, trt_fp16=args.trt_fp16,
        trt_cache=args.trt_cache, verify=not args.no_verify)
    bar = tqdm(total=0, desc="explaining", unit="image", disable=args.no_progress, file=sys.stderr)

    def on_plan(total: int, todo: int) -> None:
        bar.reset(total=todo)
        if total > todo:
            print(f"eac: {total - todo} of {total} images already in {table_path(args.out)}; skipping them",
                  file=sys.stderr)

    def on_result(result) -> None:
        bar.update(1)
        if not result.ok:
            bar.write(f"eac: error: {result.image}: {result.error}", file=sys.stderr)

    try:
        summary = run_dataset(paths, args.out, config, workers=args.workers or 1, ray=args.ray,
                              ray_actors=args.workers if args.ray is not None else None,
                              part_images=args.part_images, on_plan=on_plan, on_result=on_result)
    finally:
        bar.close()
    counts = summary["counts"]
    if args.json:
        json.dump(summary, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    rate = summary["throughput"]["images_per_second"]
    print(f"eac: {counts['explained']} explained, {counts['skipped']} already done, {counts['failed']} failed "
          f"of {counts['images']} images" + (f" ({rate:.2f} images/s)" if rate else "")
          + f"; table {table_path(args.out)} ({counts['rows']} rows)", file=sys.stderr)
    return EXIT_SOME_FAILED if counts["failed"] else 0
