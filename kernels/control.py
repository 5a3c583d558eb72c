"""Surrogates as control variates of :func:`eac.kernels.estimators.residual_shapley`, and their stratum terms.

The estimator corrects the pairs (S, S̄) of fold j with a surrogate g_j fitted on the other folds, and adds
g_j's stratum terms

    θ_k(g)_i = w_k · E_k[ d_g(S) · c_i(S) ],   d_g(S) = g(S) − g(S̄),   c_i(S) = 1[i ∈ S]/k − 1[i ∉ S]/(n − k),

S uniform of size k (w_k = 1, ½ for the middle stratum of an even n). This module fits the surrogates
(:func:`fit_surrogates`), evaluates all folds' surrogates at once (:func:`evaluate`, :func:`evaluate_pairs`) and
computes those terms in one of three ways:

* :class:`Enumeration` — exactly, from g on all 2^n coalitions (n ≤ :data:`WINDOWS_ENUM_MAX_N`, or
  :data:`SURROGATE_ENUM_MAX_N` with ``"strata"``).
* :class:`StrataMC` — Monte Carlo with :data:`SURROGATE_MC_PAIRS` independent pairs per stratum, drawn once per
  run. The first version's design (``surrogate_mc="strata"``), kept so that its runs can be reproduced.
* :class:`WindowsMC` — Monte Carlo of what a *linear* control variate leaves (``surrogate_mc="windows"``, the
  default). Only the odd part of g enters the terms, and for any ℓ whose pair difference is linear,
  d_ℓ(S) = Σ_i a_i·x_i with x = 2b − 1, the terms have a closed form that does not depend on k (see
  :func:`linear_terms`):

      E_k[ x_i · c_l(S) ] = 2/n (i = l),  −2/(n(n − 1)) (i ≠ l)
      ⇒   θ_k(ℓ)_l = w_k · 2/n · (a_l − (Σ_i a_i − a_l)/(n − 1)).

  So θ_k(g) = θ_k(ℓ) + w_k·E_k[(d_g − d_ℓ)·c], with a fitted by least squares of d_g on x over the evaluated
  pairs (independent of the Monte-Carlo sample, so the identity is exact and the estimate unbiased). What is
  left, d_g − d_ℓ, had 1–10 % of d_g's variance in a check at N = 32 (logistic games with pairwise terms,
  saturating and additive games), so a few hundred rows do what 4096 pairs per stratum did. The rows are
  *windows* of random permutations: row r draws one
  permutation, and stratum k uses the k concepts at positions o_k … o_k + k − 1 (cyclically), o_k = Σ_{l<k} l
  mod n, so the strata use mostly different positions. Each window is a uniform size-k coalition; a row is one
  unit (its strata summed), rows are independent, and the unit variance includes the strata's correlation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import comb

import numpy as np
from eac.kernels.shapley import all_coalitions, softmax_value_fn
from eac.kernels.surrogate import LOGISTIC_MAX_ITER, fit_linear_logits, fit_logistic_batch

#: Names accepted by ``residual_shapley(surrogate=...)``.
SURROGATES = ("logistic", "pie", "pairwise", "linear", "none")
#: How the surrogate's stratum terms are estimated above :data:`SURROGATE_ENUM_MAX_N`.
SURROGATE_MC = ("windows", "strata")
#: When the fold surrogates are refitted: when the stopping rule is consulted, or every round (the first version).
REFITS = ("checks", "rounds")
#: Largest n for which the surrogate's stratum terms are computed over all 2^n coalitions; above, by Monte
#: Carlo. ``"strata"`` (the first version): 16. ``"windows"``: 12 — 2^12 rows per fold cost about what the
#: Monte-Carlo rows do, while 2^16 cost 16 times more.
SURROGATE_ENUM_MAX_N = 16
WINDOWS_ENUM_MAX_N = 12
#: ``surrogate_mc="strata"``: Monte-Carlo pairs per stratum (the first version's design).
SURROGATE_MC_PAIRS = 4096
#: ``surrogate_mc="windows"``: Monte-Carlo rows (one permutation each, a window per stratum). With the
#: linear control variate their variance is below that of the 4096 pairs per stratum above
#: (tests/kernels/test_estimators.py; fidelity beside the first version: bench/results/estimators.md).
SURROGATE_MC_ROWS = 512
#: Newton steps of the logistic surrogates when they are not run to convergence (``refit="checks"``): from
#: the least-squares start their predictions are then within ~1e-6 of the optimum's (median over the fits of
#: a run at N = 16–32; worst 3e-2), which changes no control variate measurably. The additive fit that only
#: ranks the pairs gets fewer (within ~1e-3).
CONTROL_NEWTON_STEPS = 3
CONTROL_BASE_STEPS = 2
#: The same from the folds' previous fit (the next check's data are mostly the same rows): after 2 steps the
#: pairwise fits' predictions are within ~1e-3 of the optimum's (worst 3e-2, on the first check after the
#: pilot), the additive fits' within ~1e-3 after 1.
CONTROL_WARM_STEPS = 2
CONTROL_WARM_BASE_STEPS = 1
#: Pairs b_i·b_j the ``pairwise`` surrogate adds (at most; also ≤ n).
PAIRWISE_TERMS = 16
#: Ridge of the ``linear`` surrogate's normal equations, relative to their mean diagonal.
LINEAR_RIDGE = 1e-6
#: Added to the norm of a pair's centred product column when ranking pairs (a column that never varies
#: scores 0 instead of 0/0).
PAIR_SCORE_EPS = 1e-12

Model = Callable[[np.ndarray], np.ndarray]  # M×N bool/float → M×T


def as_matrix(out: np.ndarray) -> np.ndarray:
    """Values as a float64 M×T matrix (a vector becomes one column)."""
    out = np.asarray(out, dtype=np.float64)
    return out[:, None] if out.ndim == 1 else out


def _sigmoid(z: np.ndarray, inplace: bool = False) -> np.ndarray:
    """1 / (1 + e^(−z)) elementwise; with ``inplace`` written over z (a float64 array the caller owns)."""
    if not inplace:
        return 1.0 / (1.0 + np.exp(-z))
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1.0
    return np.divide(1.0, z, out=z)


def pair_products(b: np.ndarray, ii: np.ndarray, jj: np.ndarray, bt: np.ndarray | None = None) -> np.ndarray:
    """b_i·b_j for the pairs (ii[p], jj[p]) and the rows of b (M×N, bool or 0/1): M×P float64.

    Gathered as rows of the transposed coalitions (``bt``, N×M C-contiguous, when the caller has it): gathering
    columns of an M×N array is many times slower.
    """
    if bt is None:
        bt = np.ascontiguousarray(np.asarray(b).T)
    if bt.dtype == bool:
        return (bt[ii] & bt[jj]).T.astype(np.float64)
    return (bt[ii] * bt[jj]).T.astype(np.float64)


def c_matrix(s: np.ndarray, n: int, k: int) -> np.ndarray:
    """c(S) = 1[i∈S]/k − 1[i∉S]/(n−k) for the rows of a m×n bool matrix."""
    return np.where(s, 1.0 / k, -1.0 / (n - k))


def stratum_weight(n: int, k: int) -> float:
    """w_k: ½ for the middle stratum of an even n (its pairs are counted from both sides), else 1."""
    return 0.5 if 2 * k == n else 1.0


def draw_stratum(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m uniform size-k coalitions (with replacement), m×n bool: the k smallest of n uniform keys per row."""
    keys = rng.random((m, n))
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    return keys <= kth


