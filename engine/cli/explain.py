"""``eac explain``: explain one or many images from the command line.

``--out`` is required unless ``--json`` is given. For one image file, ``--out``
itself holds its ``explanation.json``, ``masks.npz``, the overlay and the top-k
cut-outs; for several images or a folder, each image gets a sub-folder of
``--out`` named after it; each is written whole or not at all. A failing image is
reported on one line with its name and the run goes on; the exit code and a
closing line say how many failed and where the results are.

``--json`` prints one object whatever the number of images::

    {"results": [<explanation>, ...], "failures": [{"image": ..., "error": ...}, ...]}

where each explanation is ``explanation.json``'s content plus ``image`` and
``output_folder`` (null, and no file written, when ``--json`` runs without ``--out``).
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

from ..batching import DEFAULT_BATCH_SIZE
from ..concepts import DEFAULT_MAX_CONCEPTS
from ..distribution import install_hint
from ..errors import ConfigError, EacError, ExplainError, ImageError
from ..images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, load_image
from ..methods import get_method, method_names, registry
from ..sources import DEFAULT_SEGMENTS
from .concepts import check_sam_limits
from .options import (
    add_sam_args,
    add_session_args,
    add_verify_arg,
    model_help,
    non_negative_int,
    positive_int,
    resolve_models,
    runtime_from_args,
    sam_settings_from_args,
)
from .report import plot_notice, summary_lines

#: Exit code of a run in which some images failed or had no concepts.
EXIT_SOME_FAILED = 1
CONCEPT_KINDS = ("superpixels", "slic", "grid")
#: Concepts used when none of --sam, --concepts, --masks is given.
DEFAULT_CONCEPTS = "superpixels"
FORMATS = ("folders", "parquet")
#: Spaces between the method-name column of ``--list-methods`` and the text.
_COLUMN_GAP = 2


def methods_listing() -> str:
    """``eac explain --list-methods``: one method per line (name, kind of values, what it computes, cost)."""
    methods = registry()
    width = max(len(name) for name in methods) + _COLUMN_GAP
    lines = []
    for name, cls in methods.items():
        default = " (default)" if name == "eac" else ""
        lines.append(f"{name:<{width}}{cls.value_type} values{default}: {cls.summary}. "
                     f"Classifier evaluations: {cls.cost}.")
    return "\n".join(lines)


class _ListMethods(argparse.Action):
    """``--list-methods``: print :func:`methods_listing` and exit 0 (like ``--help``, before other checks)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(methods_listing())
        parser.exit()


