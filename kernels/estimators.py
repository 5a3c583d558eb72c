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

with E_k[d_g c] computed exactly (all 2^n coalitions of g, n ≤ :data:`SURROGATE_ENUM_MAX_N`)
or by a large Monte-Carlo sample of g (no classifier calls; its error is added to the
standard error), and the second term the sample mean of the residual units. g is
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
* **Stopping on what users look at**: after ``min_evaluations`` the sampler stops when the
  top-k ranking is resolved (every adjacent difference among the top k + 1, estimated from
  the shared paired units, exceeds z standard errors: ``"resolved"``), when every value's
  interval half-width is below ``rel_tol`` × the largest |value| (``"precise"``), or at
  ``max_evaluations`` (``"budget"``). With 2^n ≤ ``max_evaluations`` the function is
  enumerated and the values are exact (``"enumerated"``).

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
from eac.kernels.shapley import (
    MAX_ENUMERATION_N,
    all_coalitions,
    exact_shapley,
    kernel_coalitions,
    softmax_value_fn,
    tabulate,
)
from eac.kernels.surrogate import fit_linear_logits, fit_logistic

#: Names accepted by ``residual_shapley(surrogate=...)``.
SURROGATES = ("logistic", "pie", "pairwise", "linear", "none")
#: Default surrogate, chosen by ``python -m eac.bench.study_estimators``
#: (bench/results/estimators.md).
DEFAULT_SURROGATE = "pairwise"
#: Default budget (value_fn rows, including ∅ and N); see bench/results/estimators.md.
DEFAULT_MIN_EVALUATIONS = 384
DEFAULT_MAX_EVALUATIONS = 512
#: Rows per round (one value_fn call per round, plus the ∅/N anchors in the first).
DEFAULT_ROUND_SIZE = 64
#: Stopping: the top-3 ranking resolved, or every 95 % half-width ≤ 10 % of the top value.
DEFAULT_TOP_K = 3
DEFAULT_REL_TOL = 0.05
#: Normal quantile of the reported intervals (95 %).
DEFAULT_Z = 1.96
#: Cross-fitting folds: g_{−j} is fitted on (K−1)/K of the sampled pairs.
DEFAULT_FOLDS = 4
#: Largest n for which the surrogate's stratum terms are computed over all 2^n coalitions
#: (2^16 rows: a few ms per surrogate); above, by Monte Carlo.
SURROGATE_ENUM_MAX_N = 16
#: Monte-Carlo pairs per stratum for the surrogate's stratum terms when n > SURROGATE_ENUM_MAX_N.
SURROGATE_MC_PAIRS = 4096
#: Fewest draws per sampled stratum (a variance needs ≥ 2; 4 keeps it from being a coin flip).
MIN_STRATUM_DRAWS = 4
#: A stratum is evaluated completely once its planned draws reach this fraction of its pairs
#: (with replacement, m = P/2 draws already hit ~40 % of the pairs; enumerating is exact).
ENUMERATE_FRACTION = 0.5
#: Pairs b_i·b_j the ``pairwise`` surrogate adds (at most; also ≤ n).
PAIRWISE_TERMS = 16
#: Ridge of the ``linear`` surrogate's normal equations, relative to their mean diagonal.
LINEAR_RIDGE = 1e-6
#: Rounds in a row without a new distinct coalition after which sampling gives up (the
#: sampled strata are exhausted to within what repeated draws can still find).
MAX_STALLED_ROUNDS = 3
#: Values closer than this (relative to the largest |value|) count as tied when enumerated.
EXACT_TIE_RTOL = 1e-9

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
        evaluations, max stderr, resolved, precise), ``efficiency_gap`` (per target),
        ``enumerated_strata``, ``draws`` (per sampled stratum), ``folds``.
    """

    values: np.ndarray
    stderr: np.ndarray
    evaluations: int
    stop_reason: str
    ties: list[list[list[int]]]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _as_matrix(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64)
    return out[:, None] if out.ndim == 1 else out


def _c_matrix(s: np.ndarray, n: int, k: int) -> np.ndarray:
    """c(S) = 1[i∈S]/k − 1[i∉S]/(n−k) for the rows of a m×n bool matrix."""
    return np.where(s, 1.0 / k, -1.0 / (n - k))


def _stratum_weight(n: int, k: int) -> float:
    return 0.5 if 2 * k == n else 1.0


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


def _draw_stratum(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m uniform size-k coalitions (with replacement), m×n bool."""
    return rng.random((m, n)).argsort(axis=1).argsort(axis=1) < k


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


