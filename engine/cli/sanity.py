"""``eac sanity``: does each method's explanation depend on the model? (model-parameter randomisation)

Explains one image with the same concepts and the same class on the classifier
and on copies whose weights are re-initialised layer by layer
(:mod:`eac.engine.randomise`), and prints per method and step the Spearman
correlation of the concept values with the original's, the share of the top-k
kept, the class probability and the values' scale, then a verdict
(:mod:`eac.engine.sanity` says what passing means). ``--out`` receives
``sanity.json`` and, with the ``plot`` extra, the curve and the thumbnails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..concepts import DEFAULT_MAX_CONCEPTS
from ..errors import ConfigError, ExplainError
from ..images import DEFAULT_MAX_PIXELS
from ..methods import method_names
from ..sanity import SIGNIFICANCE, fewest_testable_concepts
from .explain import CONCEPT_KINDS, concept_source_from_args, method_options
from .options import (
    add_sam_args,
    add_session_args,
    add_verify_arg,
    model_help,
    non_negative_int,
    positive_int,
    resolve_models,
    runtime_from_args,
)

#: ``--method all``: every registered method this classifier and these concepts allow.
ALL_METHODS = "all"
MODE_CHOICES = ("cascading", "independent", "both")
DEFAULT_OUT = "eac-sanity"
REPORT_FILE = "sanity.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sanity", help="check that explanations depend on the model (weights randomised layer by layer)",
        description="Explain one image on the classifier and on copies with re-initialised weights "
                    "(cascading from the head down, or one layer at a time) and report how similar each "
                    "method's explanation stays (Spearman of the concept values, top-k kept). A method passes "
                    "when the fully randomised model's explanation is no more similar to the original's than an "
                    f"unrelated ranking (one-sided {SIGNIFICANCE:.0%} critical value of Spearman for N concepts).")
    p.add_argument("image", help="an image file")
    p.add_argument("--classifier", required=True,
                   help=model_help("classifier", "folder from `eac export classifier` or `eac import-onnx`"))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sam", default=None, help=model_help("sam", "SAM folder: concepts from SAM"))
    src.add_argument("--concepts", default=None, choices=CONCEPT_KINDS, help="concepts without SAM")
    src.add_argument("--masks", default=None, help="N×H×W .npy/.npz masks or a label image (PNG/.npy)")
    p.add_argument("--method", action="append", default=None, choices=(*method_names(), ALL_METHODS),
                   help="method to check (repeatable; default eac; all: every method this model allows)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="cascading",
                   help="cascading: randomise the top k layers, k = 1..L (gives the verdict); independent: one "
                        "layer at a time; both")
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="randomise only these layers (default: all; --list-layers shows them)")
    p.add_argument("--list-layers", action="store_true", help="print the classifier's layers and exit")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="at most this many randomised models per mode, evenly spaced (large networks)")
    p.add_argument("--randomise-seed", type=non_negative_int, default=0, help="seed of the re-initialised weights")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the explanations (the same on every model)")
    p.add_argument("--evaluations", type=positive_int, default=None,
                   help="classifier-evaluation budget of each method that has one (the same on every model; eac's "
                        "stopping rule is off here; loo, cam and secam cost what N fixes)")
    p.add_argument("--top-k", type=positive_int, default=3, help="concepts in the top-k comparison")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for sanity.json and the figures")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--batch-size", type=positive_int, default=None, help="classifier batch size")
    p.add_argument("--n-segments", type=positive_int, default=None, help="superpixel/grid concept count")
    p.add_argument("--max-concepts", type=positive_int, default=DEFAULT_MAX_CONCEPTS,
                   help="refuse images with more concepts than this")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    add_sam_args(p)
    add_session_args(p)
    add_verify_arg(p)
    p.set_defaults(func=run)


def _modes(mode: str) -> tuple[str, ...]:
    return ("cascading", "independent") if mode == "both" else (mode,)


def choose_methods(names: list[str] | None, classifier: Any, n_concepts: int, evaluations: int | None,
                   batch_size: int | None, log) -> dict[str, Any]:
    """The methods to check, as sanity methods; ``all`` skips (with a note) those this model does not allow."""
    from ..explainer import Explainer
    from ..methods import get_method
    from ..sanity import fixed_budget_options, registered_method

    wanted = names or ["eac"]
    every = ALL_METHODS in wanted
    if every:
        wanted = list(method_names())
    methods: dict[str, Any] = {}
    for name in dict.fromkeys(wanted):
        options = fixed_budget_options(name, method_options(name, evaluations)
                                       if get_method(name).budget_option else None)
        try:
            explainer = Explainer(classifier, method=name, **options)
            limit = explainer.options.get("max_n")
            if limit is not None and n_concepts > limit:
                raise ExplainError(f"{name} is limited to {limit} concepts, this image has {n_concepts}")
        except ExplainError as exc:
            if not every:
                raise
            log(f"eac sanity: skipping {name}: {exc}")
            continue
        methods[name] = registered_method(name, options, batch_size)
    return methods


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..images import load_image
    from ..randomise import ModelRandomiser
    from ..sanity import compare_models, randomised_models
    from ..sanity_figure import plot_available, plot_missing_note, write_figures
    from .concepts import check_sam_limits

    log = (lambda text: print(text, file=sys.stderr)) if args.json else print
    resolve_models(args)  # shipped names ("demo") to their folders
    verify = not args.no_verify
    randomiser = ModelRandomiser(args.classifier, seed=args.randomise_seed, verify=verify)
    if args.list_layers:
        for layer in randomiser.layers:
            print(f"{layer.index:>4}  {layer.op_type:<20} {layer.size:>10} values  {layer.name}")
        return 0
    modes = _modes(args.mode)
    for mode in modes:  # unknown layer names fail here, before any work
        randomiser.steps(mode, args.layers, args.max_steps)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if args.sam:
        check_sam_limits(args)
    runtime = runtime_from_args(args)
    classifier = Classifier.from_folder(args.classifier, session_options=runtime, verify=verify,
                                        batch_size=args.batch_size)
    image = load_image(args.image, max_pixels=args.max_pixels)
    crop, frame = classifier.crop(image)
    concepts = concept_source_from_args(args, runtime)(crop, frame)
    if len(concepts) > args.max_concepts:
        raise ConfigError(f"{len(concepts)} concepts is more than --max-concepts {args.max_concepts}")
    methods = choose_methods(args.method, classifier, len(concepts), args.evaluations, args.batch_size, log)
    if not methods:
        raise ExplainError("no method can be checked on this classifier; name one with --method")
    progress = None if args.no_progress else (lambda text: print(f"[sanity] {text}", file=sys.stderr, flush=True))
    report = compare_models(
        classifier, crop, concepts.masks, methods,
        randomised_models(randomiser, modes, layers=args.layers, max_steps=args.max_steps, session_options=runtime,
                          batch_size=args.batch_size),
        seed=args.seed, top_k=args.top_k, progress=progress)
    report.settings.update({"image": str(args.image), "classifier": str(args.classifier),
                            "concept_source": concepts.source, "modes": list(modes),
                            "randomise_seed": args.randomise_seed, "layers": args.layers or randomiser.layer_names,
                            "evaluations": args.evaluations})
    data = report.to_dict()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
        figures = write_figures(report, crop, concepts.masks, out) if plot_available() else []
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc
    label = f" {report.target_label!r}" if report.target_label else ""
    log(f"{args.image}: {report.n_concepts} concepts, class {report.target}{label} "
        f"(p={report.probabilities[0]:.3f} on the original), {len(randomiser.layers)} layers, "
        f"{' and '.join(modes)} randomisation (seed {args.randomise_seed})")
    if report.too_few_concepts:
        log(f"criterion: none can be met with {report.n_concepts} concepts (the one-sided {SIGNIFICANCE:.0%} "
            f"critical value of Spearman is {report.critical:.2f}, above 1): every verdict is inconclusive; "
            f"give an image or concepts with at least {fewest_testable_concepts()} (e.g. --concepts grid)")
    else:
        log(f"criterion: pass when the final Spearman is below {report.critical:.2f}, the one-sided "
            f"{SIGNIFICANCE:.0%} critical value for an unrelated ranking of {report.n_concepts} concepts")
    for name in report.methods:
        log("")
        log(f"method {name}")
        for line in report.table_lines(name):
            log(line)
    log("")
    log(f"wrote {out / REPORT_FILE}" + "".join(f", {p}" for p in figures))
    if not plot_available():
        log(plot_missing_note())
    if args.json:
        json.dump(data, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    return 0


__all__ = ["choose_methods", "register", "run"]