# --------------------------------------------------------------------------- surrogates


@dataclass
class LogisticSurrogate:
    """g(b) = σ(b·α + Σ_p γ_p·b_{i_p}·b_{j_p} + β), one column per target.

    Attributes
    ----------
    alpha : ndarray, N×T
    beta : ndarray, T
    ii, jj : ndarray of int, P
        The pairs' concepts (P = 0: the additive logistic surrogate).
    gamma : ndarray, P×T
    """

    alpha: np.ndarray
    beta: np.ndarray
    ii: np.ndarray
    jj: np.ndarray
    gamma: np.ndarray

    def logits(self, b: np.ndarray) -> np.ndarray:
        """M×N coalitions → M×T logits."""
        z = np.asarray(b, dtype=np.float64) @ self.alpha + self.beta
        if len(self.ii):
            z += pair_products(b, self.ii, self.jj) @ self.gamma
        return z

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logits(b))


@dataclass
class OddLinearSurrogate:
    """g(S) = ½·a·(2b − 1) + offset: its pair difference d_g(S) = a·(2b − 1) is linear.

    Attributes
    ----------
    a : ndarray, N×T
    offset : ndarray, T
    """

    a: np.ndarray
    offset: np.ndarray

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return 0.5 * ((2.0 * np.asarray(b, dtype=np.float64) - 1.0) @ self.a) + self.offset


