"""Shapley and Banzhaf values of set functions over N players (concepts), vectorised.

A *set function* v assigns a value to every coalition S ⊆ {0..N-1}. Coalitions are
boolean vectors b ∈ {0,1}^N; in :func:`all_coalitions` order, row ``k`` is the
coalition whose bit ``i`` is ``(k >> i) & 1``.

Values
------
Shapley   φ_i = Σ_{S ∌ i} |S|!(N-|S|-1)!/N! · (v(S ∪ i) − v(S))
Banzhaf   β_i = 2^{-(N-1)} Σ_{S ∌ i} (v(S ∪ i) − v(S))
          (the expectation of the marginal under uniform Bernoulli(½) coalitions —
          what the EAC reference's Monte-Carlo loop estimates).

Set functions given as callables take a M×N ``float32`` coalition matrix and return
M×T values (T targets, e.g. several explained classes). The surrogate set function
of EAC, ``v(b) = softmax(A·b + c)[y]``, is built by :func:`softmax_value_fn`; it is
not linear in b, so its exact values need all 2^N coalitions
(:func:`surrogate_exact_values`), which are a few chunked matrix products.
"""

from __future__ import annotations

from collections.abc import Callable
from math import lgamma

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]

#: Largest N for which :func:`all_coalitions` / exact enumeration is allowed (2^22 rows).
MAX_ENUMERATION_N = 22
#: Classes whose logit stays this far below another class's for *every* coalition are
#: dropped from the surrogate softmax (their share is below e^-40 ≈ 4e-18 of the sum).
PRUNE_MARGIN = 40.0
#: Rows of coalitions per call to a value function in the estimators.
DEFAULT_ROWS_PER_CALL = 65536


