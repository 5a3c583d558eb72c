"""Consistent Shapley-value estimation with a fitted surrogate as control variate.

The estimator
-------------
For a set function f over n players and any coalition S of size s (0 < s < n) let

    c_i(S) = 1[i ∈ S]/s − 1[i ∉ S]/(n − s)            (Σ_i c_i(S) = 0 for every S)

Then the Shapley value is

    φ_i(f) = (f(N) − f(∅))/n + Σ_{s=1}^{n−1} E_{|S|=s}[ f(S) · c_i(S) ].

Pairing S with its complement S̄ (c(S̄) = −c(S)) folds size s onto size n − s: with pair
strata k = 1..⌊n/2⌋, weights w_k = 1 (w_{n/2} = ½ for the middle stratum of an even n) and
d_f(S) = f(S) − f(S̄),

    φ_i(f) = (f(N) − f(∅))/n + Σ_k w_k · E_k[ d_f(S) · c_i(S) ],   S uniform of size k.

A *pair* (S, S̄) is the sampling unit. Small strata are evaluated completely (their term is
then exact); the others are sampled with replacement (draws of a pair already evaluated
cost nothing). A surrogate g (cheap to evaluate everywhere) enters as a control variate per
stratum:

    E_k[d_f c] = E_k[d_g c] + E_k[(d_f − d_g) c]

with E_k[d_g c] computed exactly (all 2^n coalitions of g, n ≤ 12) or by Monte Carlo of what a
linear control variate of g leaves (no classifier calls; its error is added to the standard
error; :mod:`eac.kernels.control`), and the second term the sample mean of the residual units. g is
**cross-fitted**: sampled pairs are dealt to K folds and the pairs of fold j are corrected
by g_{−j}, fitted on every other evaluated coalition, so g never corrects a coalition it
was fitted on and each corrected unit has the conditional mean of the exact term.

Properties (each shown by ``tests/kernels/test_estimators.py``):

* **Consistent**: the residual means converge to the stratum means as draws grow; with
  every stratum enumerated the result is exact.
* **Exact efficiency**: Σ_i c_i(S) = 0 for every S, so Σ_i φ̂_i = f(N) − f(∅) for every
  draw, up to rounding.
* **Honest standard errors**: the pair is the unit; the variance is the stratified sum
  Σ_k Var_k / m_k over sampled strata (enumerated strata contribute none: finite-population
  correction to zero), plus the Monte-Carlo variance of the surrogate's stratum terms when
  they are sampled. Each concept's within-stratum variance is floored by a pooled estimate
  (mean squared residual × E[c_i²]) so a concept that is rarely inside the sampled
  coalitions cannot show a spuriously small variance.
* **Stopping on what users look at**: from ``min_evaluations`` on the sampler stops when the
  top-k ranking is resolved (every adjacent difference among the top k + 1, estimated from
  the shared paired units, exceeds z standard errors: ``"resolved"``), when every value's
  interval half-width is below ``rel_tol`` × the largest |value| (``"precise"``), or at
  ``max_evaluations`` (``"budget"``). With 2^n ≤ ``max_evaluations`` the function is
  enumerated and the values are exact (``"enumerated"``). The default schedule (cap, minimum,
  round size) depends on n: :func:`default_options`.
* **Cheap beside the evaluations**: the surrogates of all folds are fitted in one batched Newton
  and refitted only when the stopping rule is consulted (``refit="checks"``); the stopping rule
  and the allocation work on all strata at once (bench/results/estimator_time.md).
  ``surrogate_mc="strata", refit="rounds"`` reproduce the first version's values.

Surrogates (:data:`SURROGATES`): ``"logistic"`` σ(α·b + β) fitted by binary cross-entropy
(:func:`eac.kernels.surrogate.fit_logistic`); ``"pie"`` softmax(Fc·(W·b + c) + bias)[y]
through the classifier's own head, W fitted in closed form on the recorded features (needs
``head`` and a ``value_fn`` that returns features); ``"pairwise"`` a logistic model with
products b_i·b_j for the pairs that best explain the additive fit's residuals; ``"linear"``
the least-squares fit of the pair differences d_f on x = 2b − 1 (the additive part of the
game, as in regression-adjusted Monte Carlo); ``"none"`` g ≡ 0, the plain unbiased
estimator (ablation).

Comparators (for tests and ``eac.bench.study_estimators``): :func:`kernel_shap` (paired,
constrained KernelSHAP), :func:`surrogate_only_shapley` (the previous default: Shapley
values of a logistic surrogate, no correction), :func:`leave_one_out`.

References: Witter, Liu & Musco, "Regression-adjusted Monte Carlo estimators for Shapley
values and probabilistic values" (arXiv 2506.11849); Musco & Witter, "Provably accurate
Shapley value estimation via leverage score sampling" (arXiv 2410.01917); Covert & Lee,
"Improving KernelSHAP" (arXiv 2012.01536).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import comb

import numpy as np
from eac.kernels.control import (
    REFITS,
    SURROGATE_ENUM_MAX_N,
    SURROGATE_MC,
    SURROGATES,
    WINDOWS_ENUM_MAX_N,
    Enumeration,
    Model,
    StrataMC,
    SurrogateFits,
    TermEstimate,
    WindowsMC,
    as_matrix,
    c_matrix,
    evaluate,
    fit_logistic_surrogate,
    fit_surrogates,
    stratum_weight,
)
from eac.kernels.shapley import MAX_ENUMERATION_N, all_coalitions, exact_shapley, kernel_coalitions, tabulate

#: Default surrogate, chosen by ``python -m eac.bench.study_estimators``
#: (bench/results/estimators.md).
DEFAULT_SURROGATE = "pairwise"
#: Default way to estimate the surrogate's stratum terms above 16 concepts, and when to refit the fold
#: surrogates (bench/results/estimators.md: same fidelity as the first version's "strata"/"rounds").
DEFAULT_SURROGATE_MC = "windows"
DEFAULT_REFIT = "checks"
#: The default schedule (value_fn rows, ∅ and N included; bench/results/estimators.md, "Schedules"): at most
#: max(SCHEDULE_FLOOR, SCHEDULE_PER_CONCEPT·N) coalitions, in rounds (one value_fn call each) of 1/SCHEDULE_ROUNDS
#: of that cap; the stopping rule is consulted from max(SCHEDULE_MIN_FLOOR, SCHEDULE_MIN_SHARE·cap) on. Up to 16
#: concepts this is the first version's 384–512 in rounds of 64, where the fidelity targets are met. A fixed budget
#: leaves fewer pairs per size stratum as N grows, so its error grows with N: the cap grows with N beyond (the
#: study at N = 24–32: Spearman 0.95–0.96 at 512, 0.97 at 32·N; the issue's photographs at N ≈ 32: 0.907 at 513
#: evaluations, 0.940 at 1024). The minimum grows more slowly: at N = 24–32 consulting the rule from ½ of the cap
#: on stopped as well as from ¾ (same fidelity, fewer evaluations), while below 384 early stops cost fidelity at
#: N = 12–16.
SCHEDULE_FLOOR = 512
SCHEDULE_PER_CONCEPT = 32
SCHEDULE_MIN_FLOOR = 384
SCHEDULE_MIN_SHARE = 0.5
SCHEDULE_ROUNDS = 8
#: Stopping: the top-3 ranking resolved, or every 95 % half-width ≤ 5 % of the top value.
DEFAULT_TOP_K = 3
DEFAULT_REL_TOL = 0.05
#: Normal quantile of the reported intervals (95 %).
DEFAULT_Z = 1.96
#: Cross-fitting folds: g_{−j} is fitted on (K−1)/K of the sampled pairs.
DEFAULT_FOLDS = 4
#: Fewest draws per sampled stratum (a variance needs ≥ 2; 4 keeps it from being a coin flip).
MIN_STRATUM_DRAWS = 4
#: A stratum is evaluated completely once its planned draws reach this fraction of its pairs
#: (with replacement, m = P/2 draws already hit ~40 % of the pairs; enumerating is exact).
ENUMERATE_FRACTION = 0.5
#: Rounds in a row without a new distinct coalition after which sampling gives up (the
#: sampled strata are exhausted to within what repeated draws can still find).
MAX_STALLED_ROUNDS = 3
#: Values closer than this (relative to the largest |value|) count as tied when enumerated.
EXACT_TIE_RTOL = 1e-9
#: ``refit="checks"``: the surrogates are refitted at a check once the evaluations have grown by this share since
#: their last fit (a refit on a few more rows changes them little; each g_{−j} stays independent of the pairs it
#: corrects either way).
REFIT_GROWTH = 0.25
#: Added to a stratum's Neyman weight (a stratum whose units do not vary still gets draws).
SIGMA_EPS = 1e-12

ValueFn = Callable[[np.ndarray], object]


@dataclass
class ShapleyEstimate:
    """Shapley values of a set function with standard errors and how the run ended.

    Attributes
    ----------
    values : ndarray of float64, N×T
        Estimated Shapley values per concept (rows) and target (columns).
    stderr : ndarray of float64, N×T
        Standard error of each value (0 when exact).
    evaluations : int
        Distinct coalitions passed to ``value_fn`` (∅ and N included).
    stop_reason : str
        ``"resolved"``, ``"precise"``, ``"budget"`` or ``"enumerated"``.
    ties : list of list of list of int
        Per target, groups (size ≥ 2) of concepts that are rank-adjacent and whose paired
        difference is not significant at the interval level (its interval contains 0).
    info : dict
        ``surrogate``, ``r2_heldout`` (per target), ``rounds``, ``history`` (per round:
        evaluations, and where the stopping rule was consulted max stderr, resolved, precise;
        ``None`` before ``min_evaluations``), ``efficiency_gap`` (per target),
        ``enumerated_strata``, ``draws`` (per sampled stratum), ``folds``, ``surrogate_mc``, ``refit``,
        ``fit_seconds`` (wall time fitting the surrogates and computing their stratum terms), ``seconds`` and
        ``cpu_seconds`` (wall and CPU time of those two phases: ``fit``, ``terms``).
    """

    values: np.ndarray
    stderr: np.ndarray
    evaluations: int
    stop_reason: str
    ties: list[list[list[int]]]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _stratum_pairs(n: int, k: int) -> int:
    return comb(n, k) // 2 if 2 * k == n else comb(n, k)


def _enumerate_stratum(n: int, k: int) -> np.ndarray:
    """Every pair of stratum k as its size-k side S, P_k×n bool (middle stratum: S ∋ 0)."""
    combos = itertools.combinations(range(n), k)
    if 2 * k == n:
        combos = (c for c in combos if c[0] == 0)
    idx = np.array(list(combos), dtype=np.int64)
    out = np.zeros((len(idx), n), dtype=bool)
    out[np.arange(len(idx))[:, None], idx] = True
    return out


def _tie_groups(order: np.ndarray, tied_next: np.ndarray) -> list[list[int]]:
    groups, current = [], [int(order[0])]
    for r in range(len(order) - 1):
        if tied_next[r]:
            current.append(int(order[r + 1]))
        else:
            if len(current) > 1:
                groups.append(current)
            current = [int(order[r + 1])]
    if len(current) > 1:
        groups.append(current)
    return groups


def _exact_ties(values: np.ndarray) -> list[list[list[int]]]:
    out = []
    for t in range(values.shape[1]):
        v = values[:, t]
        order = np.argsort(-v, kind="stable")
        tol = EXACT_TIE_RTOL * max(float(np.abs(v).max(initial=0.0)), 1e-300)
        out.append(_tie_groups(order, np.abs(np.diff(v[order])) <= tol))
    return out


# --------------------------------------------------------------------------- evaluation store


#: Coalitions of up to this many concepts are keyed by one 64-bit integer (faster than bytes).
INT_KEY_MAX_N = 64


def _keys(coalitions: np.ndarray) -> list:
    """A hashable key per row of a M×N bool matrix (an int for N ≤ 64, else bytes)."""
    packed = np.packbits(coalitions, axis=1)
    if coalitions.shape[1] <= INT_KEY_MAX_N:
        padded = np.zeros((len(packed), 8), np.uint8)
        padded[:, :packed.shape[1]] = packed
        return padded.view(np.uint64).ravel().tolist()
    return [p.tobytes() for p in packed]


class _Store:
    """Distinct evaluated coalitions, their values (M×T) and optional features (M×D)."""

    def __init__(self, value_fn: ValueFn, n: int, want_features: bool):
        self.value_fn, self.n, self.want_features = value_fn, n, want_features
        self.index: dict[int | bytes, int] = {}
        self.rows: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.feats: list[np.ndarray] = []
        self._x = self._v = self._f = None

    def __len__(self) -> int:
        return len(self.index)

    def ensure(self, coalitions: np.ndarray) -> np.ndarray:
        """Row indices of the coalitions, evaluating the new distinct ones in one call."""
        keys = _keys(coalitions)
        index, base = self.index, len(self.index)
        new: dict[int | bytes, int] = {}
        fresh = []
        for r, key in enumerate(keys):
            if key not in index and key not in new:
                new[key] = base + len(fresh)
                fresh.append(r)
        if new:
            batch = np.ascontiguousarray(coalitions[fresh])
            out = self.value_fn(batch)
            if self.want_features:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise ValueError("surrogate 'pie' needs value_fn to return "
                                     "(values M×T, features M×D)")
                vals, feats = as_matrix(out[0]), np.asarray(out[1], dtype=np.float64)
                if feats.shape[0] != len(batch):
                    raise ValueError(f"value_fn returned {feats.shape[0]} feature rows "
                                     f"for {len(batch)} coalitions")
            else:
                vals = as_matrix(out[0] if isinstance(out, tuple) else out)
            if vals.shape[0] != len(batch):
                raise ValueError(f"value_fn returned {vals.shape[0]} rows "
                                 f"for {len(batch)} coalitions")
            if self.vals and vals.shape[1] != self.vals[0].shape[1]:
                raise ValueError("value_fn changed its number of targets between calls")
            self.rows.append(batch)
            self.vals.append(vals)
            if self.want_features:
                self.feats.append(feats)
            self.index.update(new)
            self._x = self._v = self._f = None
        return np.fromiter(map(self.index.__getitem__, keys), dtype=np.int64, count=len(keys))

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            self._x = np.concatenate(self.rows, axis=0).astype(bool, copy=False)
        return self._x

    @property
    def v(self) -> np.ndarray:
        if self._v is None:
            self._v = np.concatenate(self.vals, axis=0)
        return self._v

    @property
    def f(self) -> np.ndarray | None:
        if self._f is None and self.feats:
            self._f = np.concatenate(self.feats, axis=0)
        return self._f


# --------------------------------------------------------------------------- main estimator


class _Clock:
    """Wall and CPU seconds per phase (``fit``: the fold surrogates; ``terms``: their stratum terms)."""

    def __init__(self) -> None:
        self.wall = {"fit": 0.0, "terms": 0.0}
        self.cpu = {"fit": 0.0, "terms": 0.0}
        self._phase: str | None = None
        self._start = (0.0, 0.0)

    def start(self, phase: str) -> None:
        self._phase, self._start = phase, (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        wall, cpu = self._start
        self.wall[self._phase] += time.perf_counter() - wall
        self.cpu[self._phase] += time.process_time() - cpu


class _Draws:
    """The sampled pairs of one stratum: row indices of S and S̄ in the store, and each pair's fold.

    The pairs are kept in growing buffers (doubled when full), so that :meth:`arrays` is a view, not a
    concatenation, and the pairs per fold are counted as they are added.
    """

    def __init__(self, folds: int) -> None:
        self._buf = np.empty((3, 0), dtype=np.int64)  # rows: S, S̄, fold
        self.count = 0
        self.per_fold = np.zeros(folds, dtype=np.int64)

    def __len__(self) -> int:
        return self.count

    def add(self, si: np.ndarray, sbi: np.ndarray, fold: np.ndarray) -> None:
        end = self.count + len(si)
        if end > self._buf.shape[1]:
            grown = np.empty((3, max(end, 2 * self._buf.shape[1])), dtype=np.int64)
            grown[:, :self.count] = self._buf[:, :self.count]
            self._buf = grown
        self._buf[0, self.count:end] = si
        self._buf[1, self.count:end] = sbi
        self._buf[2, self.count:end] = fold
        self.per_fold += np.bincount(fold, minlength=len(self.per_fold))
        self.count = end

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S rows, S̄ rows, folds) of the pairs in draw order (read-only views)."""
        view = self._buf[:, :self.count]
        view.flags.writeable = False
        return view[0], view[1], view[2]