def fit_logistic_surrogates(x: np.ndarray, y: np.ndarray, train: np.ndarray,
                            pairs: Sequence[Sequence[tuple[int, int]]] | None = None,
                            max_iter: int = LOGISTIC_MAX_ITER,
                            init: Sequence[LogisticSurrogate] | None = None) -> FoldModels:
    """One logistic surrogate per row subset, all fitted at once (BCE, Newton).

    Parameters
    ----------
    x : ndarray, M×N bool
    y : ndarray, M×T
    train : ndarray, J×M bool
        The rows each surrogate is fitted on.
    pairs : list of J lists of (i, j), optional
        Each surrogate's product terms b_i·b_j.
    max_iter : int
        Newton steps (default: to convergence).
    init : list of J :class:`LogisticSurrogate`, optional
        Starting points (their α, β, and γ for the pairs they share), e.g. the same folds' previous fits;
        default: least squares on the log-odds.

    Returns
    -------
    list of J :class:`LogisticSurrogate`
    """
    jn, t, n = train.shape[0], y.shape[1], x.shape[1]
    pairs = pairs or [()] * jn
    # Each fit sees its own rows, padded with weight-0 rows to a common count so that all fit in one batch.
    counts = train.sum(axis=1)
    rows = np.zeros((jn, int(counts.max())), dtype=np.int64)
    weight = np.zeros(rows.shape)
    for j in range(jn):
        rows[j, :counts[j]] = np.nonzero(train[j])[0]
        weight[j, :counts[j]] = 1.0
    width = n + len(pairs[0])  # every fit has as many pairs
    design = np.empty((jn, rows.shape[1], width + 1))  # J×M'×(N+P+1): b, the pair products, the intercept's 1
    for j in range(jn):
        ii = np.array([a for a, _ in pairs[j]], dtype=np.int64)
        jj = np.array([b for _, b in pairs[j]], dtype=np.int64)
        xj = x[rows[j]]
        design[j, :, :n] = xj
        if len(ii):
            design[j, :, n:width] = pair_products(xj, ii, jj)
    design[:, :, width] = 1.0
    if t > 1:
        design = np.repeat(design, t, axis=0)  # (J·T)×M'×(N+P+1): fold-major, then target
    prob = np.concatenate([y[rows[j]].T for j in range(jn)])
    start = None
    if init is not None:
        start = np.concatenate([_start(g, list(pairs[j])) for j, g in enumerate(init)])
    coef, intercept = fit_logistic_batch(design, prob, np.repeat(weight, t, axis=0), max_iter=max_iter, init=start,
                                         intercept_column=True)
    out = FoldModels()
    for j in range(jn):
        c = coef[j * t:(j + 1) * t].T  # (N+P)×T
        ii = np.array([a for a, _ in pairs[j]], dtype=np.int64)
        jj = np.array([b for _, b in pairs[j]], dtype=np.int64)
        out.append(LogisticSurrogate(c[:n].copy(), intercept[j * t:(j + 1) * t].copy(), ii, jj, c[n:].copy()))
    return out


def _start(g: LogisticSurrogate, pairs: list[tuple[int, int]]) -> np.ndarray:
    """g's parameters as a starting point for a fit with these pairs: T×(N+P+1) (γ = 0 for new pairs)."""
    known = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(g.ii, g.jj, strict=True))}
    gamma = np.zeros((len(pairs), g.alpha.shape[1]))
    for p, pair in enumerate(pairs):
        if pair in known:
            gamma[p] = g.gamma[known[pair]]
    return np.concatenate([g.alpha, gamma, g.beta[None, :]]).T


def fit_logistic_surrogate(x: np.ndarray, y: np.ndarray,
                           pairs: Sequence[tuple[int, int]] = ()) -> LogisticSurrogate:
    """σ(α·b + Σ_{(i,j) ∈ pairs} γ_ij·b_i·b_j + β) per target, fitted by BCE on all rows (x: M×N bool, y: M×T)."""
    return fit_logistic_surrogates(x, y, np.ones((1, len(x)), bool), [list(pairs)])[0]