def _evaluations_help() -> str:
    budgets = ", ".join(f"{name} {cls.defaults[cls.budget_option]}" for name, cls in registry().items()
                        if cls.budget_option is not None)
    return ("classifier-evaluation budget of the method (eac: the most it may use; kernelshap/lime: samples; "
            f"eac-faithful: coalitions); default: the method's own ({budgets}); the other methods' count is fixed "
            "by the number of concepts")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain classifier predictions with concepts")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--classifier", required=True,
                   help=model_help("classifier", "folder from `eac export classifier` or `eac import-onnx`"))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sam", default=None,
                     help=model_help("sam", "SAM folder from `eac export sam`: concepts from SAM (the EAC method)"))
    src.add_argument("--concepts", default=None, choices=CONCEPT_KINDS,
                     help=f"concepts without SAM; when none of --sam, --concepts, --masks is given: {DEFAULT_CONCEPTS}")
    src.add_argument("--masks", default=None, help="N×H×W .npy/.npz masks or a label image (PNG/.npy)")
    p.add_argument("--method", default="eac", choices=method_names(), metavar="METHOD",
                   help=f"explanation method (default: %(default)s), one of {', '.join(method_names())}; "
                        "--list-methods says what each computes")
    p.add_argument("--list-methods", action=_ListMethods, help="list the methods, one per line, and exit")
    p.add_argument("--target", action="append", default=None,
                   help="class index or name to explain (repeatable; default: top-1)")
    p.add_argument("--out", default=None,
                   help="where the results go (required unless --json; no default): for one image file, OUT "
                        "itself holds explanation.json, masks.npz, overlay.png and the cut-outs; for several "
                        "images or a folder, one sub-folder OUT/NAME per image; with --format parquet, the table "
                        "OUT/explanations.parquet and OUT/summary.json")
    p.add_argument("--metrics", action="store_true", help="also compute insertion/deletion AUC")
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on stdout (without --out, no files are written)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"classifier batch size (default: {DEFAULT_BATCH_SIZE}, or the model's fixed batch)")
    p.add_argument("--evaluations", type=positive_int, default=None, help=_evaluations_help())
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampled coalitions (default: "
                   "%(default)s)")
    p.add_argument("--top-k", type=positive_int, default=5,
                   help="concepts shown in the overlay and cut-outs (default: %(default)s)")
    p.add_argument("--n-segments", type=positive_int, default=None,
                   help=f"concepts asked of --concepts superpixels/slic/grid (default: {DEFAULT_SEGMENTS})")
    p.add_argument("--max-concepts", type=positive_int, default=DEFAULT_MAX_CONCEPTS,
                   help="refuse images with more concepts than this (memory and evaluations grow with it; "
                        "default: %(default)s)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines on stderr")
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
                        "OUT/summary.json, skipping images already done on a re-run (needs pyarrow: "
                        f"{install_hint('parquet')})")
    g.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="engine processes on this machine, CPU threads shared among them (implies --format parquet)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, or join the cluster at ADDRESS; --workers sets the actors "
                        f"(implies --format parquet; {install_hint('ray')}; put it after the images, or "
                        "--ray=ADDRESS)")
    g.add_argument("--overlays", action="store_true", help="--format parquet: also write overlay PNGs to OUT/overlays")
    g.add_argument("--part-images", type=positive_int, default=DEFAULT_PART_IMAGES, metavar="N",
                   help="--format parquet: images per part file (a crash loses at most the images not yet in one)")


def concept_source_from_args(args: argparse.Namespace, runtime=None):
    """The concept source asked for on the command line (SAM, masks file, superpixels or grid)."""
    check_concept_flags(args)
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
    return make_source(getattr(args, "concepts", None) or DEFAULT_CONCEPTS, n)