class _Run:
    """State of one residual_shapley run (strata, draws, folds, fitted surrogates)."""

    def __init__(self, store: _Store, n: int, rng: np.random.Generator, surrogate: str,
                 head: tuple | None, folds: int, surrogate_mc: str, converge: bool):
        self.store, self.n, self.rng, self.surrogate, self.head = store, n, rng, surrogate, head
        self.folds, self.converge = folds, converge
        self.strata = list(range(1, n // 2 + 1))
        self.pairs_in = {k: _stratum_pairs(n, k) for k in self.strata}
        self.enumerated: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k → (S rows, S̄ rows)
        self.draws: dict[int, _Draws] = {k: _Draws(folds) for k in self.strata}
        self._pairs: tuple | None = None  # the sampled pairs of all strata (see _sampled_pairs)
        self.pair_fold: dict[int | bytes, int] = {}
        self.next_fold = {k: 0 for k in self.strata}
        self.anchor = store.ensure(np.array([np.zeros(n, bool), np.ones(n, bool)]))
        self.terms_source: Enumeration | StrataMC | WindowsMC | None = None
        if surrogate != "none":
            if n <= (SURROGATE_ENUM_MAX_N if surrogate_mc == "strata" else WINDOWS_ENUM_MAX_N):
                self.terms_source = Enumeration(n)
            else:
                self.terms_source = StrataMC(n) if surrogate_mc == "strata" else WindowsMC(n)
        self.fits: SurrogateFits | None = None
        self.models: list[Model] = []
        self.preds: np.ndarray | None = None  # J×M×T: every fold surrogate on every evaluated coalition
        self.fitted_on = 0  # store rows when the surrogates were last fitted
        self.units: _Units | None = None
        self.frac: dict[int, np.ndarray] = {}  # k → share of its pairs per fold
        self.terms: TermEstimate | None = None
        self.clock = _Clock()
        self.r2: np.ndarray | None = None

    # ------------------------------------------------------------------ sampling
    def sampled(self) -> list[int]:
        return [k for k in self.strata if k not in self.enumerated]

    def enumerate(self, ks: list[int]) -> None:
        if not ks:
            return
        sides = [_enumerate_stratum(self.n, k) for k in ks]
        allrows = np.concatenate([np.concatenate([s, ~s]) for s in sides])
        idx = self.store.ensure(allrows)
        pos = 0
        for k, s in zip(ks, sides, strict=True):
            m = len(s)
            self.enumerated[k] = (idx[pos:pos + m], idx[pos + m:pos + 2 * m])
            pos += 2 * m
            self.draws[k] = _Draws(self.folds)
        self._pairs = None

    def draw(self, counts: dict[int, int]) -> None:
        ks = [k for k, m in counts.items() if m > 0]
        if not ks:
            return
        # One call for every stratum's keys (the same stream as one call per stratum, in order); a row's
        # coalition is its k smallest keys.
        sizes = np.repeat(ks, [counts[k] for k in ks])
        keys = self.rng.random((len(sizes), self.n))
        kth = np.sort(keys, axis=1)[np.arange(len(sizes)), sizes - 1]
        side = keys <= kth[:, None]
        owner = np.cumsum([0] + [counts[k] for k in ks])
        allrows = np.concatenate([np.concatenate([side[owner[g]:owner[g + 1]], ~side[owner[g]:owner[g + 1]]])
                                  for g in range(len(ks))])
        idx = self.store.ensure(allrows)
        # a pair's key: its side that holds concept 0; new pairs are dealt to the folds in turn, per stratum
        pair_keys = _keys(np.where(side[:, :1], side, ~side))
        fold = np.empty(len(sizes), dtype=np.int64)
        for r, (key, k) in enumerate(zip(pair_keys, sizes.tolist(), strict=True)):
            f = self.pair_fold.get(key)
            if f is None:
                f = self.next_fold[k] % self.folds
                self.next_fold[k] += 1
                self.pair_fold[key] = f
            fold[r] = f
        for g, k in enumerate(ks):
            m = owner[g + 1] - owner[g]
            si, sbi = idx[2 * owner[g]:2 * owner[g] + m], idx[2 * owner[g] + m:2 * owner[g + 1]]
            self.draws[k].add(si, sbi, fold[owner[g]:owner[g + 1]])
        self._pairs = None

    def drawn(self, k: int) -> int:
        return self.draws[k].count

    def _sampled_pairs(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The strata with draws and their pairs, stratum after stratum in draw order: (strata, S rows,
        S̄ rows, folds, index of each pair's stratum in the strata list); kept until the next draw."""
        if self._pairs is None:
            sampled = self.with_draws()
            parts = [self.draws[k].arrays() for k in sampled]
            if parts:
                si, sbi, fold = (np.concatenate([q[i] for q in parts]) for i in range(3))
            else:
                si = sbi = fold = np.zeros(0, dtype=np.int64)
            group = np.repeat(np.arange(len(sampled)), [len(q[0]) for q in parts])
            self._pairs = (sampled, si, sbi, fold, group)
        return self._pairs

    def grown(self) -> bool:
        """Whether the evaluations have grown by REFIT_GROWTH since the surrogates were last fitted."""
        return len(self.store) >= (1.0 + REFIT_GROWTH) * self.fitted_on

    def with_draws(self) -> list[int]:
        return [k for k in self.sampled() if self.drawn(k) > 0]

    # ------------------------------------------------------------------ surrogates and units
    def fit(self, refit: bool) -> None:
        """Every sampled pair's residual unit; with ``refit`` (or before any fit) the fold surrogates g_{−j} are
        first fitted on the current evaluations, else the last fit's surrogates correct the new pairs too (each
        g_{−j} is still independent of the pairs it corrects)."""
        store, n = self.store, self.n
        x, v, f = store.x, store.v, store.f
        sampled, si, sbi, fold, group = self._sampled_pairs()
        self.frac = {k: self.draws[k].per_fold / self.draws[k].count for k in sampled}
        preds = None
        if self.surrogate != "none":
            self.clock.start("fit")
            if refit or not self.models:
                held = np.zeros((self.folds, len(store)), bool)
                held[fold, si] = True
                held[fold, sbi] = True
                self.fits = fit_surrogates(self.surrogate, x, v, ~held, f, self.head, self.converge, self.fits)
                self.models, self.fitted_on = self.fits.models, len(store)
                if self.terms_source is not None:
                    self.terms_source.draw(self.sampled(), self.rng)
                preds = evaluate(self.models, x)  # J×M×T
            elif self.preds.shape[1] < len(store):  # the same surrogates: only the rows evaluated since are new
                preds = np.concatenate([self.preds, evaluate(self.models, x[self.preds.shape[1]:])], axis=1)
            else:
                preds = self.preds
            self.terms = None
            self.clock.stop()
        self.preds = preds
        self.units = None
        if not sampled:
            self.r2 = None
            return
        d = v[si] - v[sbi]
        resid = d if preds is None else d - (preds[fold, si] - preds[fold, sbi])
        self.units = _Units(n, sampled, group, x[si], resid)
        if preds is None:
            self.r2 = None
        else:
            ks = np.array(sampled, dtype=np.float64)[group]
            scale = self.units.w[group] ** 2 * n / (ks * (n - ks)) / self.units.m[group]
            num, den = scale @ resid**2, scale @ d**2
            self.r2 = np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), np.nan)

    def _terms(self) -> TermEstimate | None:
        """The surrogates' stratum terms for the sampled strata (computed once per fit)."""
        if self.terms is None and self.models and self.terms_source is not None:
            self.clock.start("terms")
            sampled, si_drawn, sbi_drawn, _, _ = self._sampled_pairs()
            pairs = None
            if isinstance(self.terms_source, WindowsMC):
                si = np.concatenate([si_drawn] + [self.enumerated[k][0] for k in self.enumerated])
                sbi = np.concatenate([sbi_drawn] + [self.enumerated[k][1] for k in self.enumerated])
                pairs = (self.store.x[si], self.preds[:, si] - self.preds[:, sbi])
            self.terms = self.terms_source.terms(self.models, self.frac, sampled, pairs)
            self.clock.stop()
        return self.terms

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """Values and standard errors from the current fit, N×T each."""
        store, n = self.store, self.n
        v = store.v
        t = v.shape[1]
        f0, f1 = v[self.anchor[0]], v[self.anchor[1]]
        values = np.broadcast_to((f1 - f0) / n, (n, t)).copy()
        var = np.zeros((n, t))
        for k, (si, sbi) in self.enumerated.items():
            c = c_matrix(store.x[si], n, k)
            d = v[si] - v[sbi]
            values += stratum_weight(n, k) * (c.T @ d) / len(si)
        if self.units is not None:
            mean, unit_var = self.units.moments()
            values += mean
            var += unit_var
        terms = self._terms()
        if terms is not None:
            values += terms.values
            var += terms.var
        return values, np.sqrt(var)

    def diff_stderr(self, a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
        """Standard errors of φ̂_a − φ̂_b (target t, concept index arrays a, b) from the shared paired units."""
        var = np.zeros(len(a)) if self.units is None else self.units.diff_var(a, b, t)
        terms = self._terms()
        if terms is not None:
            var = var + terms.diff_var(a, b, t)
        return np.sqrt(var)

    def sigma(self) -> dict[int, float]:
        """Per sampled stratum: √(Σ_{i,t} unit variance), the Neyman allocation weight."""
        n = self.n
        spread = {} if self.units is None else self.units.spread()
        return {k: spread.get(k, stratum_weight(n, k) * np.sqrt(n / (k * (n - k))))  # prior: |d| ≈ 1
                for k in self.sampled()}


class _Units:
    """The residual units of the sampled pairs, all strata at once.

    Pair p of stratum k contributes the unit y_p = w_k·c(S_p)·r_p (N×T, r_p its residual d_f − d_g);
    a stratum's mean unit estimates its correction term, and its within-stratum variance over the m_k pairs,
    floored by the pooled second moment w_k²·E[r²]·E[c_i²] (so that a concept rarely inside the sampled
    coalitions cannot show a spuriously small variance), divided by m_k, is its share of the variance.
    """

    def __init__(self, n: int, strata: list[int], group: np.ndarray, s: np.ndarray, resid: np.ndarray):
        self.n, self.strata, self.group, self.resid = n, strata, group, resid
        ks = np.array(strata, dtype=np.float64)
        self.k = ks
        self.w = np.array([stratum_weight(n, k) for k in strata])
        self.m = np.bincount(group, minlength=len(strata)).astype(np.float64)
        inside, outside = self.w * (1.0 / ks), self.w * (-1.0 / (n - ks))  # w_k·c on either side, per stratum
        self.wc = np.where(s, inside[group][:, None], outside[group][:, None])  # P×N: w_k·c(S_p)
        self.onehot = (group[:, None] == np.arange(len(strata))[None, :]).astype(np.float64)  # P×K
        self.mean_r2 = (self.onehot.T @ resid**2) / self.m[:, None]  # K×T: E_k[r²]
        self._sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def unit_sums(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Per stratum Σ y_p and Σ y_p² of target t's units (K×N each; computed once, for the moments and the
        allocation's spread)."""
        if t not in self._sums:
            u = self.wc * self.resid[:, t:t + 1]
            self._sums[t] = (self.onehot.T @ u, self.onehot.T @ u**2)
        return self._sums[t]

    def _group_var(self, total: np.ndarray, second: np.ndarray,
                   floor_second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per stratum mean and floored variance of unit columns whose per-stratum sums are ``total`` and sums of
        squares ``second`` (K×C each): K×C each."""
        m = self.m[:, None]
        mean = total / m
        with np.errstate(divide="ignore", invalid="ignore"):
            sample = np.maximum(second - total * mean, 0.0) / (m - 1)
            floor = np.maximum(floor_second - mean**2, 0.0) * m / (m - 1)
        return mean, np.where(m >= 2, np.maximum(sample, floor), np.inf)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Σ_k mean unit and Σ_k variance/m_k, N×T each."""
        n, t = self.n, self.resid.shape[1]
        mean_out, var_out = np.zeros((n, t)), np.zeros((n, t))
        pooled = self.w[:, None] ** 2 * self.mean_r2 / (self.k * (n - self.k))[:, None]  # K×T
        for tt in range(t):
            mean, var = self._group_var(*self.unit_sums(tt), pooled[:, tt:tt + 1])
            mean_out[:, tt] = mean.sum(axis=0)
            var_out[:, tt] = (var / self.m[:, None]).sum(axis=0)
        return mean_out, var_out

    def diff_var(self, a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
        """Variance of the estimated φ_a − φ_b (target t) from the units."""
        n, k = self.n, self.k
        diff = (self.wc[:, a] - self.wc[:, b]) * self.resid[:, t:t + 1]
        # pooled floor: w²·E[r²]·E[(c_i − c_j)²], E[(c_i − c_j)²] = 2n / ((n − 1)·k·(n − k))
        second = self.w**2 * self.mean_r2[:, t] * 2.0 * n / ((n - 1) * k * (n - k))
        _, var = self._group_var(self.onehot.T @ diff, self.onehot.T @ diff**2, second[:, None])
        return (var / self.m[:, None]).sum(axis=0)

    def spread(self) -> dict[int, float]:
        """Per stratum with ≥ 2 pairs: √(Σ_{i,t} sample variance of its units)."""
        out = {}
        m = self.m[:, None]
        total_var = np.zeros(len(self.strata))
        for tt in range(self.resid.shape[1]):
            total, second = self.unit_sums(tt)
            with np.errstate(divide="ignore", invalid="ignore"):
                total_var += (np.maximum(second - total**2 / m, 0.0) / (m - 1)).sum(axis=1)
        for g, k in enumerate(self.strata):
            if self.m[g] >= 2:
                out[k] = float(np.sqrt(total_var[g])) + SIGMA_EPS
        return out


def _allocate(run: _Run, pairs: int) -> tuple[list[int], dict[int, int]]:
    """Split ``pairs`` new pairs: strata to enumerate, then draws per sampled stratum (Neyman)."""
    sigma = run.sigma()
    active = dict(sigma)
    drawn = {k: run.drawn(k) for k in active}
    budget = pairs
    to_enum: list[int] = []
    while active:
        total_draws = sum(drawn[k] for k in active) + budget
        norm = sum(active.values())
        target = {k: total_draws * s / norm for k, s in active.items()}
        cand = [k for k in active if target[k] >= ENUMERATE_FRACTION * run.pairs_in[k]
                and run.pairs_in[k] - drawn[k] <= budget]
        if not cand:
            break
        k = max(cand, key=lambda q: target[q] / run.pairs_in[q])
        to_enum.append(k)
        budget -= run.pairs_in[k]  # upper bound: some of its pairs may already be evaluated
        del active[k]
    counts: dict[int, int] = {}
    if active and budget > 0:
        total_draws = sum(drawn[k] for k in active) + budget
        norm = sum(active.values())
        deficit = {k: max(total_draws * s / norm - drawn[k], 0.0) for k, s in active.items()}
        for k in active:  # every sampled stratum keeps a minimal sample for its variance
            deficit[k] = max(deficit[k], MIN_STRATUM_DRAWS - drawn[k])
        tot = sum(deficit.values())
        if tot > 0:
            raw = {k: budget * dv / tot for k, dv in deficit.items()}
            counts = {k: int(np.floor(r)) for k, r in raw.items()}
            rest = budget - sum(counts.values())
            for k in sorted(raw, key=lambda q: raw[q] - counts[q], reverse=True)[:rest]:
                counts[k] += 1
    return to_enum, counts


def _check_stop(run: _Run, values: np.ndarray, stderr: np.ndarray, top_k: int, rel_tol: float,
                z: float) -> tuple[bool, bool, list[list[list[int]]]]:
    """(resolved, precise, tie groups) for the current estimate."""
    n, t = values.shape
    resolved, ties = True, []
    k = min(top_k, n - 1)
    for tt in range(t):
        order = np.argsort(-values[:, tt], kind="stable")
        se = run.diff_stderr(order[:-1], order[1:], tt)
        tied = values[order[:-1], tt] - values[order[1:], tt] <= z * se
        if tied[:k].any():
            resolved = False
        ties.append(_tie_groups(order, tied))
    scale = np.abs(values).max(axis=0)
    precise = bool(np.all(z * stderr.max(axis=0) <= rel_tol * scale))
    return resolved, precise, ties


def default_options(n: int) -> dict:
    """The default schedule for n concepts: ``min_evaluations``, ``max_evaluations``, ``round_size``."""
    cap = max(SCHEDULE_FLOOR, SCHEDULE_PER_CONCEPT * n)
    return {"min_evaluations": schedule_minimum(cap), "max_evaluations": cap, "round_size": cap // SCHEDULE_ROUNDS}


def schedule_minimum(cap: int) -> int:
    """Coalitions from which the stopping rule is consulted under a cap: max(384, ½·cap), at most the cap."""
    return min(cap, max(SCHEDULE_MIN_FLOOR, int(SCHEDULE_MIN_SHARE * cap)))


def schedule_summary() -> str:
    """The default schedule in words (the README and the method table quote it)."""
    share = {0.5: "½", 0.75: "¾"}.get(SCHEDULE_MIN_SHARE, f"{SCHEDULE_MIN_SHARE:g}×")
    return (f"at most max({SCHEDULE_FLOOR}, {SCHEDULE_PER_CONCEPT}·N) coalitions for N concepts, in rounds of "
            f"1/{SCHEDULE_ROUNDS} of that cap; from max({SCHEDULE_MIN_FLOOR}, {share}·cap) coalitions on, it stops "
            "once the stopping rule is met")


def minimum_evaluations(n: int) -> int:
    """Fewest value_fn rows :func:`residual_shapley` needs below enumeration: ∅, N and
    :data:`MIN_STRATUM_DRAWS` pairs per size stratum (⌊n/2⌋ strata)."""
    return 2 + 2 * MIN_STRATUM_DRAWS * (n // 2)


def residual_shapley(
    value_fn: ValueFn,
    n: int,
    rng: np.random.Generator,
    *,
    surrogate: str = DEFAULT_SURROGATE,
    head: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    min_evaluations: int | None = None,
    max_evaluations: int | None = None,
    round_size: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    rel_tol: float = DEFAULT_REL_TOL,
    z: float = DEFAULT_Z,
    folds: int = DEFAULT_FOLDS,
    surrogate_mc: str = DEFAULT_SURROGATE_MC,
    refit: str = DEFAULT_REFIT,
) -> ShapleyEstimate:
    """Shapley values of ``value_fn`` with a cross-fitted surrogate as control variate.

    Parameters
    ----------
    value_fn : callable
        M×N bool coalitions → M×T float64 values (or M for one target), called once per
        round with the round's new distinct coalitions. With ``surrogate="pie"`` it returns
        ``(values M×T, features M×D)``, the classifier's penultimate features of the same
        forward pass.
    n : int
        Number of players (concepts), ≥ 1.
    rng : numpy.random.Generator
        Source of every random draw (coalitions, folds, surrogate Monte Carlo).
    surrogate : str
        One of :data:`SURROGATES`.
    head : tuple (weight K×D, bias K, classes T), optional
        The classifier's last layer and the explained classes; required for ``"pie"``.
    min_evaluations, max_evaluations : int, optional
        The stopping rule is consulted only from ``min(min_evaluations, max_evaluations)``
        on; ``max_evaluations`` caps the distinct coalitions evaluated (∅ and N included). If 2^n ≤
        ``max_evaluations`` the function is enumerated and the values are exact. Default: the schedule for n
        (:func:`default_options`); a cap given alone gets the schedule's minimum for it
        (:func:`schedule_minimum`).
    round_size : int, optional
        New coalitions per round (one ``value_fn`` call each); default: the schedule's.
    top_k : int
        Stop as ``"resolved"`` once the top ``top_k`` ranking is separated by the intervals.
    rel_tol : float
        Stop as ``"precise"`` once z·max stderr ≤ ``rel_tol`` · max |value| (every target).
    z : float
        Normal quantile of the intervals used for stopping and ties (1.96: 95 %).
    folds : int
        Cross-fitting folds (≥ 2).
    surrogate_mc : str
        How the surrogate's stratum terms are estimated above 16 concepts (one of :data:`SURROGATE_MC`):
        ``"windows"`` (Monte Carlo of what a linear control variate leaves, on permutation windows) or
        ``"strata"`` (independent pairs per stratum, the first version: reproduces its values).
    refit : str
        When and how the fold surrogates are refitted (one of :data:`REFITS`): ``"checks"`` — after the pilot
        round, then when the stopping rule is consulted and the evaluations have grown by :data:`REFIT_GROWTH`
        since the last fit (other rounds correct their new pairs with the last fit), a few Newton steps each
        from the previous fit (:mod:`eac.kernels.control`); ``"rounds"`` — every round, Newton to convergence
        (the first version). ``surrogate_mc="strata", refit="rounds"`` reproduce the first
        version's values to rounding.

    Returns
    -------
    ShapleyEstimate
        ``values`` and ``stderr`` N×T; see the class for the other fields.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if surrogate_mc not in SURROGATE_MC:
        raise ValueError(f"surrogate_mc must be one of {', '.join(SURROGATE_MC)}, got {surrogate_mc!r}")
    if refit not in REFITS:
        raise ValueError(f"refit must be one of {', '.join(REFITS)}, got {refit!r}")
    if surrogate == "pie" and head is None:
        raise ValueError("surrogate 'pie' needs head=(weight K×D, bias K, classes T)")
    if folds < 2:
        raise ValueError(f"folds must be ≥ 2, got {folds}")
    schedule = default_options(n)
    if max_evaluations is None:
        max_evaluations = schedule["max_evaluations"]
    elif min_evaluations is None:  # a cap alone: the stopping rule from the schedule's minimum for it on
        min_evaluations = schedule_minimum(max_evaluations)
    min_evaluations = schedule["min_evaluations"] if min_evaluations is None else min_evaluations
    round_size = schedule["round_size"] if round_size is None else round_size
    if round_size < 2:
        raise ValueError(f"round_size must be ≥ 2, got {round_size}")
    min_evaluations = min(min_evaluations, max_evaluations)
    if z <= 0 or rel_tol < 0 or top_k < 1:
        raise ValueError("z must be > 0, rel_tol ≥ 0 and top_k ≥ 1")
    if n <= MAX_ENUMERATION_N and 2**n <= max_evaluations:
        coal = all_coalitions(n)
        store = _Store(value_fn, n, surrogate == "pie")
        idx = store.ensure(coal)
        table = store.v[idx]
        values = exact_shapley(table, n)
        gap = np.abs(values.sum(axis=0) - (table[-1] - table[0]))
        info = {"surrogate": None, "rounds": 1, "history": [], "efficiency_gap": gap.tolist()}
        return ShapleyEstimate(values, np.zeros_like(values), len(store), "enumerated",
                               _exact_ties(values), info)
    strata_count = n // 2
    least = minimum_evaluations(n)
    if max_evaluations < least:
        raise ValueError(f"max_evaluations must be ≥ {least} for n = {n} ({MIN_STRATUM_DRAWS} "
                         f"pairs per size stratum plus ∅ and N), got {max_evaluations}")
    store = _Store(value_fn, n, surrogate == "pie")
    run = _Run(store, n, rng, surrogate, head, folds, surrogate_mc, converge=refit == "rounds")
    history: list[dict] = []
    stalled = 0
    stop = "budget"
    ties: list = []
    values = stderr = None
    current = False  # whether values/stderr/ties are those of the latest fit
    while True:
        room = (max_evaluations - len(store)) // 2
        pairs = min(room, max(1, (round_size - (0 if history else 2)) // 2))
        if pairs <= 0:
            break
        if not history:
            # Pilot: the singleton stratum (n pairs; units ±1, the largest) is made exact when
            # it fits, and every other stratum gets MIN_STRATUM_DRAWS pairs for a first variance.
            pilot = 2 * MIN_STRATUM_DRAWS * (strata_count - 1)
            run.enumerate([1] if 2 + 2 * n + pilot <= max_evaluations else [])
            counts = {k: MIN_STRATUM_DRAWS for k in run.sampled()}
        else:
            to_enum, counts = _allocate(run, pairs)
            room_rows = max_evaluations - len(store)
            run.enumerate([k for k in to_enum if run.pairs_in[k] * 2 <= room_rows])
            counts = {k: m for k, m in counts.items() if k not in run.enumerated}
        before = len(store)
        run.draw(counts)
        check = len(store) >= min_evaluations  # the stopping rule is consulted: values, intervals, ties
        run.fit(refit=refit == "rounds" or (check and run.grown()))
        entry: dict = {"evaluations": len(store), "max_stderr": None, "resolved": None, "precise": None}
        current = False
        if check:
            values, stderr = run.estimate()
            resolved, precise, ties = _check_stop(run, values, stderr, top_k, rel_tol, z)
            current = True
            entry.update(max_stderr=float(stderr.max()), resolved=resolved, precise=precise)
            if resolved or precise:
                history.append(entry)
                stop = "resolved" if resolved else "precise"
                break
        history.append(entry)
        stalled = stalled + 1 if len(store) == before else 0
        if stalled >= MAX_STALLED_ROUNDS:  # draws keep hitting evaluated pairs: nothing left to buy
            break
    if not current:
        if refit == "rounds" or run.grown():
            run.fit(refit=True)
        values, stderr = run.estimate()
        _, _, ties = _check_stop(run, values, stderr, top_k, rel_tol, z)
    v = store.v
    gap = np.abs(values.sum(axis=0) - (v[run.anchor[1]] - v[run.anchor[0]]))
    info = {
        "surrogate": surrogate,
        "r2_heldout": None if run.r2 is None else run.r2.tolist(),
        "rounds": len(history),
        "history": history,
        "efficiency_gap": gap.tolist(),
        "enumerated_strata": sorted(run.enumerated),
        "draws": {k: run.drawn(k) for k in run.sampled()},
        "folds": folds,
        "surrogate_mc": None if run.terms_source is None or isinstance(run.terms_source, Enumeration) else surrogate_mc,
        "refit": refit,
        "fit_seconds": sum(run.clock.wall.values()),
        "seconds": dict(run.clock.wall),
        "cpu_seconds": dict(run.clock.cpu),
    }
    return ShapleyEstimate(values, stderr, len(store), stop, ties, info)


# --------------------------------------------------------------------------- comparators


def kernel_shap(value_fn: ValueFn, n: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Paired KernelSHAP: constrained least squares on kernel-sampled coalition pairs.

    Parameters
    ----------
    value_fn : callable, M×N bool → M×T (or M)
    n : int
    budget : int
        Rows in all (∅ and N included).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float64, N×T
        Exactly efficient values (the constraint Σφ = f(N) − f(∅) is eliminated).
    """
    if budget < 4:
        raise ValueError(f"kernel_shap needs a budget ≥ 4, got {budget}")
    ends = as_matrix(value_fn(np.array([np.zeros(n, bool), np.ones(n, bool)])))
    v0, v1 = ends[0], ends[1]
    if n == 1:
        return (v1 - v0)[None, :]
    zc = kernel_coalitions(budget - 2, n, rng, paired=True)
    y = as_matrix(value_fn(zc))
    zf = zc.astype(np.float64)
    rhs = y - v0 - zf[:, -1:] * (v1 - v0)
    design = zf[:, :-1] - zf[:, -1:]
    head, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    last = (v1 - v0) - head.sum(axis=0)
    return np.concatenate([head, last[None]], axis=0)


def surrogate_only_shapley(value_fn: ValueFn, n: int, budget: int,
                           rng: np.random.Generator) -> np.ndarray:
    """The previous default: exact Shapley values of a logistic surrogate σ(α·b + β), no correction.

    Fitted (BCE) on ∅, N and ``budget − 2`` kernel-sampled coalition pairs; values of g by
    enumeration (n ≤ :data:`SURROGATE_ENUM_MAX_N`) or 20 000 antithetic permutations.

    Returns
    -------
    ndarray of float64, N×T
    """
    x = np.concatenate([np.array([np.zeros(n, bool), np.ones(n, bool)]),
                        kernel_coalitions(max(budget - 2, 2), n, rng, paired=True)])
    model = fit_logistic_surrogate(x, as_matrix(value_fn(x)))
    if n <= SURROGATE_ENUM_MAX_N:
        return exact_shapley(tabulate(lambda b: model(b > 0.5), n), n)
    from eac.kernels.shapley import permutation_shapley

    values, _ = permutation_shapley(lambda b: model(b > 0.5), n, 20000, rng)
    return values


def leave_one_out(value_fn: ValueFn, n: int) -> np.ndarray:
    """Leave-one-out (feature ablation): f(N) − f(N ∖ i), N×T (n + 1 rows)."""
    rows = np.concatenate([np.ones((1, n), bool), ~np.eye(n, dtype=bool)])
    v = as_matrix(value_fn(rows))
    return v[0][None, :] - v[1:]
