"""``eac explain``: explain one or many images from the command line.

Each image gets a sub-folder of ``--out`` with ``explanation.json``, the
overlay and the top-k cut-outs. A bad image is reported and skipped — the other
images are still explained — and the command exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import EacError, ImageError
from .explanation import Explanation
from .images import list_images

#: Concept values are printed with this many significant digits.
VALUE_DIGITS = 4


def concept_source_from_args(args: argparse.Namespace, session_options=None):
    """The concept source asked for on the command line (SAM, masks file, superpixels or grid)."""
    if getattr(args, "sam", None):
        from .cli import sam_settings_from_args
        from .sam import SamConceptGenerator

        return SamConceptGenerator.from_folder(args.sam, session_options=session_options, **sam_settings_from_args(args))
    if getattr(args, "masks", None):
        from .sources import MaskSource

        return MaskSource.from_file(args.masks)
    from .sources import make_source

    return make_source(getattr(args, "concepts", None) or "superpixels", getattr(args, "n_segments", None))


def add_metrics(explanation: Explanation, classifier: Any, batch_size: int | None = None) -> dict:
    """Insertion/deletion AUC of the explanation's ranking (reference protocol); stored in ``info["metrics"]``."""
    from .evaluator import MaskedEvaluator
    from .metrics import insertion_deletion

    start = time.perf_counter()
    evaluator = MaskedEvaluator(classifier, explanation.crop, explanation.masks, baseline="black",
                                batch_size=batch_size)
    ranking = explanation.ranking if explanation.values.ndim == 1 else explanation.ranking[0]
    result = insertion_deletion(evaluator, ranking, explanation.target, full_prob=explanation.probability)
    metrics = {"insertion_auc": result["insertion"], "deletion_auc": result["deletion"],
               "evaluations": evaluator.num_evaluations, "seconds": time.perf_counter() - start}
    explanation.info["metrics"] = metrics
    return metrics


def summary_lines(explanation: Explanation, top_k: int = 5, key_mask: np.ndarray | None = None) -> list[str]:
    """Human-readable ranking: one line per top concept, then the timings."""
    name = explanation.labels[0] if explanation.labels else f"class {explanation.target}"
    lines = [
        f"explained {name} (p={explanation.probability:.3f}) with {explanation.method} "
        f"({explanation.value_type} values) over {explanation.num_concepts} concepts, "
        f"{explanation.num_evaluations} classifier evaluations on {explanation.provider or '?'}"
    ]
    values = explanation.values_2d[0]
    stderr = None if explanation.stderr is None else np.atleast_2d(explanation.stderr)[0]
    area = explanation.masks.reshape(explanation.num_concepts, -1).mean(axis=1) if explanation.num_concepts else []
    for rank, i in enumerate(explanation.top(top_k), start=1):
        err = f" ± {stderr[i]:.2g}" if stderr is not None else ""
        extra = ""
        if key_mask is not None:
            inside = (explanation.masks[i] & key_mask).sum() / max(1, explanation.masks[i].sum())
            extra = f", {100 * inside:.0f}% on the red shape"
        lines.append(f"  #{rank}: concept {i:3d}  value {values[i]:+.{VALUE_DIGITS}g}{err}  "
                     f"(area {100 * area[i]:.1f}%{extra})")
    if explanation.num_concepts == 0:
        lines.append("  no concepts: nothing to rank")
    t = explanation.timings
    lines.append("  time: " + ", ".join(f"{k} {t[k]:.3f}s" for k in ("concepts", "evaluations", "fit", "values") if k in t))
    if "metrics" in explanation.info:
        m = explanation.info["metrics"]
        lines.append(f"  insertion AUC {m['insertion_auc']:.2f} (higher is better), "
                     f"deletion AUC {m['deletion_auc']:.2f} (lower is better)")
    return lines


def method_options(method: str, evaluations: int | None) -> dict:
    """Method options for an evaluation budget given on the command line."""
    from .errors import ExplainError
    from .explain import DEFAULT_OPTIONS

    if evaluations is None:
        return {}
    if evaluations < 1:
        raise ExplainError(f"--evaluations must be positive, got {evaluations}")
    if method == "eac":
        return {"max_evaluations": evaluations,
                "min_evaluations": min(evaluations, DEFAULT_OPTIONS["eac"]["min_evaluations"])}
    key = {"kernelshap": "num_samples", "lime": "num_samples", "eac-faithful": "num_coalitions"}.get(method)
    if key is None:
        raise ExplainError(f"--evaluations does not apply to --method {method} (its evaluation count is fixed by N)")
    return {key: evaluations}


def explain_command(args: argparse.Namespace) -> int:
    from .classifier import Classifier
    from .cli import session_options_from_args
    from .explain import Explainer

    paths = list_images(args.images)
    if not paths:
        raise ImageError(f"no images found in {' '.join(args.images)}")
    options = session_options_from_args(args)
    classifier = Classifier.from_folder(args.classifier, session_options=options)
    source = concept_source_from_args(args, options)
    explainer = Explainer(classifier, method=args.method, batch_size=args.batch_size, seed=args.seed,
                          progress=False, **method_options(args.method, args.evaluations))
    target = None
    if args.target:
        target = args.target[0] if len(args.target) == 1 else list(args.target)
    out = Path(args.out)
    results, failures = [], []
    log = sys.stderr if args.json else sys.stdout
    bar = tqdm(paths, desc="explaining", unit="image", disable=args.no_progress or len(paths) < 2, file=sys.stderr)
    used = set()
    for path in bar:
        bar.set_postfix_str(path.name)
        try:
            explanation = explainer.explain(path, source, target)
            if args.metrics:
                add_metrics(explanation, classifier, args.batch_size)
        except EacError as exc:
            failures.append((path, str(exc)))
            print(f"eac: error: {path}: {exc}", file=sys.stderr)
            continue
        name = path.stem if path.stem not in used else f"{path.stem}_{len(used)}"
        used.add(name)
        folder = out / name if len(paths) > 1 or Path(args.images[0]).is_dir() else out
        explanation.info["image"] = str(path)
        explanation.save(folder, top_k=args.top_k)
        record = explanation.to_dict()
        record["output_folder"] = str(folder)
        results.append(record)
        print(f"{path} → {folder}", file=log)
        for line in summary_lines(explanation, args.top_k):
            print(line, file=log)
    if args.json:
        json.dump(results[0] if len(results) == 1 and len(paths) == 1 else results, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    if failures:
        print(f"eac: {len(failures)} of {len(paths)} images failed", file=sys.stderr)
        return 1
    return 0