def top_pairs(x: np.ndarray, y: np.ndarray, bases: Sequence[Model], count: int,
              train: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per base model: the ``count`` pairs (i, j) whose products b_i·b_j correlate most with its residual.

    The score is |Σ_m (p_m − p̄)·r_m| / ‖p − p̄‖ over the model's ``train`` rows (J×M bool), for the product
    column p of each pair and the centred residual r (summed over targets); with binary columns both come
    from N×N products: Σ_m b_i·b_j·r_m from one matrix product for all models, Σ_m b_i·b_j (= Σ of the squared
    product column) as counts of all rows less those of the rows a model leaves out.
    """
    xf = np.asarray(x, dtype=np.float64)
    rows, n = xf.shape
    jn = len(bases)
    w = train.astype(np.float64)  # J×M
    m = w.sum(axis=1)
    resid = (y[None] - evaluate(bases, x)).sum(axis=2)  # J×M
    resid = (resid - ((w * resid).sum(axis=1) / m)[:, None]) * w
    scaled = np.empty((rows, jn, n))  # b·r of every model side by side, M×J×N (written in place: no concatenation)
    np.multiply(xf[:, None, :], resid.T[:, :, None], out=scaled)
    inner = (xf.T @ scaled.reshape(rows, jn * n)).reshape(n, jn, n)  # Σ_m b_i·b_j·r_m
    counts = xf.T @ xf  # Σ_m b_i·b_j over all rows: integers, so exact in any order
    iu, ju = np.triu_indices(n, 1)
    out = []
    for j in range(jn):
        left_out = xf[~train[j]]
        together = (counts - left_out.T @ left_out)[iu, ju]
        norm = np.sqrt(np.maximum(together - together**2 / m[j], 0.0)) + PAIR_SCORE_EPS
        score = np.abs(inner[:, j, :][iu, ju]) / norm
        best = np.argsort(-score)[:count]
        out.append([(int(iu[p]), int(ju[p])) for p in best])
    return out


def _fit_linear_odd(x: np.ndarray, y: np.ndarray) -> OddLinearSurrogate:
    """Least squares of f(S) − f(S̄) on 2b − 1 over the evaluated pairs."""
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
    return OddLinearSurrogate(a, y.mean(axis=0))


class FoldModels(list):
    """The logistic fold surrogates of one fit, with their stacked parameters once computed (``stacked``,
    see :func:`_stacked_logistic`); the surrogates are not changed after their fit."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.stacked: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


@dataclass
class SurrogateFits:
    """The fold surrogates of one fit (``models``), and for ``"pairwise"`` the additive fits that ranked its pairs
    (``bases``): the next fit starts from both."""

    models: list[Model]
    bases: list[LogisticSurrogate] | None = None


def fit_surrogates(kind: str, x: np.ndarray, y: np.ndarray, train: np.ndarray, feats: np.ndarray | None = None,
                   head: tuple | None = None, converge: bool = True,
                   previous: SurrogateFits | None = None) -> SurrogateFits:
    """Fit surrogate ``kind`` (one of :data:`SURROGATES` but ``"none"``) on each row subset.

    Parameters
    ----------
    kind : str
    x : ndarray, M×N bool
    y : ndarray, M×T
    train : ndarray, J×M bool
        The rows of each fold's surrogate.
    feats : ndarray, M×D, optional
        Needed by ``"pie"`` (with ``head`` = (Fc K×D, bias K, classes T)).
    converge : bool
        Logistic fits: Newton to convergence from the least-squares start (the first version); else a few steps:
        from ``previous`` when given (:data:`CONTROL_WARM_STEPS`, :data:`CONTROL_WARM_BASE_STEPS`), otherwise
        from the least-squares start (:data:`CONTROL_NEWTON_STEPS`, :data:`CONTROL_BASE_STEPS`).
    previous : SurrogateFits, optional
        The same folds' previous fit (used when ``converge`` is False).

    Returns
    -------
    SurrogateFits
        J models (M×N → M×T).
    """
    warm = None if converge or previous is None else previous
    steps = LOGISTIC_MAX_ITER if converge else (CONTROL_NEWTON_STEPS if warm is None else CONTROL_WARM_STEPS)
    if kind == "logistic":
        return SurrogateFits(fit_logistic_surrogates(x, y, train, max_iter=steps,
                                                     init=None if warm is None else warm.models))
    if kind == "pairwise":
        base_steps = LOGISTIC_MAX_ITER if converge else (CONTROL_BASE_STEPS if warm is None
                                                         else CONTROL_WARM_BASE_STEPS)
        bases = fit_logistic_surrogates(x, y, train, max_iter=base_steps, init=None if warm is None else warm.bases)
        count = min(PAIRWISE_TERMS, x.shape[1] * (x.shape[1] - 1) // 2)
        models = fit_logistic_surrogates(x, y, train, top_pairs(x, y, bases, count, train), max_iter=steps,
                                         init=None if warm is None else warm.models)
        return SurrogateFits(models, bases)
    if kind == "pie":
        weight, bias, classes = head
        out = []
        for rows in train:
            w, c = fit_linear_logits(x[rows], feats[rows])  # features ≈ W·b + c  (D×N, D)
            a = np.asarray(weight, dtype=np.float64) @ w
            const = np.asarray(weight, dtype=np.float64) @ c + np.asarray(bias, dtype=np.float64)
            out.append(softmax_value_fn(a, const, classes))
        return SurrogateFits(out)
    if kind == "linear":
        return SurrogateFits([_fit_linear_odd(x[rows], y[rows]) for rows in train])
    raise ValueError(f"unknown surrogate {kind!r}")


# --------------------------------------------------------------------------- evaluation of all folds


def _stacked_logistic(models: Sequence[LogisticSurrogate]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All models' parameters side by side (columns j·T + t): α N×(J·T), β J·T, the union of their pairs
    (ii, jj: U each) and γ on that union U×(J·T) (0 where a model lacks the pair).

    The fold surrogates of one fit (:class:`FoldModels`) keep the result: they are evaluated several times
    between refits (on the evaluated coalitions every round, on the Monte-Carlo rows at checks).
    """
    if isinstance(models, FoldModels):
        if models.stacked is None:
            models.stacked = _stack_parameters(models)
        return models.stacked
    return _stack_parameters(models)


def _stack_parameters(models: Sequence[LogisticSurrogate]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_stacked_logistic` without the reuse."""
    t = models[0].alpha.shape[1]
    alpha = np.concatenate([g.alpha for g in models], axis=1)
    beta = np.concatenate([g.beta for g in models])
    union = sorted({(int(i), int(j)) for g in models for i, j in zip(g.ii, g.jj, strict=True)})
    where = {pair: u for u, pair in enumerate(union)}
    gamma = np.zeros((len(union), len(models) * t))
    for m, g in enumerate(models):
        for p, pair in enumerate(zip(g.ii.tolist(), g.jj.tolist(), strict=True)):
            gamma[where[pair], m * t:(m + 1) * t] = g.gamma[p]
    ii = np.array([i for i, _ in union], dtype=np.int64)
    jj = np.array([j for _, j in union], dtype=np.int64)
    return alpha, beta, np.stack([ii, jj]), gamma


def _split(values: np.ndarray, jn: int) -> np.ndarray:
    """M×(J·T) → J×M×T."""
    return np.moveaxis(values.reshape(values.shape[0], jn, -1), 1, 0)


def evaluate(models: Sequence[Model], b: np.ndarray) -> np.ndarray:
    """Every model on the coalitions b (M×N): J×M×T (logistic surrogates: a few matrix products for all)."""
    if models and all(isinstance(g, LogisticSurrogate) for g in models):
        bf = np.asarray(b, dtype=np.float64)
        alpha, beta, (ii, jj), gamma = _stacked_logistic(models)
        z = bf @ alpha + beta
        if len(ii):
            z += pair_products(b, ii, jj) @ gamma
        return _split(_sigmoid(z, inplace=True), len(models))
    return np.stack([as_matrix(g(b)) for g in models])


def evaluate_pairs(models: Sequence[Model], s: np.ndarray, sf: np.ndarray | None = None,
                   st: np.ndarray | None = None) -> np.ndarray:
    """d_g(S) = g(S) − g(S̄) for every model and row of s (M×N bool): J×M×T.

    Logistic surrogates get S̄'s logits from S's: (1 − b)·α = Σα − b·α, and a pair lies in S̄ with weight
    (1 − b_i)(1 − b_j) = 1 − b_i − b_j + b_i·b_j, whose linear part joins α. ``sf`` (s as float64) and ``st``
    (s transposed, C-contiguous) may be passed by a caller that evaluates the same rows again.
    """
    if models and all(isinstance(g, LogisticSurrogate) for g in models):
        bf = np.asarray(s, dtype=np.float64) if sf is None else sf
        alpha, beta, (ii, jj), gamma = _stacked_logistic(models)
        on_pair = np.zeros_like(alpha)  # Σ_{pairs ∋ i} γ
        np.add.at(on_pair, ii, gamma)
        np.add.at(on_pair, jj, gamma)
        lin = bf @ np.concatenate([alpha, alpha + on_pair], axis=1)
        width = alpha.shape[1]
        z_in = lin[:, :width] + beta
        z_out = (alpha.sum(axis=0) + gamma.sum(axis=0) + beta) - lin[:, width:]
        if len(ii):
            both = pair_products(s, ii, jj, st) @ gamma
            z_in += both
            z_out += both
        diff = _sigmoid(z_in, inplace=True)
        diff -= _sigmoid(z_out, inplace=True)
        return _split(diff, len(models))
    return np.stack([as_matrix(g(s)) - as_matrix(g(~s)) for g in models])


def linear_terms(a: np.ndarray, n: int) -> np.ndarray:
    """E_k[d_ℓ(S)·c(S)] for d_ℓ(S) = a·(2b − 1) (a: N×T), the same for every k: N×T (times w_k for θ_k)."""
    total = a.sum(axis=0, keepdims=True)
    return (2.0 / n) * (a - (total - a) / (n - 1))


def fit_odd_linear(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Least squares a of pair differences d (P×C) on x = 2b − 1 (b: P×N bool), lightly ridged: N×C."""
    xs = 2.0 * np.asarray(x, dtype=np.float64) - 1.0
    gram = xs.T @ xs
    reg = LINEAR_RIDGE * max(float(np.trace(gram)) / xs.shape[1], 1.0)
    return np.linalg.solve(gram + reg * np.eye(xs.shape[1]), xs.T @ d)


# --------------------------------------------------------------------------- stratum terms


@dataclass
class TermEstimate:
    """Σ_k Σ_j frac_jk·θ_k(g_j) over the sampled strata, and its Monte-Carlo variance (0 when exact).

    ``diff_var(a, b, t)`` gives the Monte-Carlo variance of the difference between concepts a and b
    (arrays of equal length) for target t.
    """

    values: np.ndarray
    var: np.ndarray
    diff_var: Callable[[np.ndarray, np.ndarray, int], np.ndarray] = field(repr=False)


def _no_diff_var(a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
    return np.zeros(len(a))


class Enumeration:
    """Exact stratum terms from every model on all 2^n coalitions (n ≤ :data:`SURROGATE_ENUM_MAX_N`)."""

    def __init__(self, n: int):
        self.n = n
        bits = all_coalitions(n)
        sizes = bits.sum(axis=1)
        order = np.argsort(sizes, kind="stable")
        self.bits = bits[order].astype(np.float64)  # sorted by size
        edges = np.searchsorted(sizes[order], np.arange(n + 2))
        self.slices = [slice(int(edges[s]), int(edges[s + 1])) for s in range(n + 1)]
        self._last: tuple[Sequence[Model], dict[int, np.ndarray]] | None = None  # models, their per-size terms

    def draw(self, strata: Sequence[int], rng: np.random.Generator) -> None:
        """Nothing to draw."""

    def terms(self, models: Sequence[Model], frac: dict[int, np.ndarray], strata: Sequence[int],
              pairs: tuple[np.ndarray, np.ndarray] | None = None) -> TermEstimate:
        """Σ_k Σ_j frac[k][j]·θ_k(g_j) over ``strata`` (``pairs`` is not needed: the terms are exact)."""
        n, bits = self.n, self.bits
        if self._last is not None and self._last[0] is models:
            per_size = self._last[1]  # the same surrogates as at the last check
        else:
            g = evaluate(models, bits)  # J×2^n×T
            jn, _, t = g.shape
            flat = np.moveaxis(g, 0, 1).reshape(g.shape[1], jn * t)
            per_size = {}
            for s in range(1, n):
                sl = self.slices[s]
                inside = bits[sl].T @ flat[sl]  # N×(J·T): Σ_{|S|=s, i∈S} g(S)
                total = flat[sl].sum(axis=0)
                per_size[s] = ((inside / s - (total[None, :] - inside) / (n - s)) / comb(n, s)).reshape(n, jn, t)
            self._last = (models, per_size)
        t = next(iter(per_size.values())).shape[2]
        values = np.zeros((n, t))
        for k in strata:
            theta = per_size[k] if 2 * k == n else per_size[k] + per_size[n - k]  # N×J×T
            values += np.einsum("ijt,j->it", theta, frac[k])
        return TermEstimate(values, np.zeros((n, t)), _no_diff_var)


class StrataMC:
    """Monte-Carlo stratum terms, :data:`SURROGATE_MC_PAIRS` independent pairs per stratum (the first version)."""

    def __init__(self, n: int, pairs: int = SURROGATE_MC_PAIRS):
        self.n, self.pairs = n, pairs
        self.draws: dict[int, np.ndarray] = {}

    def draw(self, strata: Sequence[int], rng: np.random.Generator) -> None:
        """The strata's samples, once per run (reused every round; their error is in the variance)."""
        for k in strata:
            if k not in self.draws:
                self.draws[k] = draw_stratum(self.n, k, self.pairs, rng)

    def terms(self, models: Sequence[Model], frac: dict[int, np.ndarray], strata: Sequence[int],
              pairs: tuple[np.ndarray, np.ndarray] | None = None) -> TermEstimate:
        """Σ_k of the sample means of w_k·c(S)·Σ_j frac[k][j]·d_{g_j}(S), with their variance."""
        n, m = self.n, self.pairs
        stacked = np.concatenate([self.draws[k] for k in strata])
        d_all = evaluate_pairs(models, stacked)  # J×(S·m)×T
        t = d_all.shape[2]
        values, var = np.zeros((n, t)), np.zeros((n, t))
        stats = []
        for pos, k in enumerate(strata):
            s = self.draws[k]
            sf = s.astype(np.float64)
            dg = np.einsum("jmt,j->mt", d_all[:, pos * m : (pos + 1) * m], frac[k])
            w, inv_k, inv_rest = stratum_weight(n, k), 1.0 / k, 1.0 / (n - k)
            inside = sf.T @ dg  # Σ_{i∈S} d
            mean = w * (inside * (inv_k + inv_rest) - dg.sum(axis=0) * inv_rest) / m
            sq = dg**2
            inside_sq = sf.T @ sq
            second = w * w * (inside_sq * inv_k**2 + (sq.sum(axis=0) - inside_sq) * inv_rest**2)
            values += mean
            var += (second - m * mean**2) / (m - 1) / m
            stats.append((sf, sq, inside, inside_sq, w * (inv_k + inv_rest)))

        def diff_var(a: np.ndarray, b: np.ndarray, tt: int) -> np.ndarray:
            # u = w·(c_a − c_b)·d with c_a − c_b = K·(b_a − b_b): Σu = K·(Σ_a − Σ_b),
            # Σu² = K²·(Σ_a d² + Σ_b d² − 2·Σ_{a,b both in S} d²).
            out = np.zeros(len(a))
            for sf, sq, inside, inside_sq, big_k in stats:
                both = (sf[:, a] * sf[:, b]).T @ sq[:, tt]
                total = big_k * (inside[a, tt] - inside[b, tt])
                second = big_k**2 * (inside_sq[a, tt] + inside_sq[b, tt] - 2.0 * both)
                out += (second - total**2 / m) / (m - 1) / m
            return out

        return TermEstimate(values, var, diff_var)


class WindowsMC:
    """Monte-Carlo stratum terms of g − ℓ on permutation windows, ℓ's terms in closed form (module docstring)."""

    def __init__(self, n: int, rows: int = SURROGATE_MC_ROWS):
        self.n, self.rows = n, rows
        self.pos: np.ndarray | None = None  # rows×n int32: each concept's position in the row's permutation
        self._at: np.ndarray | None = None  # rows×n int64: the same positions as flat indices into a rows×n array
        self._stacked: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}
        self._last: tuple[Sequence[Model], tuple[int, ...], np.ndarray] | None = None  # models, strata, their d_g

    def draw(self, strata: Sequence[int], rng: np.random.Generator) -> None:
        """One permutation per row, once per run; stratum k's window starts at Σ_{l<k} l (mod n)."""
        if self.pos is not None:
            return
        n = self.n
        perm = rng.random((self.rows, n)).argsort(axis=1)
        self.pos = np.empty(perm.shape, dtype=np.int32)
        self.pos[np.arange(self.rows)[:, None], perm] = np.arange(n, dtype=np.int32)[None, :]
        self._at = self.pos + n * np.arange(self.rows)[:, None]

    def _cover(self, strata: Sequence[int]) -> np.ndarray:
        """The positions of the strata's windows in the permutations, S×n bool: stratum k covers o_k … o_k + k − 1
        (cyclically), o_k = Σ_{l<k} l mod n."""
        ks = np.array(strata, dtype=np.int32)[:, None]
        offsets = (ks * (ks - 1) // 2) % self.n
        at = np.arange(self.n)
        # (at − o_k) mod n < k, i.e. o_k ≤ at < o_k + k, or at < o_k + k − n where the window wraps around
        return ((at >= offsets) & (at < offsets + ks)) | (at < offsets + ks - self.n)

    def _rows(self, strata: Sequence[int]) -> tuple[np.ndarray, ...]:
        """The strata's windows stacked (S·rows)×n: as bool, as ±1 (x = 2b − 1), as 0/1 float64 and as bool
        transposed (n×(S·rows), C-contiguous)."""
        key = tuple(strata)
        if key not in self._stacked:
            # row r of stratum k holds concept i when k's window covers i's position pos[r, i]
            flat = np.take(self._cover(strata), self.pos, axis=1).reshape(-1, self.n)
            flat_f = flat.astype(np.float64)
            signs = flat_f * 2.0
            signs -= 1.0
            self._stacked[key] = (flat, signs, flat_f, np.ascontiguousarray(flat.T))
        return self._stacked[key]

    def terms(self, models: Sequence[Model], frac: dict[int, np.ndarray], strata: Sequence[int],
              pairs: tuple[np.ndarray, np.ndarray] | None = None) -> TermEstimate:
        """θ_k(ℓ̄_k) + mean over rows of Σ_k w_k·c(S_k)·(d_ḡk − d_ℓ̄k)(S_k), ḡ_k = Σ_j frac[k][j]·g_j.

        ``pairs``: (coalitions P×N bool, d_g of every model on them J×P×T), the evaluated pairs that ℓ_j is
        fitted on.
        """
        n, m = self.n, self.rows
        x, d_seen = pairs
        jn, _, t = d_seen.shape
        ns = len(strata)
        a = fit_odd_linear(x, np.moveaxis(d_seen, 0, 1).reshape(len(x), jn * t))  # N×(J·T)
        closed = linear_terms(a, n).reshape(n, jn, t)
        flat, signs, flat_f, flat_t = self._rows(strata)
        if self._last is not None and self._last[0] is models and self._last[1] == tuple(strata):
            d_g = self._last[2]  # the same surrogates as at the last check: their pair differences are known
        else:
            d_g = evaluate_pairs(models, flat, flat_f, flat_t)  # J×(S·m)×T
            self._last = (models, tuple(strata), d_g)
        resid_all = d_g - np.moveaxis((signs @ a).reshape(ns * m, jn, t), 1, 0)
        share = np.stack([frac[k] for k in strata])  # S×J
        ks = np.array(strata, dtype=np.float64)
        w = np.array([stratum_weight(n, k) for k in strata])
        values = np.einsum("ijt,kj->it", closed, share * w[:, None])
        resid = np.einsum("jkmt,kj->kmt", resid_all.reshape(jn, ns, m, t), share)  # S×m×T
        inside = w * (1.0 / ks + 1.0 / (n - ks))  # c = inside·b − outside on a window
        outside = w / (n - ks)
        # Σ_k inside_k·r_k over the windows that hold a concept, summed by position in the permutation (a window
        # is the same positions in every row: an S×N 0/1 matrix), then read at each concept's position: each term
        # is exact (r or 0) and they are added in stratum order, the same sums as over each row's windows.
        cover = self._cover(strata).astype(np.float64)
        units = np.empty((m, n, t))
        for tt in range(t):
            r = resid[:, :, tt]
            by_position = (inside[:, None] * r).T @ cover  # rows×N
            units[:, :, tt] = (by_position.take(self._at)
                               - (outside[:, None] * r).sum(axis=0)[:, None])
        values += units.mean(axis=0)
        var = units.var(axis=0, ddof=1) / m

        def diff_var(a_idx: np.ndarray, b_idx: np.ndarray, tt: int) -> np.ndarray:
            return (units[:, a_idx, tt] - units[:, b_idx, tt]).var(axis=0, ddof=1) / m

        return TermEstimate(values, var, diff_var)