class _Store:
    """Distinct evaluated coalitions, their values (M×T) and optional features (M×D)."""

    def __init__(self, value_fn: ValueFn, n: int, want_features: bool):
        self.value_fn, self.n, self.want_features = value_fn, n, want_features
        self.index: dict[bytes, int] = {}
        self.rows: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.feats: list[np.ndarray] = []
        self._x = self._v = self._f = None

    def __len__(self) -> int:
        return len(self.index)

    def ensure(self, coalitions: np.ndarray) -> np.ndarray:
        """Row indices of the coalitions, evaluating the new distinct ones in one call."""
        packed = np.packbits(coalitions, axis=1)
        keys = [p.tobytes() for p in packed]
        new: dict[bytes, int] = {}
        for key, row in zip(keys, coalitions, strict=True):
            if key not in self.index and key not in new:
                new[key] = len(self.index) + len(new)
                self.rows.append(row)
        if new:
            batch = np.array(self.rows[-len(new):])
            out = self.value_fn(batch)
            if self.want_features:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise ValueError("surrogate 'pie' needs value_fn to return "
                                     "(values M×T, features M×D)")
                vals, feats = _as_matrix(out[0]), np.asarray(out[1], dtype=np.float64)
                if feats.shape[0] != len(batch):
                    raise ValueError(f"value_fn returned {feats.shape[0]} feature rows "
                                     f"for {len(batch)} coalitions")
                self.feats.append(feats)
            else:
                vals = _as_matrix(out[0] if isinstance(out, tuple) else out)
            if vals.shape[0] != len(batch):
                raise ValueError(f"value_fn returned {vals.shape[0]} rows "
                                 f"for {len(batch)} coalitions")
            if self.vals and vals.shape[1] != self.vals[0].shape[1]:
                raise ValueError("value_fn changed its number of targets between calls")
            self.vals.append(vals)
            self.index.update(new)
            self._x = self._v = self._f = None
        return np.array([self.index[k] for k in keys], dtype=np.int64)

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            self._x = np.array(self.rows, dtype=bool)
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


# --------------------------------------------------------------------------- surrogates


Model = Callable[[np.ndarray], np.ndarray]  # M×N bool → M×T


def _fit_logistic_model(x: np.ndarray, y: np.ndarray,
                        extra: list[tuple[int, int]] | None = None) -> Model:
    """σ(α·b + Σ_{(i,j) ∈ extra} γ_ij·b_i·b_j + β) per target, fitted by BCE."""
    n = x.shape[1]
    ii = np.array([i for i, _ in extra or []], dtype=np.int64)
    jj = np.array([j for _, j in extra or []], dtype=np.int64)
    xd = np.asarray(x, dtype=np.float64)
    if extra:
        xd = np.concatenate([xd, xd[:, ii] * xd[:, jj]], axis=1)
    params = [fit_logistic(xd, y[:, t]) for t in range(y.shape[1])]
    alpha = np.stack([p[:n] for p, _ in params], axis=1)  # N×T
    beta = np.array([b for _, b in params])
    quad = np.zeros((len(params), n, n))  # T×N×N, upper triangle holds γ
    for t, (p, _) in enumerate(params):
        quad[t, ii, jj] = p[n:]

    def model(b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64)
        z = b @ alpha + beta
        if extra:
            for t in range(z.shape[1]):
                z[:, t] += ((b @ quad[t]) * b).sum(axis=1)
        return 1.0 / (1.0 + np.exp(-z))

    return model


def _top_pairs(x: np.ndarray, y: np.ndarray, base: Model, count: int) -> list[tuple[int, int]]:
    """The pairs (i, j) whose products b_i·b_j correlate most with the residual of ``base``."""
    xf = x.astype(np.float64)
    resid = (y - base(x)).sum(axis=1)
    n = x.shape[1]
    iu, ju = np.triu_indices(n, 1)
    prod = xf[:, iu] * xf[:, ju]  # M×P
    prod = prod - prod.mean(axis=0)
    norm = np.sqrt((prod**2).sum(axis=0)) + 1e-12
    score = np.abs(prod.T @ (resid - resid.mean())) / norm
    best = np.argsort(-score)[:count]
    return [(int(iu[p]), int(ju[p])) for p in best]


