"""Fidelity and cost of the explainer methods and of `eac`'s option variants.

The study behind `eac`'s defaults (its tables are quoted in the README and the
issue notes): on the shipped demo classifier and unseen generated scenes, each
method's values are compared with exact Shapley values of the classifier
(enumeration, N <= 14) or with permutation-sampled Shapley values
(``--mc-reference``, large N), with eac-faithful, and by insertion/deletion AUC.

    python -m eac.bench.study_explainer --scenes 12 --auc                       # scene concepts, N ~ 12
    python -m eac.bench.study_explainer --scenes 12 --concepts slic --n 10 --variants big --auc
    python -m eac.bench.study_explainer --scenes 10 --concepts slic --n 32 --variants n32 --mc-reference 512
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from eac.engine.classifier import Classifier
from eac.engine.concepts import Frame
from eac.engine.demo import demo_classifier_path
from eac.engine.evaluator import MaskedEvaluator
from eac.engine.explainer import explain
from eac.engine.metrics import insertion_deletion, random_ranking_auc, spearman
from eac.engine.scenes import make_scene, scene_concepts
from eac.engine.sources import GridSource, SuperpixelSource


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", type=int, default=12)
    p.add_argument("--concepts", default="scene")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--variants", default="default")
    p.add_argument("--no-exact", action="store_true")
    p.add_argument("--auc", action="store_true")
    p.add_argument("--mc-reference", type=int, default=0,
                   help="instead of enumeration, use permutation-sampling Shapley on the classifier "
                        "with this many permutations")
    args = p.parse_args(argv)

    clf = Classifier.from_folder(demo_classifier_path())
    size = clf.input_hw[0]

    # Rows of each study: the default eac, its surrogate variants, the old surrogate-only estimator, the peers.
    common = [
        ("eac-surrogate", {}),
        ("eac-faithful", {}),
        ("kernelshap", {"num_samples": 512}),
        ("lime", {}),
        ("loo", {}),
    ]
    VARIANTS = {
        "default": [
            ("eac", {}),
            ("eac", {"surrogate": "logistic"}),
            ("eac", {"surrogate": "pie"}),
            ("eac", {"surrogate": "none"}),
            ("eac", {"min_evaluations": 1024, "max_evaluations": 1024}),
            *common,
        ],
        "n32default": [
            ("eac", {}),
            ("eac-surrogate", {}),
        ],
        "n32": [
            ("eac", {}),
            ("eac", {"min_evaluations": 1024, "max_evaluations": 1024}),
            *common,
        ],
        "big": [
            ("eac", {}),
            ("eac", {"min_evaluations": 1024, "max_evaluations": 1024}),
            *common,
        ],
    }[args.variants]

    rows = {}
    for s in range(args.scenes):
        scene = make_scene(np.random.default_rng(10_000 + s), size)
        frame = Frame.identity((size, size))
        if args.concepts == "scene":
            masks = scene_concepts(scene, background_cells=3).masks
            key = 0
        else:
            src = SuperpixelSource(args.n) if args.concepts == "slic" else GridSource(args.n)
            masks = src(scene.image, frame).masks
            key = int(np.argmax((masks & scene.key_mask).sum((1, 2)) / np.maximum(masks.sum((1, 2)), 1)))
        n = len(masks)
        if not args.no_exact and not args.mc_reference and n > 14:
            print(f"scene {s}: N={n} > 14, skipped (exact enumeration too costly)")
            continue
        t = time.perf_counter()
        exact = None
        if args.mc_reference:
            from types import SimpleNamespace

            from eac.kernels.shapley import permutation_shapley
            from eac.kernels.surrogate import softmax
            ev0 = MaskedEvaluator(clf, scene.image, masks)
            def vfn(c, ev0=ev0, label=scene.label):
                return softmax(ev0.evaluate(c.astype(bool)).logits)[:, [label]]
            vals, errs = permutation_shapley(vfn, n, args.mc_reference, np.random.default_rng(99 + s),
                                             rows_per_call=4096)
            exact = SimpleNamespace(values=vals[:, 0], ranking=np.argsort(-vals[:, 0], kind="stable"),
                                    num_evaluations=ev0.num_evaluations)
            print(f"  reference Shapley: {ev0.num_evaluations} evals, median stderr {np.median(errs):.4f}, "
                  f"median |value| {np.median(np.abs(vals)):.4f}")
        elif not args.no_exact:
            exact = explain(scene.image, clf, masks, method="shapley-exact", target=scene.label, max_n=16)
        t_exact = time.perf_counter() - t
        ev = MaskedEvaluator(clf, scene.image, masks)
        if args.auc:
            rnd = random_ranking_auc(ev, scene.label, np.random.default_rng(s), repeats=8)
            rows.setdefault("random", []).append({"ins": rnd["insertion"], "del": rnd["deletion"]})
            if exact is not None:
                m = insertion_deletion(ev, exact.ranking, scene.label)
                rows.setdefault("shapley-exact", []).append(
                    {"ins": m["insertion"], "del": m["deletion"], "evals": exact.num_evaluations,
                     "sec": t_exact, "top1_key": int(exact.ranking[0] == key), "n": n})
        for method, opts in VARIANTS:
            name = method + (json.dumps(opts, sort_keys=True) if opts else "")
            t = time.perf_counter()
            e = explain(scene.image, clf, masks, method=method, target=scene.label, seed=s, **opts)
            sec = time.perf_counter() - t
            r = {"evals": e.num_evaluations, "sec": sec, "n": n, "top1_key": int(e.ranking[0] == key),
                 "fit": e.timings["fit"], "values": e.timings["values"]}
            if exact is not None:
                r["rho_exact"] = spearman(e.values, exact.values)
                r["top1_exact"] = int(e.ranking[0] == exact.ranking[0])
            if method == "eac-faithful":
                rows.setdefault("_faithful", []).append(e.values)
            if args.auc:
                m = insertion_deletion(ev, e.ranking, scene.label)
                r["ins"], r["del"] = m["insertion"], m["deletion"]
            rows.setdefault(name, []).append(r)
            rows.setdefault("_vals_" + name, []).append(e.values)
        print(f"scene {s}: N={n} label={scene.label} exact {t_exact:.1f}s", flush=True)

    faithful = rows.pop("_faithful", None)
    print(f"\nconcepts={args.concepts} scenes={args.scenes}  (means over scenes; rho = Spearman)")
    columns = ("N", 5), ("evals", 6), ("sec", 6), ("rho_ex", 7), ("min", 6), ("top1ex", 6), ("top1key", 7), \
        ("rho_faith", 9), ("min", 6), ("ins", 6), ("del", 6)
    print(f"{'method':70s} " + " ".join(f"{name:>{width}s}" for name, width in columns))
    for name, rs in rows.items():
        if name.startswith("_vals_"):
            continue
        def mean(k, rs=rs):
            vals = [r[k] for r in rs if k in r]
            return np.mean(vals) if vals else float("nan")
        rf = rfmin = float("nan")
        if faithful is not None and ("_vals_" + name) in rows:
            rfs = [spearman(a, b) for a, b in zip(rows["_vals_" + name], faithful)]
            rf, rfmin = np.mean(rfs), np.min(rfs)
        mn = min((r["rho_exact"] for r in rs if "rho_exact" in r), default=float("nan"))
        print(f"{name:70s} {mean('n'):5.1f} {mean('evals'):6.0f} {mean('sec'):6.2f} {mean('rho_exact'):7.3f} {mn:6.3f} "
              f"{mean('top1_exact'):6.2f} {mean('top1_key'):7.2f} {rf:9.3f} {rfmin:6.3f} "
              f"{mean('ins'):6.1f} {mean('del'):6.1f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
