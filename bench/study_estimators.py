"""Fidelity of Shapley estimators with known exact values (the numbers behind eac's defaults).

Every estimator is run at equal budgets of value-function rows and compared with the exact values:
Spearman, top-3 precision, max |error| (probability scale), efficiency gap |Σφ̂ − (f(N) − f(∅))|, 95 %
interval coverage (estimators that report standard errors), evaluations used and seconds. Cases:

* N = 8, 12, 16: the interaction games of :mod:`eac.kernels.games` (exact values by enumeration);
* N = 24, 32: the closed-form games (sums of unanimity games, additive plus pairwise terms, saturating
  region detectors; exact values in closed form), two games of each per N;
* ``scenes``: the trained scene classifier shipped as eac's demo model, on generated scenes with 11–12
  concepts (its exact values by enumerating the classifier on all 2^N coalitions, cached under
  ``$EAC_CACHE/bench``).

Rows: ``eac`` (:func:`eac.kernels.estimators.residual_shapley`, default surrogate) and its surrogate
variants ``eac-<surrogate>``, ``eac-v1`` (the first version's settings: surrogate stratum terms from 4096
pairs per stratum, surrogates refitted every round), ``eac-defaults`` (the default schedule and stopping
rule), ``surrogate-only`` (Shapley values of a fitted logistic surrogate), ``kernelshap`` (paired,
constrained), ``permutation`` (antithetic permutation sampling), ``loo`` (leave-one-out, n + 1 rows whatever
the budget) and shapiq's Shapley approximators when shapiq is installed (a bench-only dependency:
``pip install shapiq``). The schedule section runs candidate schedules (cap, minimum, round size) with the
default stopping rule.

    python -m eac.bench.study_estimators                  # full study (~5 min on the 2-core VM beside other jobs)
    python -m eac.bench.study_estimators --quick          # smoke run (< 30 s), labelled QUICK
    python -m eac.bench.study_estimators --json out.json  # also write the rows elsewhere

The full run writes ``bench/results/estimators.json`` and ``bench/results/estimators.md``. Seconds are
wall time on whatever machine ran it (speed is measured by ``python -m eac.bench.study_estimator_time``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from eac.kernels.estimators import (
    DEFAULT_SURROGATE,
    SURROGATES,
    default_options,
    kernel_shap,
    leave_one_out,
    residual_shapley,
    surrogate_only_shapley,
)
from eac.kernels.games import CLOSED_FORM_GAMES, GAME_NAMES, make_closed_form_game, make_game
from eac.kernels.shapley import all_coalitions, coalition_index, exact_shapley, permutation_shapley

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUDGETS = (128, 256, 512, 1024)
SIZES = (8, 12, 16)
SEEDS = 2
GAME_SEEDS = (0,)
#: Sizes beyond enumeration: the closed-form games, two of each per size, and larger budgets.
LARGE_SIZES = (24, 32)
LARGE_GAME_SEEDS = (0, 1)
LARGE_BUDGETS = (256, 512, 1024, 2048)
#: The trained scene classifier: scenes (seeded) with at most SCENE_MAX_N concepts; their budgets.
SCENES = 4
SCENE_SEED = 1234
SCENE_MAX_N = 12
SCENE_BACKGROUND_CELLS = 3
SCENE_BUDGETS = (128, 256, 512, 1024)
#: Rows per classifier call while tabulating a scene's 2^N coalitions.
SCENE_BATCH = 256
#: The first version's estimator settings (its values to rounding; see kernels/estimators.py).
FIRST_VERSION = {"surrogate_mc": "strata", "refit": "rounds"}
QUICK_GAMES = ("triples", "two_objects")
QUICK_SIZES = (12,)
QUICK_BUDGETS = (256,)
#: Seeds per case for each candidate schedule.
SCHEDULE_SEEDS = 3
#: Issue 8's targets (N = 12–16, ≤ 512 evaluations).
TARGET_SPEARMAN = 0.95
TARGET_MAX_ERROR = 0.02
TARGET_COVERAGE = 0.9
Z95 = 1.96
TOP = 3
#: shapiq approximators tried (those present in the installed version are used).
SHAPIQ_APPROXIMATORS = ("SVARM", "KernelSHAP", "UnbiasedKernelSHAP", "kADDSHAP",
                        "StratifiedSamplingSV", "PermutationSamplingSV", "RegressionMSR",
                        "ProxySHAP", "OddSHAP")

#: (game, n, budget, rng) → (values N×T, stderr N×T or None, rows evaluated)
Estimator = Callable[[Callable, int, int, np.random.Generator],
                     tuple[np.ndarray, np.ndarray | None, int]]


class _Counter:
    """Wraps a game: counts rows and accepts 1-D coalitions (shapiq passes some)."""

    def __init__(self, game):
        self.game, self.rows = game, 0

    def __call__(self, c):
        c = np.atleast_2d(np.asarray(c)).astype(bool)
        self.rows += len(c)
        return self.game(c)


def _eac(surrogate: str, defaults: bool = False, **options) -> Estimator:
    def run(game, n, budget, rng):
        if surrogate == "pie" and not hasattr(game, "with_features"):
            raise ValueError("the pie surrogate needs the game's features")
        value_fn = game.with_features if surrogate == "pie" else game
        head = getattr(game, "head", None)
        schedule = default_options(n) if defaults else {"min_evaluations": budget, "max_evaluations": budget}
        est = residual_shapley(value_fn, n, rng, surrogate=surrogate, head=head, **schedule, **options)
        return est.values, est.stderr, est.evaluations

    return run


#: Candidate schedules (cap, minimum, round size) tried with the default stopping rule; name → n → options.
SCHEDULES: dict[str, Callable[[int], dict]] = {
    "cap 512, min 384, rounds 64 (v1)": lambda n: {"max_evaluations": 512, "min_evaluations": 384, "round_size": 64},
    "cap 512, min 256, rounds 64": lambda n: {"max_evaluations": 512, "min_evaluations": 256, "round_size": 64},
    "cap 24·N ≥ 512, min ¾ cap, rounds cap/8": lambda n: _scaled(max(512, 24 * n), 0.75),
    "cap 32·N ≥ 512, min ¾ cap, rounds cap/8": lambda n: _scaled(max(512, 32 * n), 0.75),
    "cap 32·N ≥ 512, min ½ cap, rounds cap/8": lambda n: _scaled(max(512, 32 * n), 0.5),
    "cap 32·N ≥ 512, min 384, rounds cap/8": lambda n: {**_scaled(max(512, 32 * n), 0.5), "min_evaluations": 384},
    "cap 32·N ≥ 512, min ¼ cap, rounds cap/8": lambda n: _scaled(max(512, 32 * n), 0.25),
    "cap 32·N ≥ 512, min 256, rounds cap/8": lambda n: {**_scaled(max(512, 32 * n), 0.5), "min_evaluations": 256},
    "default": default_options,
}


def _scaled(cap: int, min_share: float) -> dict:
    return {"max_evaluations": cap, "min_evaluations": int(min_share * cap), "round_size": cap // 8}


def _schedule(options_for: Callable[[int], dict]) -> Estimator:
    def run(game, n, budget, rng):
        est = residual_shapley(game, n, rng, **options_for(n))
        return est.values, est.stderr, est.evaluations, est.stop_reason

    return run


def _counted(fn: Callable) -> Estimator:
    def run(game, n, budget, rng):
        counter = _Counter(game)
        values = fn(counter, n, budget, rng)
        return values, None, counter.rows

    return run


def _permutation(value_fn, n, budget, rng):
    perms = max(2, budget // (n + 1))
    values, _ = permutation_shapley(value_fn, n, perms - perms % 2, rng)
    return values


def _shapiq(name: str) -> Estimator | None:
    try:
        import shapiq  # bench-only dependency, imported lazily
    except ImportError:
        return None
    cls = getattr(shapiq, name, None) or getattr(shapiq.approximator, name, None)
    if cls is None:
        return None

    def run(game, n, budget, rng):
        counter = _Counter(game)
        kwargs = {"n": n, "random_state": int(rng.integers(2**31))}
        if name in ("KernelSHAP", "UnbiasedKernelSHAP", "SVARM"):
            kwargs["pairing_trick"] = True
        if name == "kADDSHAP":
            kwargs["max_order"] = 2
        approx = cls(**kwargs)
        iv = approx.approximate(budget=budget, game=lambda c: counter(c)[:, 0])
        values = np.array([[float(iv[(i,)])] for i in range(n)])
        return values, None, counter.rows

    return run


def estimators(quick: bool) -> dict[str, Estimator]:
    out: dict[str, Estimator] = {"eac": _eac(DEFAULT_SURROGATE), "eac-v1": _eac(DEFAULT_SURROGATE, **FIRST_VERSION)}
    if not quick:
        out["eac-defaults"] = _eac(DEFAULT_SURROGATE, defaults=True)
        for s in SURROGATES:
            if s != DEFAULT_SURROGATE:
                out[f"eac-{s}"] = _eac(s)
    else:
        out["eac-none"] = _eac("none")
    out["surrogate-only"] = _counted(surrogate_only_shapley)
    out["kernelshap"] = _counted(kernel_shap)
    if not quick:
        out["permutation"] = _counted(_permutation)
    out["loo"] = _counted(lambda f, n, b, r: leave_one_out(f, n))
    names = ("SVARM",) if quick else SHAPIQ_APPROXIMATORS
    for name in names:
        run = _shapiq(name)
        if run is not None:
            out[f"shapiq-{name}"] = run
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


class SceneGame:
    """The trained scene classifier on one scene's concepts, tabulated on all 2^N coalitions.

    Callable M×N → M×1 (the probability of the scene's predicted class, by table look-up) with
    :meth:`exact` (its exact Shapley values).
    """

    def __init__(self, table: np.ndarray):
        self.table = table
        self.n = int(np.log2(len(table)))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        c = np.atleast_2d(np.asarray(coalitions)).astype(bool)
        return self.table[coalition_index(c)][:, None]

    def exact(self) -> np.ndarray:
        return exact_shapley(self.table, self.n)[:, None]


def scene_games(count: int, log: Callable[[str], None] = print) -> list[SceneGame]:
    """``count`` scenes for the shipped demo classifier (N ≤ SCENE_MAX_N), tabulated once and cached."""
    import hashlib

    from eac.engine.classifier import Classifier
    from eac.engine.demo import demo_classifier_path
    from eac.engine.evaluator import MaskedEvaluator
    from eac.engine.scenes import make_scene, scene_concepts
    from eac.kernels.surrogate import softmax

    folder = demo_classifier_path()
    digest = hashlib.sha256((folder / "classifier.onnx").read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("EAC_CACHE") or Path.home() / ".cache" / "eac") / "bench" / "estimator-scenes"
    classifier = Classifier.from_folder(folder)
    rng = np.random.default_rng(SCENE_SEED)
    out: list[SceneGame] = []
    while len(out) < count:
        scene = make_scene(rng, int(classifier.input_hw[0]))
        concepts = scene_concepts(scene, background_cells=SCENE_BACKGROUND_CELLS)
        if len(concepts) > SCENE_MAX_N:
            continue
        path = cache / f"{digest}-{SCENE_SEED}-{len(out)}-{len(concepts)}.npy"
        if path.is_file():
            table = np.load(path)
        else:
            log(f"tabulating scene {len(out) + 1}/{count}: 2^{len(concepts)} classifier runs (cached afterwards)")
            evaluator = MaskedEvaluator(classifier, scene.image, concepts.masks, baseline="black",
                                        batch_size=SCENE_BATCH)
            target = int(np.argmax(evaluator.evaluate_full().logits[0]))
            logits = evaluator.evaluate(all_coalitions(len(concepts))).logits
            table = softmax(np.asarray(logits, dtype=np.float64))[:, target]
            cache.mkdir(parents=True, exist_ok=True)
            np.save(path, table)
        out.append(SceneGame(table))
    return out


def measure(game, n: int, values: np.ndarray, stderr: np.ndarray | None) -> dict:
    exact = game.exact()[:, 0]
    v = values[:, 0]
    ends = game(np.array([np.zeros(n, bool), np.ones(n, bool)]))[:, 0]
    top = TOP
    out = {
        "spearman": _spearman(v, exact),
        "top3": len(set(np.argsort(-v)[:top]) & set(np.argsort(-exact)[:top])) / top,
        "max_error": float(np.abs(v - exact).max()),
        "efficiency_gap": float(abs(v.sum() - (ends[1] - ends[0]))),
        "coverage": None,
    }
    if stderr is not None:
        out["coverage"] = float(np.mean(np.abs(v - exact) <= Z95 * stderr[:, 0]))
    return out


def cases(quick: bool, log: Callable[[str], None] = print) -> list[tuple[str, str, int, int, object, tuple]]:
    """(group, game name, n, game seed, game, budgets) for every case of the study."""
    out = []
    if quick:
        for n in QUICK_SIZES:
            for name in QUICK_GAMES:
                out.append((f"N = {n}", name, n, 0, make_game(name, n, seed=0), QUICK_BUDGETS))
        return out
    for n in SIZES:
        for name in GAME_NAMES:
            for gseed in GAME_SEEDS:
                out.append((f"N = {n}", name, n, gseed, make_game(name, n, seed=gseed), BUDGETS))
    for n in LARGE_SIZES:
        for name in CLOSED_FORM_GAMES:
            for gseed in LARGE_GAME_SEEDS:
                out.append((f"N = {n}", name, n, gseed, make_closed_form_game(name, n, seed=gseed), LARGE_BUDGETS))
    for i, game in enumerate(scene_games(SCENES, log)):
        out.append(("scenes", f"scene {i}", game.n, i, game, SCENE_BUDGETS))
    return out


def run_study(quick: bool, log: Callable[[str], None] = print) -> dict:
    seeds = 1 if quick else SEEDS
    methods = estimators(quick)
    schedules = {} if quick else SCHEDULES
    runs = []
    groups: list[str] = []
    budgets_by_group: dict[str, list[int]] = {}
    for group, name, n, gseed, game, budgets in cases(quick, log):
        if group not in groups:
            groups.append(group)
            budgets_by_group[group] = list(budgets)
        game.exact()
        for budget in budgets:
            for method, fn in methods.items():
                if method in ("loo", "eac-defaults") and budget != budgets[-1]:
                    continue  # budget-independent rows: once per case
                for seed in range(seeds):
                    rng = np.random.default_rng(1000 * seed + budget)
                    start = time.perf_counter()
                    try:
                        values, stderr, evals = fn(game, n, budget, rng)
                    except ValueError as exc:  # e.g. a budget below the method's minimum
                        log(f"skip {method} n={n} {name} budget={budget}: {exc}")
                        continue
                    seconds = time.perf_counter() - start
                    fixed = method in ("loo", "eac-defaults")
                    row = {"group": group, "method": method, "game": name, "n": n, "game_seed": gseed,
                           "budget": None if fixed else budget, "seed": seed,
                           "evaluations": int(evals), "seconds": seconds}
                    row.update(measure(game, n, values, stderr))
                    runs.append(row)
        for label, options_for in schedules.items():
            for seed in range(SCHEDULE_SEEDS):
                rng = np.random.default_rng(7000 + seed)
                values, stderr, evals, stop = _schedule(options_for)(game, n, None, rng)
                row = {"group": group, "method": f"schedule: {label}", "game": name, "n": n, "game_seed": gseed,
                       "budget": None, "seed": seed, "evaluations": int(evals), "stop": stop, "seconds": None}
                row.update(measure(game, n, values, stderr))
                runs.append(row)
        log(f"{group} {name} (seed {gseed}): {len(runs)} runs")
    return {"quick": quick, "groups": groups, "budgets": budgets_by_group, "seeds": seeds,
            "methods": list(methods), "schedules": list(schedules), "runs": runs, "summary": summarise(runs)}


def _mean(xs):
    xs = [x for x in xs if x is not None and not np.isnan(x)]
    return float(np.mean(xs)) if xs else None


def summarise(runs: list[dict]) -> list[dict]:
    order = {g: i for i, g in enumerate(dict.fromkeys(r["group"] for r in runs))}
    keys = sorted({(r["group"], r["method"], r["budget"] or 0) for r in runs},
                  key=lambda k: (order[k[0]], k[2], k[1]))
    out = []
    for group, method, budget in keys:
        rs = [r for r in runs
              if r["group"] == group and r["method"] == method and (r["budget"] or 0) == budget]
        row = {
            "group": group, "method": method, "budget": budget or None, "runs": len(rs),
            "spearman": _mean([r["spearman"] for r in rs]),
            "spearman_min": float(np.nanmin([r["spearman"] for r in rs])),
            "top3": _mean([r["top3"] for r in rs]),
            "max_error": _mean([r["max_error"] for r in rs]),
            "max_error_worst": float(max(r["max_error"] for r in rs)),
            "efficiency_gap": float(max(r["efficiency_gap"] for r in rs)),
            "coverage": _mean([r["coverage"] for r in rs]),
            "evaluations": _mean([r["evaluations"] for r in rs]),
            "seconds": _mean([r["seconds"] for r in rs]),
        }
        if any("stop" in r for r in rs):
            early = [r for r in rs if r["stop"] in ("resolved", "precise")]
            row["stopped_early"] = len(early) / len(rs)
            row["spearman_when_early"] = _mean([r["spearman"] for r in early])
        out.append(row)
    return out


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    label = " (QUICK)" if result["quick"] else ""
    lines = [f"# Shapley estimators with known exact values{label}", "",
             "Produced by `python -m eac.bench.study_estimators`"
             f"{' --quick' if result['quick'] else ''}. Groups: {', '.join(result['groups'])}. "
             "N = 8–16: the interaction games of kernels/games.py (exact values by enumeration); N = 24–32: its "
             "closed-form games (additive_pairwise, unanimity, detectors; two of each); scenes: the trained "
             "scene classifier (eac's demo model) on generated scenes with 11–12 concepts (exact values by "
             f"enumerating the classifier). {result['seeds']} seed(s) per case and budget. Means over cases and "
             "seeds; `worst` columns are over all runs. Budget = value-function rows (∅ and N included); `loo` "
             "and `eac-defaults` (the default schedule of kernels/estimators.py) are budget-independent. `eac-v1`: "
             "the first version's settings (surrogate terms from 4096 Monte-Carlo pairs per stratum above 16 "
             "concepts, surrogates refitted to convergence every round). Seconds: wall time on a shared machine "
             "(not a speed measurement).", ""]
    head = ("| method | budget | Spearman | worst Spearman | top-3 | max abs err | worst max err "
            "| eff. gap | coverage | evals | s |")
    rule = "|" + "---|" * 11
    for group in result["groups"]:
        lines += [f"## {group}", "", head, rule]
        for s in result["summary"]:
            if s["group"] != group or s["method"].startswith("schedule: "):
                continue
            lines.append(
                f"| {s['method']} | {s['budget'] or '–'} | {_fmt(s['spearman'], '.3f')} | "
                f"{_fmt(s['spearman_min'], '.3f')} | {_fmt(s['top3'], '.2f')} | "
                f"{_fmt(s['max_error'], '.4f')} | {_fmt(s['max_error_worst'], '.4f')} | "
                f"{_fmt(s['efficiency_gap'], '.1e')} | {_fmt(s['coverage'], '.3f')} | "
                f"{_fmt(s['evaluations'], '.0f')} | {_fmt(s['seconds'], '.3f')} |")
        lines.append("")
    lines += versions_section(result)
    lines += schedules_section(result)
    lines += targets_section(result)
    return "\n".join(lines) + "\n"


def versions_section(result: dict) -> list[str]:
    """eac (windows terms, refits at the checks) beside eac-v1 (the first version's settings), equal budgets."""
    rows = {(s["group"], s["method"], s["budget"]): s for s in result["summary"]}
    pairs = [(g, b) for g in result["groups"] for b in result["budgets"][g] if (g, "eac-v1", b) in rows]
    if not pairs:
        return []
    lines = ["## eac against its first version (same budgets)", "",
             "Spearman / max abs error / coverage. The surrogate's stratum terms: exact up to 12 concepts (eac) or "
             "16 (eac-v1); above, eac estimates what a linear control variate leaves on 512 permutation windows, "
             "eac-v1 uses 4096 independent pairs per stratum. eac refits its surrogates (a few Newton steps from "
             "the previous fit) when the stopping rule is consulted and the evaluations grew by a quarter, eac-v1 "
             "every round to convergence.", "",
             "| group | budget | eac | eac-v1 |", "|---|---|---|---|"]
    for g, b in pairs:
        new, old = rows.get((g, "eac", b)), rows[(g, "eac-v1", b)]

        def cell(r):
            return (f"{_fmt(r['spearman'], '.3f')} / {_fmt(r['max_error'], '.4f')} / "
                    f"{_fmt(r['coverage'], '.3f')}") if r else "–"

        lines.append(f"| {g} | {b} | {cell(new)} | {cell(old)} |")
    return [*lines, ""]


def schedules_section(result: dict) -> list[str]:
    """Candidate schedules with the default stopping rule, per group."""
    rows = [s for s in result["summary"] if s["method"].startswith("schedule: ")]
    if not rows:
        return []
    lines = ["## Schedules (default stopping rule: top-3 resolved or every interval within 5 %)", "",
             f"{SCHEDULE_SEEDS} seeds per case. `early`: share of runs stopped before the cap (resolved or precise); "
             "`Spearman if early`: their mean Spearman.", "",
             "| group | schedule | evals | Spearman | worst Spearman | max abs err | coverage | early | "
             "Spearman if early |", "|" + "---|" * 9]
    for s in rows:
        lines.append(
            f"| {s['group']} | {s['method'][len('schedule: '):]} | {_fmt(s['evaluations'], '.0f')} | "
            f"{_fmt(s['spearman'], '.3f')} | {_fmt(s['spearman_min'], '.3f')} | {_fmt(s['max_error'], '.4f')} | "
            f"{_fmt(s['coverage'], '.3f')} | {_fmt(s.get('stopped_early'), '.2f')} | "
            f"{_fmt(s.get('spearman_when_early'), '.3f')} |")
    return [*lines, ""]


def targets_section(result: dict) -> list[str]:
    """Per game at N = 12–16 and budget 512: the issue's targets for eac and the peers."""
    runs = [r for r in result["runs"] if r["group"] in ("N = 12", "N = 16") and r["budget"] in (512, None)
            and not r["method"].startswith("schedule: ")]
    if not runs:
        return []
    lines = ["## Targets (N = 12–16, 512 rows; per game, mean over seeds)", "",
             f"Target: Spearman ≥ {TARGET_SPEARMAN}, max |error| ≤ {TARGET_MAX_ERROR}, coverage "
             f"≥ {TARGET_COVERAGE}, max |error| ≤ ½ paired KernelSHAP's and ≤ the best shapiq "
             "row's.", "",
             "| N | game | eac Spearman | eac max err | eac coverage | kernelshap max err | "
             "best shapiq (max err) | surrogate-only Spearman / max err | loo Spearman / max err |",
             "|" + "---|" * 9]
    for n in (12, 16):
        for game in GAME_NAMES:
            sel = [r for r in runs if r["n"] == n and r["game"] == game]
            if not sel:
                continue

            def avg(method, key, sel=sel):
                return _mean([r[key] for r in sel if r["method"] == method])

            shapiq = {m: avg(m, "max_error") for m in {r["method"] for r in sel}
                      if m.startswith("shapiq-")}
            shapiq = {m: e for m, e in shapiq.items() if e is not None}
            best = min(shapiq, key=shapiq.get) if shapiq else None
            lines.append(
                f"| {n} | {game} | {_fmt(avg('eac', 'spearman'), '.3f')} | "
                f"{_fmt(avg('eac', 'max_error'), '.4f')} | {_fmt(avg('eac', 'coverage'), '.2f')} | "
                f"{_fmt(avg('kernelshap', 'max_error'), '.4f')} | "
                f"{best or '–'} ({_fmt(shapiq.get(best), '.4f')}) | "
                f"{_fmt(avg('surrogate-only', 'spearman'), '.3f')} / "
                f"{_fmt(avg('surrogate-only', 'max_error'), '.4f')} | "
                f"{_fmt(avg('loo', 'spearman'), '.3f')} / {_fmt(avg('loo', 'max_error'), '.4f')} |")
    return [*lines, ""]


def _rounded(obj):
    """Floats to 5 significant digits (keeps the results file small)."""
    if isinstance(obj, float):
        return float(f"{obj:.5g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 30 s); results labelled QUICK")
    p.add_argument("--json", type=Path, help="also write the rows and summary to this file")
    p.add_argument("--no-write", action="store_true",
                   help="do not write bench/results/estimators.*")
    args = p.parse_args(argv)
    try:
        import shapiq  # noqa: F401
    except ImportError:
        print("shapiq is not installed: its rows are left out (pip install shapiq to add them)")
    result = run_study(args.quick)
    text = markdown(result)
    print(text)
    payload = json.dumps(_rounded(result), separators=(",", ":"))
    if args.json:
        args.json.write_text(payload)
    if not args.quick and not args.no_write:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "estimators.json").write_text(payload)
        (RESULTS_DIR / "estimators.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