def _fit_model(kind: str, x: np.ndarray, y: np.ndarray, feats: np.ndarray | None,
               head: tuple | None) -> Model:
    """Fit surrogate ``kind`` on coalitions x (M×N bool) with values y (M×T)."""
    if kind == "logistic":
        return _fit_logistic_model(x, y)
    if kind == "pairwise":
        base = _fit_logistic_model(x, y)
        count = min(PAIRWISE_TERMS, x.shape[1] * (x.shape[1] - 1) // 2)
        return _fit_logistic_model(x, y, _top_pairs(x, y, base, count))
    if kind == "pie":
        weight, bias, classes = head
        w, c = fit_linear_logits(x, feats)  # features ≈ W·b + c  (D×N, D)
        a = np.asarray(weight, dtype=np.float64) @ w
        const = np.asarray(weight, dtype=np.float64) @ c + np.asarray(bias, dtype=np.float64)
        return softmax_value_fn(a, const, classes)
    if kind == "linear":
        return _fit_linear_odd(x, y)
    raise ValueError(f"unknown surrogate {kind!r}")


def _fit_linear_odd(x: np.ndarray, y: np.ndarray) -> Model:
    """g(S) = ½·a·(2b − 1) + mean(y): least squares of f(S) − f(S̄) on 2b − 1 over pairs."""
    n = x.shape[1]
    keys = {p.tobytes(): r for r, p in enumerate(np.packbits(x, axis=1))}
    comp = np.packbits(~x, axis=1)
    partner = np.array([keys.get(p.tobytes(), -1) for p in comp])
    rows = np.nonzero(partner >= 0)[0]
    xs = 2.0 * x[rows].astype(np.float64) - 1.0
    d = y[rows] - y[partner[rows]]
    gram = xs.T @ xs
    reg = LINEAR_RIDGE * max(float(np.trace(gram)) / n, 1.0)
    a = np.linalg.solve(gram + reg * np.eye(n), xs.T @ d)  # N×T
    offset = y.mean(axis=0)

    def model(b: np.ndarray) -> np.ndarray:
        return 0.5 * ((2.0 * b.astype(np.float64) - 1.0) @ a) + offset

    return model


def _stratum_terms_exact(model: Model, n: int, strata: list[int], bits: np.ndarray,
                         slices: list[slice]) -> dict[int, np.ndarray]:
    """θ_k(g) = w_k·E_k[d_g c] for the listed strata, from g on all 2^n coalitions: k → N×T.

    ``bits`` (2^n×n float64) lists every coalition sorted by size; ``slices[s]`` selects size s.
    """
    g = _as_matrix(model(bits))  # 2^n×T
    out = {}
    for k in strata:
        theta = np.zeros((n, g.shape[1]))
        for s in {k, n - k}:
            sl = slices[s]
            inside = bits[sl].T @ g[sl]  # N×T: Σ_{|S|=s, i∈S} g(S)
            total = g[sl].sum(axis=0)
            theta += (inside / s - (total[None, :] - inside) / (n - s)) / comb(n, s)
        out[k] = theta
    return out


# --------------------------------------------------------------------------- main estimator


class _Run:
    """State of one residual_shapley run (strata, draws, folds, fitted surrogates)."""

    def __init__(self, store: _Store, n: int, rng: np.random.Generator, surrogate: str,
                 head: tuple | None, folds: int, z: float):
        self.store, self.n, self.rng, self.surrogate, self.head = store, n, rng, surrogate, head
        self.folds, self.z = folds, z
        self.strata = list(range(1, n // 2 + 1))
        self.pairs_in = {k: _stratum_pairs(n, k) for k in self.strata}
        self.enumerated: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k → (S rows, S̄ rows)
        self.draws: dict[int, dict[str, list]] = {k: {"s": [], "sb": [], "fold": []}
                                                  for k in self.strata}
        self.pair_fold: dict[bytes, int] = {}
        self.next_fold = {k: 0 for k in self.strata}
        self.anchor = store.ensure(np.array([np.zeros(n, bool), np.ones(n, bool)]))
        self.bits = self.slices = None
        if surrogate != "none" and n <= SURROGATE_ENUM_MAX_N:
            bits = all_coalitions(n)
            sizes = bits.sum(axis=1)
            order = np.argsort(sizes, kind="stable")
            self.bits = bits[order].astype(np.float64)
            edges = np.searchsorted(sizes[order], np.arange(n + 2))
            self.slices = [slice(int(edges[s]), int(edges[s + 1])) for s in range(n + 1)]
        self.units: dict[int, np.ndarray] = {}
        self.mc_units: dict[int, np.ndarray] = {}
        self.mc_draws: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k → (S rows, c(S)) of g's Monte Carlo
        self.fit_seconds = 0.0  # wall time spent fitting the fold surrogates (and their stratum terms)
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
            self.draws[k] = {"s": [], "sb": [], "fold": []}

    def draw(self, counts: dict[int, int]) -> None:
        sides, ks = [], []
        for k, m in counts.items():
            if m > 0:
                sides.append(_draw_stratum(self.n, k, m, self.rng))
                ks.append(k)
        if not sides:
            return
        allrows = np.concatenate([np.concatenate([s, ~s]) for s in sides])
        idx = self.store.ensure(allrows)
        pos = 0
        for k, s in zip(ks, sides, strict=True):
            m = len(s)
            si, sbi = idx[pos:pos + m], idx[pos + m:pos + 2 * m]
            pos += 2 * m
            rec = self.draws[k]
            for a, b, row, comp in zip(si, sbi, s, ~s, strict=True):
                key = min(np.packbits(row).tobytes(), np.packbits(comp).tobytes())
                fold = self.pair_fold.get(key)
                if fold is None:
                    fold = self.next_fold[k] % self.folds
                    self.next_fold[k] += 1
                    self.pair_fold[key] = fold
                rec["s"].append(a)
                rec["sb"].append(b)
                rec["fold"].append(fold)

    def drawn(self, k: int) -> int:
        return len(self.draws[k]["s"])

    # ------------------------------------------------------------------ estimation
    def _fit_folds(self) -> tuple[list[Model], dict[int, list[np.ndarray]]]:
        """Fold models g_{−j} and their stratum terms θ_k(g_{−j}) for the sampled strata."""
        store, n = self.store, self.n
        held = [np.zeros(len(store), bool) for _ in range(self.folds)]
        for k in self.sampled():
            rec = self.draws[k]
            for a, b, j in zip(rec["s"], rec["sb"], rec["fold"], strict=True):
                held[j][a] = held[j][b] = True
        models, thetas = [], {k: [] for k in self.sampled()}
        x, v, f = store.x, store.v, store.f
        for j in range(self.folds):
            train = ~held[j]
            feats = None if f is None else f[train]
            model = _fit_model(self.surrogate, x[train], v[train], feats, self.head)
            models.append(model)
            if self.bits is not None:
                terms = _stratum_terms_exact(model, n, self.sampled(), self.bits, self.slices)
                for k in self.sampled():
                    thetas[k].append(terms[k])
        return models, thetas

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        store, n = self.store, self.n
        v = store.v
        t = v.shape[1]
        f0, f1 = v[self.anchor[0]], v[self.anchor[1]]
        values = np.broadcast_to((f1 - f0) / n, (n, t)).copy()
        var = np.zeros((n, t))
        for k, (si, sbi) in self.enumerated.items():
            c = _c_matrix(store.x[si], n, k)
            d = v[si] - v[sbi]
            values += _stratum_weight(n, k) * np.einsum("mi,mt->it", c, d) / len(si)
        sampled = [k for k in self.sampled() if self.drawn(k) > 0]
        start = time.perf_counter()
        models, thetas = ([], {}) if self.surrogate == "none" else self._fit_folds()
        self.fit_seconds += time.perf_counter() - start
        preds = [_as_matrix(mod(store.x)) for mod in models]
        self.units, self.mc_units = {}, {}
        num = np.zeros(t)
        den = np.zeros(t)
        for k in sampled:
            rec = self.draws[k]
            si, sbi, fold = (np.array(rec[key]) for key in ("s", "sb", "fold"))
            m = len(si)
            w = _stratum_weight(n, k)
            c = _c_matrix(store.x[si], n, k)
            d = v[si] - v[sbi]
            resid = d.copy()
            frac = np.bincount(fold, minlength=self.folds) / m
            if models:
                dg = np.zeros_like(d)
                for j in range(self.folds):
                    sel = fold == j
                    dg[sel] = preds[j][si[sel]] - preds[j][sbi[sel]]
                resid = d - dg
                weight = w * w * n / (k * (n - k)) / m
                num += weight * ((d - dg) ** 2).sum(axis=0)
                den += weight * (d**2).sum(axis=0)
                if self.bits is not None:
                    values += sum(frac[j] * thetas[k][j] for j in range(self.folds))
                else:
                    self.mc_units[k] = self._mc_stratum(k, models, frac)
                    values += self.mc_units[k].mean(axis=0)
                    var += self.mc_units[k].var(axis=0, ddof=1) / len(self.mc_units[k])
            y = w * c[:, :, None] * resid[:, None, :]  # m×N×T
            self.units[k] = (c, resid, w)
            values += y.mean(axis=0)
            var += self._unit_var(y, w * w * (resid**2).mean(axis=0) / (k * (n - k))) / m
        safe = np.where(den > 0, den, 1.0)
        self.r2 = np.where(den > 0, 1.0 - num / safe, np.nan) if models else None
        return values, np.sqrt(var)

    @staticmethod
    def _unit_var(y: np.ndarray, pooled_second: np.ndarray) -> np.ndarray:
        """Per-concept variance of units y (m×N×T), floored by the pooled second moment (T)."""
        m = y.shape[0]
        mean = y.mean(axis=0)
        if m < 2:
            return np.full(mean.shape, np.inf)
        sample = y.var(axis=0, ddof=1)
        floor = np.maximum(pooled_second[None, :] - mean**2, 0.0) * m / (m - 1)
        return np.maximum(sample, floor)

    def _mc_stratum(self, k: int, models: list[Model], frac: np.ndarray) -> np.ndarray:
        """Monte-Carlo units of Σ_j frac_j·θ_k(g_j): SURROGATE_MC_PAIRS×N×T."""
        n = self.n
        cached = self.mc_draws.get(k)
        if cached is None:  # one Monte-Carlo sample per stratum, reused every round (its error is in the variance)
            drawn = _draw_stratum(n, k, SURROGATE_MC_PAIRS, self.rng)
            cached = self.mc_draws[k] = (drawn, _c_matrix(drawn, n, k))
        s, c = cached
        dg = sum(fr * (_as_matrix(mod(s)) - _as_matrix(mod(~s)))
                 for fr, mod in zip(frac, models, strict=True) if fr > 0)
        return _stratum_weight(n, k) * c[:, :, None] * dg[:, None, :]

    def diff_stderr(self, i: int, j: int, t: int) -> float:
        """Standard error of φ̂_i − φ̂_j (target t) from the shared paired units."""
        n = self.n
        var = 0.0
        for k, (c, resid, w) in self.units.items():
            m = c.shape[0]
            if m < 2:
                return float("inf")
            diff = w * (c[:, i] - c[:, j]) * resid[:, t]
            # pooled floor: w²·E[r²]·E[(c_i − c_j)²], E[(c_i − c_j)²] = 2n / ((n − 1)·k·(n − k))
            second = w * w * float((resid[:, t] ** 2).mean()) * 2.0 * n / ((n - 1) * k * (n - k))
            floor = max(second - float(diff.mean()) ** 2, 0.0) * m / (m - 1)
            var += max(float(diff.var(ddof=1)), floor) / m
        for y in self.mc_units.values():
            var += float((y[:, i, t] - y[:, j, t]).var(ddof=1)) / y.shape[0]
        return float(np.sqrt(var))

    def sigma(self) -> dict[int, float]:
        """Per sampled stratum: √(Σ_{i,t} unit variance), the Neyman allocation weight."""
        n = self.n
        out = {}
        for k in self.sampled():
            unit = self.units.get(k)
            if unit is None or unit[0].shape[0] < 2:
                out[k] = _stratum_weight(n, k) * np.sqrt(n / (k * (n - k)))  # prior: |d| ≈ 1
            else:
                c, resid, w = unit
                y = w * c[:, :, None] * resid[:, None, :]
                out[k] = float(np.sqrt(y.var(axis=0, ddof=1).sum())) + 1e-12
        return out


def _allocate(run: _Run, pairs: int) -> tuple[list[int], dict[int, int]]:
    """Split ``pairs`` new pairs: strata to enumerate, then draws per sampled stratum (Neyman)."""
    sigma = run.sigma()
    active = dict(sigma)
    budget = pairs
    to_enum: list[int] = []
    while active:
        total_draws = sum(run.drawn(k) for k in active) + budget
        norm = sum(active.values())
        target = {k: total_draws * s / norm for k, s in active.items()}
        cand = [k for k in active if target[k] >= ENUMERATE_FRACTION * run.pairs_in[k]
                and run.pairs_in[k] - run.drawn(k) <= budget]
        if not cand:
            break
        k = max(cand, key=lambda q: target[q] / run.pairs_in[q])
        to_enum.append(k)
        budget -= run.pairs_in[k]  # upper bound: some of its pairs may already be evaluated
        del active[k]
    counts: dict[int, int] = {}
    if active and budget > 0:
        total_draws = sum(run.drawn(k) for k in active) + budget
        norm = sum(active.values())
        deficit = {k: max(total_draws * s / norm - run.drawn(k), 0.0) for k, s in active.items()}
        for k in active:  # every sampled stratum keeps a minimal sample for its variance
            deficit[k] = max(deficit[k], MIN_STRATUM_DRAWS - run.drawn(k))
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
        tied = np.zeros(n - 1, bool)
        for r in range(n - 1):
            i, j = order[r], order[r + 1]
            se = run.diff_stderr(int(i), int(j), tt)
            tied[r] = values[i, tt] - values[j, tt] <= z * se
        if tied[:k].any():
            resolved = False
        ties.append(_tie_groups(order, tied))
    scale = np.abs(values).max(axis=0)
    precise = bool(np.all(z * stderr.max(axis=0) <= rel_tol * scale))
    return resolved, precise, ties


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
    min_evaluations: int = DEFAULT_MIN_EVALUATIONS,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    round_size: int = DEFAULT_ROUND_SIZE,
    top_k: int = DEFAULT_TOP_K,
    rel_tol: float = DEFAULT_REL_TOL,
    z: float = DEFAULT_Z,
    folds: int = DEFAULT_FOLDS,
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
    min_evaluations, max_evaluations : int
        The stopping rule is consulted only from ``min(min_evaluations, max_evaluations)``
        on; ``max_evaluations`` caps the distinct coalitions evaluated (∅ and N included). If 2^n ≤
        ``max_evaluations`` the function is enumerated and the values are exact.
    round_size : int
        New coalitions per round (one ``value_fn`` call each).
    top_k : int
        Stop as ``"resolved"`` once the top ``top_k`` ranking is separated by the intervals.
    rel_tol : float
        Stop as ``"precise"`` once z·max stderr ≤ ``rel_tol`` · max |value| (every target).
    z : float
        Normal quantile of the intervals used for stopping and ties (1.96: 95 %).
    folds : int
        Cross-fitting folds (≥ 2).

    Returns
    -------
    ShapleyEstimate
        ``values`` and ``stderr`` N×T; see the class for the other fields.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if surrogate == "pie" and head is None:
        raise ValueError("surrogate 'pie' needs head=(weight K×D, bias K, classes T)")
    if folds < 2:
        raise ValueError(f"folds must be ≥ 2, got {folds}")
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
    run = _Run(store, n, rng, surrogate, head, folds, z)
    history = []
    stalled = 0
    stop = "budget"
    ties: list = []
    values = stderr = None
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
        values, stderr = run.estimate()
        resolved, precise, ties = _check_stop(run, values, stderr, top_k, rel_tol, z)
        history.append({"evaluations": len(store), "max_stderr": float(stderr.max()),
                        "resolved": resolved, "precise": precise})
        if len(store) >= min_evaluations and (resolved or precise):
            stop = "resolved" if resolved else "precise"
            break
        stalled = stalled + 1 if len(store) == before else 0
        if stalled >= MAX_STALLED_ROUNDS:  # draws keep hitting evaluated pairs: nothing left to buy
            break
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
        "fit_seconds": run.fit_seconds,
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
    ends = _as_matrix(value_fn(np.array([np.zeros(n, bool), np.ones(n, bool)])))
    v0, v1 = ends[0], ends[1]
    if n == 1:
        return (v1 - v0)[None, :]
    zc = kernel_coalitions(budget - 2, n, rng, paired=True)
    y = _as_matrix(value_fn(zc))
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
    model = _fit_logistic_model(x, _as_matrix(value_fn(x)))
    if n <= SURROGATE_ENUM_MAX_N:
        return exact_shapley(tabulate(lambda b: model(b > 0.5), n), n)
    from eac.kernels.shapley import permutation_shapley

    values, _ = permutation_shapley(lambda b: model(b > 0.5), n, 20000, rng)
    return values


def leave_one_out(value_fn: ValueFn, n: int) -> np.ndarray:
    """Leave-one-out (feature ablation): f(N) − f(N ∖ i), N×T (n + 1 rows)."""
    rows = np.concatenate([np.ones((1, n), bool), ~np.eye(n, dtype=bool)])
    v = _as_matrix(value_fn(rows))
    return v[0][None, :] - v[1:]
