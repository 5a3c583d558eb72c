"""The default estimator's own CPU time per explanation, per phase, at N = 12 … 64 concepts.

``eac``'s estimator (:func:`eac.kernels.estimators.residual_shapley`) is run with its defaults on a white-box
game whose value function costs next to nothing (the ``detectors`` game of :mod:`eac.kernels.games`: a
saturating, classifier-like set function), so what is measured is the estimator, not a classifier. Per run:

* ``evaluations``: CPU seconds inside the value function (excluded from the estimator's time);
* ``fit``: fitting the cross-fitted fold surrogates (and their predictions on the evaluated coalitions);
* ``terms``: the surrogates' stratum terms (exact by enumeration up to 16 concepts, Monte Carlo above);
* ``other``: everything else (drawing and storing coalitions, residual units, allocation, stopping, ties);
* ``estimator`` = fit + terms + other: the time the engine reports as its ``fit`` and ``values`` stages.

The first version's settings (``surrogate_mc="strata", refit="rounds"``: 4096 Monte-Carlo pairs per stratum,
surrogates refitted every round) are timed beside the default. numpy's BLAS runs on one thread, as under the
``eac`` command. CPU time (``time.process_time``) is reported, median and minimum over ``--repeat`` seeds; run
it on a quiet machine for numbers to quote.

    python -m eac.bench.study_estimator_time                   # N = 12, 16, 24, 32, 48, 64; 5 seeds
    python -m eac.bench.study_estimator_time --sizes 32 --repeat 20 --json time.json
"""

from __future__ import annotations

import os

#: One BLAS thread, as the ``eac`` command sets it (must precede numpy's first import to take effect).
BLAS_THREAD_VARIABLE = "OPENBLAS_NUM_THREADS"
os.environ.setdefault(BLAS_THREAD_VARIABLE, "1")

import argparse  # noqa: E402 - after the BLAS setting above
import json  # noqa: E402 - after the BLAS setting above
import time  # noqa: E402 - after the BLAS setting above
from pathlib import Path  # noqa: E402 - after the BLAS setting above

import numpy as np  # noqa: E402 - after the BLAS setting above
from eac.kernels.estimators import default_options, residual_shapley  # noqa: E402 - after the BLAS setting
from eac.kernels.games import make_closed_form_game  # noqa: E402 - after the BLAS setting above

SIZES = (12, 16, 24, 32, 48, 64)
REPEAT = 5
GAME = "detectors"
#: The issue's targets for fit + values on this CPU: ≤ 30 ms at N = 32, ≤ 100 ms at N = 64.
TARGET_MS = {32: 30.0, 64: 100.0}
#: The estimator as its first version ran (reproduces its values to rounding).
FIRST_VERSION = {"surrogate_mc": "strata", "refit": "rounds"}
PHASES = ("evaluations", "fit", "terms", "other", "estimator")


class _TimedGame:
    """The game as a value function that adds up the CPU time spent inside it."""

    def __init__(self, game):
        self.game, self.cpu = game, 0.0

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        start = time.process_time()
        out = self.game(coalitions)
        self.cpu += time.process_time() - start
        return out


def time_one(n: int, seed: int, options: dict) -> dict:
    """CPU seconds per phase of one estimate at n concepts (options on top of the defaults for n)."""
    fn = _TimedGame(make_closed_form_game(GAME, n, seed=0))
    start = time.process_time()
    est = residual_shapley(fn, n, np.random.default_rng(seed), **{**default_options(n), **options})
    total = time.process_time() - start
    fit, terms = est.info["cpu_seconds"]["fit"], est.info["cpu_seconds"]["terms"]
    estimator = total - fn.cpu
    return {"evaluations": fn.cpu, "fit": fit, "terms": terms, "other": estimator - fit - terms,
            "estimator": estimator, "rows": est.evaluations, "rounds": est.info["rounds"], "stop": est.stop_reason}


def run(sizes: tuple[int, ...], repeat: int, log=print) -> list[dict]:
    rows = []
    for n in sizes:
        for label, options in (("default", {}), ("first version", FIRST_VERSION)):
            runs = [time_one(n, seed, options) for seed in range(repeat)]
            row = {"n": n, "settings": label, "repeat": repeat,
                   "rows": float(np.mean([r["rows"] for r in runs])),
                   "rounds": float(np.mean([r["rounds"] for r in runs]))}
            for phase in PHASES:
                ms = np.array([r[phase] for r in runs]) * 1e3
                row[f"{phase}_ms"] = float(np.median(ms))
                row[f"{phase}_ms_min"] = float(ms.min())
            rows.append(row)
            log(f"n={n} {label}: estimator {row['estimator_ms']:.1f} ms (median of {repeat})")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| N | settings | rows | rounds | fit ms | terms ms | other ms | **estimator ms** (min) | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = TARGET_MS.get(r["n"])
        lines.append(
            f"| {r['n']} | {r['settings']} | {r['rows']:.0f} | {r['rounds']:.1f} | {r['fit_ms']:.1f} | "
            f"{r['terms_ms']:.1f} | {r['other_ms']:.1f} | **{r['estimator_ms']:.1f}** ({r['estimator_ms_min']:.1f}) | "
            f"{f'≤ {target:.0f} ms' if target and r['settings'] == 'default' else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of concepts N")
    p.add_argument("--repeat", type=int, default=REPEAT, help="seeds per N (median and minimum reported)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = run(tuple(args.sizes), args.repeat)
    print(f"\nEstimator CPU time per explanation (game {GAME!r}; {BLAS_THREAD_VARIABLE}="
          f"{os.environ.get(BLAS_THREAD_VARIABLE)}; load average at start {load:.2f}; medians over {args.repeat} "
          "seeds, minimum in parentheses)\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"game": GAME, "load_average": load, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