def all_coalitions(n: int) -> np.ndarray:
    """Every coalition of n players, 2^n×n ``bool``; row k has bit i = (k >> i) & 1."""
    if n > MAX_ENUMERATION_N:
        raise ValueError(f"enumerating 2^{n} coalitions is too large (limit N = {MAX_ENUMERATION_N})")
    k = np.arange(2**n, dtype=np.int64)[:, None]
    return ((k >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(bool)


def coalition_index(coalitions: np.ndarray) -> np.ndarray:
    """Row index in :func:`all_coalitions` order of each coalition (M×N → M ``int64``)."""
    coalitions = np.asarray(coalitions, dtype=np.int64)
    return (coalitions << np.arange(coalitions.shape[1], dtype=np.int64)[None, :]).sum(axis=1)


def shapley_size_weights(n: int) -> np.ndarray:
    """Shapley weight of a marginal v(S ∪ i) − v(S) by |S| = s, s = 0..n-1: s!(n-s-1)!/n!."""
    return np.array([np.exp(lgamma(s + 1) + lgamma(n - s) - lgamma(n + 1)) for s in range(n)])


def shapley_kernel_weights(n: int, sizes: np.ndarray) -> np.ndarray:
    """KernelSHAP weight (n-1) / (C(n,s)·s·(n-s)) of coalitions of the given sizes.

    Sizes 0 and n get ``inf`` (they are enforced as constraints instead).
    """
    sizes = np.asarray(sizes)
    out = np.full(sizes.shape, np.inf)
    inner = (sizes > 0) & (sizes < n)
    s = sizes[inner].astype(np.float64)
    log_binom = np.array([lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) for k in s])
    out[inner] = (n - 1) / (np.exp(log_binom) * s * (n - s))
    return out


def kernel_size_distribution(n: int) -> np.ndarray:
    """Probability of coalition size s = 1..n-1 under the Shapley kernel: ∝ (n-1)/(s(n-s))."""
    if n < 2:
        return np.zeros(0)
    s = np.arange(1, n, dtype=np.float64)
    p = (n - 1) / (s * (n - s))
    return p / p.sum()


def _as_2d(values: np.ndarray) -> tuple[np.ndarray, bool]:
    values = np.asarray(values, dtype=np.float64)
    return (values[:, None], True) if values.ndim == 1 else (values, False)


def _exact(values: np.ndarray, n: int, weights_by_size: np.ndarray) -> np.ndarray:
    v, squeeze = _as_2d(values)
    if v.shape[0] != 2**n:
        raise ValueError(f"expected 2^{n} = {2**n} coalition values, got {v.shape[0]}")
    idx = np.arange(2**n, dtype=np.int64)
    sizes = np.zeros(2**n, dtype=np.int64)
    for i in range(n):
        sizes += (idx >> i) & 1
    out = np.zeros((n, v.shape[1]))
    for i in range(n):
        without = idx[((idx >> i) & 1) == 0]
        marg = v[without | (1 << i)] - v[without]
        out[i] = weights_by_size[sizes[without]] @ marg
    return out[:, 0] if squeeze else out


def exact_shapley(values: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values from a set function tabulated on all 2^n coalitions.

    Parameters
    ----------
    values : ndarray, 2^n or 2^n×T
        ``values[k]`` is v of coalition k in :func:`all_coalitions` order.
    n : int

    Returns
    -------
    ndarray of float64, n or n×T
    """
    return _exact(values, n, shapley_size_weights(n))


def exact_banzhaf(values: np.ndarray, n: int) -> np.ndarray:
    """Exact Banzhaf values (mean marginal over uniform coalitions); shapes as :func:`exact_shapley`."""
    return _exact(values, n, np.full(max(n, 1), 2.0 ** -(n - 1) if n else 0.0))


# --------------------------------------------------------------------------- surrogate


def softmax_value_fn(a: np.ndarray, const: np.ndarray, targets: np.ndarray) -> ValueFn:
    """The set function v(b) = softmax(A·b + c)[targets] of a linear-in-b logit surrogate.

    Parameters
    ----------
    a : ndarray, K×N
        Logit change per concept.
    const : ndarray, K
        Logits of the empty coalition.
    targets : ndarray of int, T

    Returns
    -------
    callable
        M×N coalitions → M×T probabilities (float64).
    """
    a = np.asarray(a, dtype=np.float64)
    const = np.asarray(const, dtype=np.float64)
    targets = np.atleast_1d(np.asarray(targets, dtype=np.int64))
    # Exact-to-rounding pruning: logit bounds over all of {0,1}^N.
    upper = const + np.clip(a, 0, None).sum(axis=1)
    lower = const + np.clip(a, None, 0).sum(axis=1)
    keep = upper >= lower.max() - PRUNE_MARGIN
    keep[targets] = True
    kept = np.nonzero(keep)[0]
    a_t = np.ascontiguousarray(a[kept].T)  # N×K'
    const = const[kept]
    targets = np.searchsorted(kept, targets)

    def value(coalitions: np.ndarray) -> np.ndarray:
        logits = np.asarray(coalitions, dtype=np.float64) @ a_t + const
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits[:, targets] / logits.sum(axis=1, keepdims=True)

    return value


def tabulate(value_fn: ValueFn, n: int, rows_per_call: int = DEFAULT_ROWS_PER_CALL) -> np.ndarray:
    """Evaluate a set function on all 2^n coalitions, in chunks: 2^n×T."""
    if n > MAX_ENUMERATION_N:
        raise ValueError(f"enumerating 2^{n} coalitions is too large (limit N = {MAX_ENUMERATION_N})")
    total = 2**n
    parts = []
    bits = np.arange(n, dtype=np.int64)[None, :]
    for start in range(0, total, rows_per_call):
        k = np.arange(start, min(total, start + rows_per_call), dtype=np.int64)[:, None]
        parts.append(np.asarray(value_fn(((k >> bits) & 1).astype(np.float32)), dtype=np.float64))
    return np.concatenate(parts, axis=0)


def surrogate_exact_values(
    a: np.ndarray, const: np.ndarray, targets: np.ndarray, kind: str = "shapley",
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
) -> np.ndarray:
    """Exact Shapley or Banzhaf values of the surrogate softmax(A·b + c)[y], N×T.

    Enumerates the 2^N coalitions in chunks of ``rows_per_call`` (each chunk is one
    N→K matrix product and a softmax).
    """
    a = np.asarray(a)
    n = a.shape[1]
    table = tabulate(softmax_value_fn(a, const, targets), n, rows_per_call)
    return exact_shapley(table, n) if kind == "shapley" else exact_banzhaf(table, n)


# --------------------------------------------------------------------------- samplers


def uniform_coalitions(m: int, n: int, rng: np.random.Generator, paired: bool = True) -> np.ndarray:
    """m Bernoulli(½) coalitions, m×n ``bool``.

    With ``paired`` the second half are the complements of the first half
    (antithetic pairs: rows ``2j`` and ``2j+1`` are b and 1−b); m odd leaves the
    last row unpaired.
    """
    if not paired:
        return rng.random((m, n)) < 0.5
    half = (m + 1) // 2
    first = rng.random((half, n)) < 0.5
    return _interleave(first, m)


def kernel_coalitions(m: int, n: int, rng: np.random.Generator, paired: bool = True) -> np.ndarray:
    """m coalitions whose sizes follow the Shapley kernel (sizes 1..n-1), m×n ``bool``.

    The size s is drawn with probability ∝ (n-1)/(s(n-s)), then a uniform subset
    of that size. With ``paired`` rows come as (b, 1−b) pairs. For n < 2 this falls
    back to :func:`uniform_coalitions`.
    """
    if n < 2:
        return uniform_coalitions(m, n, rng, paired)
    count = (m + 1) // 2 if paired else m
    sizes = rng.choice(np.arange(1, n), size=count, p=kernel_size_distribution(n))
    ranks = rng.random((count, n)).argsort(axis=1).argsort(axis=1)
    first = ranks < sizes[:, None]
    return _interleave(first, m) if paired else first


def _interleave(first: np.ndarray, m: int) -> np.ndarray:
    out = np.empty((2 * first.shape[0], first.shape[1]), dtype=bool)
    out[0::2] = first
    out[1::2] = ~first
    return out[:m]


# --------------------------------------------------------------------------- estimators


def _call(value_fn: ValueFn, coalitions: np.ndarray) -> np.ndarray:
    out = np.asarray(value_fn(coalitions.astype(np.float32)), dtype=np.float64)
    return out[:, None] if out.ndim == 1 else out


def banzhaf_mc(
    value_fn: ValueFn,
    n: int,
    num_samples: int,
    rng: np.random.Generator,
    shared: bool = True,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo Banzhaf values: mean of v(b, i=1) − v(b, i=0) over Bernoulli(½) b.

    This is the EAC reference estimator (``num_samples`` = 50 000 per concept).

    Parameters
    ----------
    value_fn : callable, M×N → M×T
    n : int
    num_samples : int
        Coalitions per concept.
    rng : numpy.random.Generator
    shared : bool
        True: one set of samples serves every concept (v(b) is computed once per
        sample, plus one flipped copy per concept: (N+1)·S evaluations). False:
        fresh samples per concept, as the reference draws them (2·N·S evaluations).
    rows_per_call : int
        Coalitions per call of ``value_fn`` (bounds memory).

    Returns
    -------
    values, stderr : ndarray of float64, N×T
        Means and their standard errors (sample std / √S).
    """
    total = sums = sq = None
    if shared:
        chunk = max(1, rows_per_call // (n + 1))
        for start in range(0, num_samples, chunk):
            c = min(chunk, num_samples - start)
            b = rng.random((c, n)) < 0.5
            flips = np.repeat(b[:, None, :], n, axis=1)  # c×N×N: row i flips bit i
            diag = np.arange(n)
            flips[:, diag, diag] = ~flips[:, diag, diag]
            vb = _call(value_fn, b)  # c×T
            vf = _call(value_fn, flips.reshape(c * n, n)).reshape(c, n, -1)
            sign = np.where(b, 1.0, -1.0)[:, :, None]
            marg = sign * (vb[:, None, :] - vf)  # c×N×T
            sums = marg.sum(0) if sums is None else sums + marg.sum(0)
            sq = (marg**2).sum(0) if sq is None else sq + (marg**2).sum(0)
        total = num_samples
    else:
        rows = []
        sq_rows = []
        chunk = max(1, rows_per_call // 2)
        for i in range(n):
            s_i = None
            q_i = None
            for start in range(0, num_samples, chunk):
                c = min(chunk, num_samples - start)
                b = rng.random((c, n)) < 0.5
                on = b.copy()
                on[:, i] = True
                off = b
                off[:, i] = False
                marg = _call(value_fn, np.concatenate([on, off]))
                marg = marg[:c] - marg[c:]
                s_i = marg.sum(0) if s_i is None else s_i + marg.sum(0)
                q_i = (marg**2).sum(0) if q_i is None else q_i + (marg**2).sum(0)
            rows.append(s_i)
            sq_rows.append(q_i)
        sums, sq, total = np.array(rows), np.array(sq_rows), num_samples
    mean = sums / total
    var = np.maximum(sq / total - mean**2, 0.0) * total / max(total - 1, 1)
    return mean, np.sqrt(var / total)


def permutation_shapley(
    value_fn: ValueFn,
    n: int,
    num_permutations: int,
    rng: np.random.Generator,
    antithetic: bool = True,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation-sampling Shapley values with a standard error per concept.

    Each permutation π adds the concepts one by one; concept π_j receives the
    marginal v(π_{≤j}) − v(π_{<j}). All prefixes of a chunk of permutations are
    evaluated in one call. With ``antithetic`` every permutation is followed by
    its reverse and the standard error is computed over pair means.

    Parameters
    ----------
    value_fn : callable, M×N → M×T
    n : int
    num_permutations : int
        Permutations (rounded up to even when antithetic).
    rng : numpy.random.Generator
    antithetic : bool
    rows_per_call : int

    Returns
    -------
    values, stderr : ndarray of float64, N×T
    """
    if antithetic:
        num_permutations += num_permutations % 2
    group = 2 if antithetic else 1
    groups = num_permutations // group
    chunk_groups = max(1, rows_per_call // (group * (n + 1)))
    unit_values = []  # per group: N×T mean marginals
    for start in range(0, groups, chunk_groups):
        g = min(chunk_groups, groups - start)
        perms = rng.random((g, n)).argsort(axis=1)
        if antithetic:
            perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(g * 2, n)
        p = perms.shape[0]
        rank = np.empty_like(perms)
        rank[np.arange(p)[:, None], perms] = np.arange(n)[None, :]
        prefixes = rank[:, None, :] < np.arange(n + 1)[None, :, None]  # p×(N+1)×N
        v = _call(value_fn, prefixes.reshape(p * (n + 1), n)).reshape(p, n + 1, -1)
        steps = v[:, 1:, :] - v[:, :-1, :]  # marginal of perms[:, j]
        marg = np.empty_like(steps)
        marg[np.arange(p)[:, None], perms, :] = steps
        unit_values.append(marg.reshape(g, group, n, -1).mean(axis=1))
    units = np.concatenate(unit_values, axis=0)  # G×N×T
    mean = units.mean(axis=0)
    stderr = units.std(axis=0, ddof=1) / np.sqrt(groups) if groups > 1 else np.full_like(mean, np.inf)
    return mean, stderr


#: The factorised flip trick of :func:`softmax_banzhaf_mc` needs exp(±A) to stay finite.
MAX_FACTORISED_LOGIT = 300.0


def softmax_banzhaf_mc(
    a: np.ndarray,
    const: np.ndarray,
    targets: np.ndarray,
    num_samples: int,
    rng: np.random.Generator,
    rows_per_call: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`banzhaf_mc` (shared samples) specialised to v(b) = softmax(A·b + c)[y], much faster.

    Flipping bit i moves the logits by ±A[:, i], so exp(l(b ⊕ e_i)) = exp(l(b))·exp(±A[:, i])
    and the N flipped softmax denominators of a sample are one product
    exp(l(b))ᵀ·exp(±A) (K×N) instead of N softmaxes over K classes. Same samples and
    same estimate as ``banzhaf_mc(softmax_value_fn(a, const, targets), ..., shared=True)``
    given the same ``rng`` state, up to rounding.

    Returns
    -------
    values, stderr : ndarray of float64, N×T
    """
    a = np.asarray(a, dtype=np.float64)
    const = np.asarray(const, dtype=np.float64)
    targets = np.atleast_1d(np.asarray(targets, dtype=np.int64))
    n = a.shape[1]
    if np.abs(a).max(initial=0.0) > MAX_FACTORISED_LOGIT:
        return banzhaf_mc(softmax_value_fn(a, const, targets), n, num_samples, rng, shared=True)
    exp_pos, exp_neg = np.exp(a), np.exp(-a)  # K×N
    chunk = max(1, DEFAULT_ROWS_PER_CALL // (n + 1))  # same chunking (hence rng draws) as banzhaf_mc
    sums = np.zeros((n, len(targets)))
    sq = np.zeros((n, len(targets)))
    for start in range(0, num_samples, chunk):
        c = min(chunk, num_samples - start)
        b = rng.random((c, n)) < 0.5
        for s in range(0, c, rows_per_call):
            bb = b[s : s + rows_per_call]
            logits = bb.astype(np.float64) @ a.T + const
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)  # c'×K
            total = e.sum(axis=1, keepdims=True)
            den = np.where(bb, e @ exp_neg, e @ exp_pos)  # c'×N: denominators after flipping bit i
            for j, y in enumerate(targets):
                p = e[:, y : y + 1] / total  # v(b)
                num = e[:, y : y + 1] * np.where(bb, exp_neg[y], exp_pos[y])
                flipped = num / den  # v(b ⊕ e_i)
                marg = np.where(bb, p - flipped, flipped - p)
                sums[:, j] += marg.sum(axis=0)
                sq[:, j] += (marg**2).sum(axis=0)
    mean = sums / num_samples
    var = np.maximum(sq / num_samples - mean**2, 0.0) * num_samples / max(num_samples - 1, 1)
    return mean, np.sqrt(var / num_samples)


def softmax_permutation_shapley(
    a: np.ndarray,
    const: np.ndarray,
    targets: np.ndarray,
    num_permutations: int,
    rng: np.random.Generator,
    antithetic: bool = True,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`permutation_shapley` specialised to v(b) = softmax(A·b + c)[y].

    The logits along a permutation are running sums c + Σ_{j' ≤ j} A[:, π_j'], so all
    prefixes come from one cumulative sum instead of a P×(N+1)×N coalition matrix
    and its product with A. Same permutations (same ``rng`` draws) and the same
    estimate as the generic function, up to rounding.

    Returns
    -------
    values, stderr : ndarray of float64, N×T
    """
    a = np.asarray(a, dtype=np.float64)
    const = np.asarray(const, dtype=np.float64)
    targets = np.atleast_1d(np.asarray(targets, dtype=np.int64))
    n = a.shape[1]
    if antithetic:
        num_permutations += num_permutations % 2
    group = 2 if antithetic else 1
    groups = num_permutations // group
    chunk_groups = max(1, rows_per_call // (group * (n + 1)))
    cols = a.T  # N×K
    units = []
    for start in range(0, groups, chunk_groups):
        g = min(chunk_groups, groups - start)
        perms = rng.random((g, n)).argsort(axis=1)
        if antithetic:
            perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(g * 2, n)
        p = perms.shape[0]
        logits = np.empty((p, n + 1, cols.shape[1]))
        logits[:, 0] = const
        np.cumsum(cols[perms], axis=1, out=logits[:, 1:])
        logits[:, 1:] += const
        logits -= logits.max(axis=2, keepdims=True)
        np.exp(logits, out=logits)
        v = logits[:, :, targets] / logits.sum(axis=2, keepdims=True)  # p×(N+1)×T
        steps = v[:, 1:, :] - v[:, :-1, :]
        marg = np.empty_like(steps)
        marg[np.arange(p)[:, None], perms, :] = steps
        units.append(marg.reshape(g, group, n, -1).mean(axis=1))
    u = np.concatenate(units, axis=0)
    mean = u.mean(axis=0)
    stderr = u.std(axis=0, ddof=1) / np.sqrt(groups) if groups > 1 else np.full_like(mean, np.inf)
    return mean, stderr