def check_concept_flags(args: argparse.Namespace) -> None:
    """ConfigError when a flag would be ignored: --n-segments with concepts from --sam or --masks."""
    if getattr(args, "n_segments", None) is not None and (getattr(args, "sam", None) or getattr(args, "masks", None)):
        given = "--sam" if getattr(args, "sam", None) else "--masks"
        raise ConfigError(f"--n-segments applies to --concepts superpixels/slic/grid; with {given} the concepts "
                          "are what it gives: leave --n-segments out")


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
        raise ImageError(f"no images found in {' '.join(args.images)} (a folder's own {'/'.join(IMAGE_SUFFIXES)} "
                         "files are taken; sub-folders are not searched: name them too)")
    resolve_models(args)
    check_target_flag(args)
    check_concept_flags(args)
    if _dataset_mode(args):
        if args.out is None:
            raise ConfigError("--format parquet writes a table: give --out FOLDER")
        return run_dataset_command(args, paths)
    if args.out is None and not args.json:
        raise ConfigError("give --out FOLDER for the results (or --json to print them without writing files)")
    out = None if args.out is None else Path(args.out)
    single = len(paths) == 1 and not Path(args.images[0]).is_dir()
    if out is not None:
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
        name = unique_name(path.stem, used)
        used.add(name)
        folder = None if out is None else out if single else out / name
        try:
            image = load_image(path, max_pixels=args.max_pixels)
            explanation = explainer.explain(image, source, target)
            if args.metrics and explanation.num_concepts:
                add_metrics(explanation, classifier, args.batch_size)
            explanation.info["image"] = str(path)
            if folder is not None:
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
        record["output_folder"] = None if folder is None else str(folder)
        if folder is None:  # nothing written: no files to name
            record.pop("masks_file", None)
            record.pop("crop_file", None)
        results.append(record)
        # through tqdm: the bar (stderr) is cleared for each line and redrawn below it, never written into
        tqdm.write(f"{path} → {folder}" if folder is not None else f"{path}:", file=log)
        for line in summary_lines(explanation, args.top_k):
            tqdm.write(line, file=log)
        if explanation.num_concepts == 0:
            _fail(failures, path, f"no concepts; {zero_concepts_hint(args)}", args)
    seconds = time.perf_counter() - start
    if args.json:
        json.dump({"results": results, "failures": failures}, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    if results:
        plot_notice()
    done = len(paths) - len({f["image"] for f in failures})
    where = f"; results in {out}" if out is not None and results else ""
    print(f"eac: {done} of {len(paths)} images explained in {seconds:.1f}s"
          + (f"; {len(failures)} failed" if failures else "") + where, file=sys.stderr)
    return EXIT_SOME_FAILED if failures else 0


def unique_name(stem: str, used: set[str]) -> str:
    """The result folder name of an image: its stem, or ``stem_2``, ``stem_3``, … the first one not in ``used``.

    >>> unique_name("c", {"c", "c_2"})
    'c_3'
    """
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    return name


def check_target_flag(args: argparse.Namespace) -> None:
    """ConfigError (exit 2, before any work) when ``--target`` names no class of the classifier.

    The classifier's manifest has its class count and labels; nothing is loaded. (Refused per
    image, a wrong name was one failure per image, exit 1.)
    """
    if not args.target:
        return
    from ..explainer import resolve_targets
    from ..manifest import ClassifierManifest

    manifest = ClassifierManifest.read(args.classifier)
    target = args.target[0] if len(args.target) == 1 else list(args.target)
    try:
        resolve_targets(target, manifest.num_classes, manifest.labels)
    except ExplainError as exc:
        raise ConfigError(f"--target: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(failures: list[dict[str, str]], path: Path, message: str, args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    prefix = f"{path}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    failures.append({"image": str(path), "error": message})
    tqdm.write(f"eac: error: {path}: {message}", file=sys.stderr)  # clears the progress bar first


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
    bars: list[tqdm] = []  # created once there is work: no empty bar when pyarrow is missing or all is done

    def on_plan(total: int, todo: int) -> None:
        if total > todo:
            print(f"eac: {total - todo} of {total} images already in {table_path(args.out)} (or their bytes, under "
                  "another name: their rows are copied); skipping them", file=sys.stderr)
            if args.overlays:
                print(f"eac: --overlays draws the images explained now, not those {total - todo} (`eac report "
                      f"{args.out}` draws every row's overlay; or explain into a new --out)", file=sys.stderr)
        if todo:
            bars.append(tqdm(total=todo, desc="explaining", unit="image", disable=args.no_progress,
                             file=sys.stderr))

    done = [0]  # images with a row written during this run

    def on_result(result) -> None:
        done[0] += 1
        for bar in bars:
            bar.update(1)
        if not result.ok:
            tqdm.write(f"eac: error: {result.image}: {result.error}", file=sys.stderr)

    try:
        summary = run_dataset(paths, args.out, config, workers=args.workers or 1, ray=args.ray,
                              ray_actors=args.workers if args.ray is not None else None,
                              part_images=args.part_images, on_plan=on_plan, on_result=on_result)
    except KeyboardInterrupt:
        summary = None
    finally:
        for bar in bars:
            bar.close()
    if summary is None:
        print(f"eac: interrupted after {done[0]} image(s) of this run; what was saved stays in "
              f"{table_path(args.out)}: the same command resumes where it stopped", file=sys.stderr)
        from . import EXIT_INTERRUPTED

        return EXIT_INTERRUPTED
    counts = summary["counts"]
    if args.json:
        json.dump(summary, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    rate = summary["throughput"]["images_per_second"]
    reused = counts.get("reused", 0)
    print(f"eac: {counts['explained']} explained" + (f", {reused} copied (same bytes as an image already "
          "explained)" if reused else "") + f", {counts['skipped']} already done, {counts['failed']} failed "
          f"of {counts['images']} images" + (f" ({rate:.2f} images/s)" if rate else "")
          + f"; table {table_path(args.out)} ({counts['rows']} rows)", file=sys.stderr)
    return EXIT_SOME_FAILED if counts["failed"] else 0
