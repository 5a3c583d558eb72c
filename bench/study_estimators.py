"""Fidelity of Shapley estimators on white-box interaction games (the numbers behind the defaults).

Every estimator is run on the games of :mod:`eac.kernels.games` (exact values by
enumeration) at equal budgets of value-function rows and compared with the exact values:
Spearman, top-3 precision, max |error| (probability scale), efficiency gap
|Σφ̂ − (f(N) − f(∅))|, 95 % interval coverage (estimators that report standard errors),
evaluations used and seconds.

Rows: ``eac`` (:func:`eac.kernels.estimators.residual_shapley`, default surrogate) and its
surrogate variants ``eac-<surrogate>``, ``eac-defaults`` (the default stopping rule and
budget), ``surrogate-only`` (the previous default: Shapley values of a fitted logistic
surrogate), ``kernelshap`` (paired, constrained), ``permutation`` (antithetic permutation
sampling), ``loo`` (leave-one-out, n + 1 rows whatever the budget) and shapiq's Shapley
approximators when shapiq is installed (a bench-only dependency: ``pip install shapiq``).

    python -m eac.bench.study_estimators                  # full study (~10 min on 2 cores)
    python -m eac.bench.study_estimators --quick          # smoke run (< 30 s), labelled QUICK
    python -m eac.bench.study_estimators --json out.json  # also write the rows elsewhere

The full run writes ``bench/results/estimators.json`` and ``bench/results/estimators.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from eac.kernels.estimators import (
    DEFAULT_MAX_EVALUATIONS,
    DEFAULT_SURROGATE,
    SURROGATES,
    kernel_shap,
    leave_one_out,
    residual_shapley,
    surrogate_only_shapley,
)
from eac.kernels.games import GAME_NAMES, make_game
from eac.kernels.shapley import permutation_shapley

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUDGETS = (128, 256, 512, 1024)
SIZES = (8, 12, 16)
SEEDS = 2
GAME_SEEDS = (0,)
QUICK_GAMES = ("triples", "two_objects")
QUICK_SIZES = (12,)
QUICK_BUDGETS = (256,)
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


def _eac(surrogate: str, defaults: bool = False) -> Estimator:
    def run(game, n, budget, rng):
        value_fn = game.with_features if surrogate == "pie" else game
        if defaults:
            est = residual_shapley(value_fn, n, rng, surrogate=surrogate, head=game.head)
        else:
            est = residual_shapley(value_fn, n, rng, surrogate=surrogate, head=game.head,
                                   min_evaluations=budget, max_evaluations=budget)
        return est.values, est.stderr, est.evaluations

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
    out: dict[str, Estimator] = {"eac": _eac(DEFAULT_SURROGATE)}
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


def run_study(quick: bool, log: Callable[[str], None] = print) -> dict:
    games = QUICK_GAMES if quick else GAME_NAMES
    sizes = QUICK_SIZES if quick else SIZES
    budgets = QUICK_BUDGETS if quick else BUDGETS
    seeds = 1 if quick else SEEDS
    methods = estimators(quick)
    runs = []
    for n in sizes:
        for name in games:
            for gseed in GAME_SEEDS:
                game = make_game(name, n, seed=gseed)
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
                            row = {"method": method, "game": name, "n": n, "game_seed": gseed,
                                   "budget": None if fixed else budget, "seed": seed,
                                   "evaluations": int(evals), "seconds": seconds}
                            row.update(measure(game, n, values, stderr))
                            runs.append(row)
                log(f"n={n} {name}: {len(runs)} runs")
    return {"quick": quick, "budgets": list(budgets), "sizes": list(sizes), "games": list(games),
            "seeds": seeds, "methods": list(methods), "runs": runs, "summary": summarise(runs)}


def _mean(xs):
    xs = [x for x in xs if x is not None and not np.isnan(x)]
    return float(np.mean(xs)) if xs else None


def summarise(runs: list[dict]) -> list[dict]:
    keys = sorted({(r["method"], r["n"], r["budget"] or 0) for r in runs},
                  key=lambda k: (k[1], k[2], k[0]))
    out = []
    for method, n, budget in keys:
        rs = [r for r in runs
              if r["method"] == method and r["n"] == n and (r["budget"] or 0) == budget]
        out.append({
            "method": method, "n": n, "budget": budget or None, "runs": len(rs),
            "spearman": _mean([r["spearman"] for r in rs]),
            "spearman_min": float(np.nanmin([r["spearman"] for r in rs])),
            "top3": _mean([r["top3"] for r in rs]),
            "max_error": _mean([r["max_error"] for r in rs]),
            "max_error_worst": float(max(r["max_error"] for r in rs)),
            "efficiency_gap": float(max(r["efficiency_gap"] for r in rs)),
            "coverage": _mean([r["coverage"] for r in rs]),
            "evaluations": _mean([r["evaluations"] for r in rs]),
            "seconds": _mean([r["seconds"] for r in rs]),
        })
    return out


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    label = " (QUICK)" if result["quick"] else ""
    lines = [f"# Shapley estimators on white-box interaction games{label}", "",
             "Produced by `python -m eac.bench.study_estimators`"
             f"{' --quick' if result['quick'] else ''}. Games: {', '.join(result['games'])} "
             f"(kernels/games.py, exact values by enumeration); {result['seeds']} seed(s) per "
             "game and budget. Means over games and seeds; `worst` columns are over all runs. "
             "Budget = value-function rows (∅ and N included); `loo` and `eac-defaults` "
             "(default stopping rule, max "
             f"{DEFAULT_MAX_EVALUATIONS} rows) are budget-independent.", ""]
    head = ("| method | budget | Spearman | worst Spearman | top-3 | max abs err | worst max err "
            "| eff. gap | coverage | evals | s |")
    rule = "|" + "---|" * 11
    for n in result["sizes"]:
        lines += [f"## N = {n}", "", head, rule]
        for s in result["summary"]:
            if s["n"] != n:
                continue
            lines.append(
                f"| {s['method']} | {s['budget'] or '–'} | {_fmt(s['spearman'], '.3f')} | "
                f"{_fmt(s['spearman_min'], '.3f')} | {_fmt(s['top3'], '.2f')} | "
                f"{_fmt(s['max_error'], '.4f')} | {_fmt(s['max_error_worst'], '.4f')} | "
                f"{_fmt(s['efficiency_gap'], '.1e')} | {_fmt(s['coverage'], '.3f')} | "
                f"{_fmt(s['evaluations'], '.0f')} | {_fmt(s['seconds'], '.3f')} |")
        lines.append("")
    lines += targets_section(result)
    return "\n".join(lines) + "\n"


def targets_section(result: dict) -> list[str]:
    """Per game at N = 12–16 and budget 512: the issue's targets for eac and the peers."""
    runs = [r for r in result["runs"] if r["n"] in (12, 16) and r["budget"] in (512, None)]
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
        for game in result["games"]:
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
