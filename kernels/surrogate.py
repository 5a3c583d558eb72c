"""The PIE surrogate of EAC and its fast closed-form variant.

PIE (Per-Input Equivalence) models the classifier on coalitions of one image as

    f'(b) = softmax(Fc·(W·b + c) + bias)[y]

with the classifier's own frozen head (Fc K×D, bias K) and a learned linear map
(W D×N, c D) from the N coalition bits to the D-dimensional feature space. The
surrogate *collapses*: Fc·(W·b + c) + bias = A·b + const with A = Fc·W (K×N) and
const = Fc·c + bias (K), so evaluating it is one N→K product.

:func:`fit_pie_sgd` reproduces the reference fit (SGD lr 0.008, momentum 0.9,
batch 100, binary cross-entropy between f'(b) and the observed probability,
50 epochs, trained on all but the first N coalitions as the reference does). It
runs the SGD trajectory directly on (A, const): the loss depends on W only through
A = Fc·W, so the W-gradient is Fcᵀ·G_t with G_t (K×N) the gradient w.r.t. A, and the
momentum iterates V_t = μ·V_{t−1} + Fcᵀ·G_t, W_{t+1} = W_t − lr·V_t map through Fc to

    Fc·V_t = μ·Fc·V_{t−1} + (Fc·Fcᵀ)·G_t,   A_{t+1} = A_t − lr·Fc·V_t

(and likewise for c). With the
K×K Gram matrix Fc·Fcᵀ computed once, a step costs K²·N instead of B·K·D —
identical iterates (up to rounding) at a fraction of the cost for ResNet-50
(K = 1000, D = 2048).

:func:`fit_linear_logits` is the fast variant: ordinary (optionally weighted,
ridge-stabilised) least squares of the recorded logits on the coalitions. Fitting
the features instead and mapping them through the head gives the *same* A, since
least squares is linear in the targets.

:func:`fit_logistic` fits the surrogate *of the explained class only*,
p'(b) = σ(α·b + β) — the PIE form collapsed to one class, since
softmax(A·b + c)[y] = σ(l_y − log Σ_{k≠y} e^{l_k}) — by minimising the same binary
cross-entropy the reference uses (a convex problem: Newton's method with a
backtracking line search converges in a handful of steps). It needs neither
features nor head, and fits the probability the values are computed on.
"""


from __future__ import annotations

import numpy as np

#: Reference PIE hyper-parameters.
PIE_LR = 0.008
PIE_MOMENTUM = 0.9
PIE_BATCH = 100
PIE_EPOCHS = 50
#: torch.nn.BCELoss clamps log terms at −100 and its gradient's denominator at 1e-12.
BCE_LOG_CLAMP = -100.0
BCE_GRAD_EPS = 1e-12
#: Ridge added to the normal equations of :func:`fit_linear_logits` (relative to the mean diagonal).
DEFAULT_RIDGE = 1e-6
#: :func:`fit_logistic`: observed probabilities are clipped to [ε, 1−ε] (a log-odds of ±16).
LOGISTIC_PROB_EPS = 1e-7
LOGISTIC_RIDGE = 1e-3
LOGISTIC_MAX_ITER = 100
LOGISTIC_TOL = 1e-10
#: Added to the Hessian's diagonal (β has no ridge): keeps the Newton system solvable.
LOGISTIC_DAMPING = 1e-9
#: Backtracking gives up (the fit has converged to rounding) below this fraction of a Newton step.
LOGISTIC_MIN_STEP = 1e-4


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a M×K array (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=-1, keepdims=True)


def pie_init(n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Initial (W D×N, c D) as ``torch.nn.Linear(n, d)`` draws them: U(±1/√n)."""
    bound = 1.0 / np.sqrt(max(n, 1))
    return rng.uniform(-bound, bound, size=(d, n)), rng.uniform(-bound, bound, size=d)


def bce(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean binary cross-entropy as ``torch.nn.BCELoss`` computes it (log clamped at −100)."""
    pred = np.asarray(pred, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(np.maximum(pred, 0.0)), BCE_LOG_CLAMP)
        log_q = np.maximum(np.log(np.maximum(1.0 - pred, 0.0)), BCE_LOG_CLAMP)
    return float(-(target * log_p + (1.0 - target) * log_q).mean())


def _logit_grad(logits: np.ndarray, target_prob: np.ndarray, y: int) -> np.ndarray:
    """d mean-BCE(softmax(logits)[y], t) / d logits, B×K."""
    s = softmax(logits)
    p = s[:, y]
    dl_dp = (p - target_prob) / np.maximum(p * (1.0 - p), BCE_GRAD_EPS) / logits.shape[0]
    grad = -s * p[:, None]
    grad[:, y] += p
    return grad * dl_dp[:, None]


def fit_pie_sgd(
    coalitions: np.ndarray,
    target_prob: np.ndarray,
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    target: int,
    rng: np.random.Generator,
    epochs: int = PIE_EPOCHS,
    lr: float = PIE_LR,
    momentum: float = PIE_MOMENTUM,
    batch_size: int = PIE_BATCH,
    skip_first: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fit the PIE surrogate by the reference SGD, in collapsed form.

    Parameters
    ----------
    coalitions : ndarray, M×N
        The evaluated coalitions (0/1).
    target_prob : ndarray, M
        The classifier's probability of class ``target`` on each coalition.
    head_weight : ndarray, K×D
        The classifier's frozen last layer Fc.
    head_bias : ndarray, K
    target : int
        Explained class y.
    rng : numpy.random.Generator
        Draws the initial W, c and the per-epoch shuffles.
    epochs, lr, momentum, batch_size :
        Reference defaults 50, 0.008, 0.9, 100.
    skip_first : int, optional
        Coalitions left out of training from the start; default N (the reference
        trains on ``data[num_feat:]``).

    Returns
    -------
    a : ndarray of float64, K×N
        A = Fc·W.
    const : ndarray of float64, K
        Fc·c + bias.
    losses : list of float
        Mean training loss per epoch (as the reference accumulates it).
    """
    x_all = np.asarray(coalitions, dtype=np.float64)
    t_all = np.asarray(target_prob, dtype=np.float64)
    fc = np.asarray(head_weight, dtype=np.float64)
    bias = np.asarray(head_bias, dtype=np.float64)
    n = x_all.shape[1]
    skip = n if skip_first is None else skip_first
    x, t = x_all[skip:], t_all[skip:]
    w0, c0 = pie_init(n, fc.shape[1], rng)
    a = fc @ w0
    const = fc @ c0 + bias
    gram = fc @ fc.T  # K×K
    vel_a = np.zeros_like(a)  # Fc·V_W
    vel_c = np.zeros_like(const)  # Fc·V_c
    losses: list[float] = []
    m = x.shape[0]
    for _ in range(epochs):
        order = rng.permutation(m)
        total = 0.0
        for start in range(0, m, batch_size):
            idx = order[start : start + batch_size]
            xb, tb = x[idx], t[idx]
            logits = xb @ a.T + const
            total += bce(softmax(logits)[:, target], tb) * len(idx)
            g = _logit_grad(logits, tb, target)  # B×K
            # Gradients in W-space are Fcᵀ·gᵀ·x; mapped back through Fc they become Gram·(gᵀ·x).
            vel_a = momentum * vel_a + gram @ (g.T @ xb)
            vel_c = momentum * vel_c + gram @ g.sum(axis=0)
            a = a - lr * vel_a
            const = const - lr * vel_c
        losses.append(total / max(m, 1))
    return a, const, losses


def fit_linear_logits(
    coalitions: np.ndarray,
    logits: np.ndarray,
    weights: np.ndarray | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form least-squares fit logits ≈ A·b + const.

    Parameters
    ----------
    coalitions : ndarray, M×N
    logits : ndarray, M×K
        Recorded logits (or features: then map A and const through the head).
    weights : ndarray, M, optional
        Per-row weights of a weighted least squares.
    ridge : float
        Tikhonov term on A (not on the intercept), relative to the mean diagonal
        of XᵀX; keeps the system solvable with few or collinear coalitions.

    Returns
    -------
    a : ndarray of float64, K×N
    const : ndarray of float64, K
    """
    x = np.asarray(coalitions, dtype=np.float64)
    y = np.asarray(logits, dtype=np.float64)
    m, n = x.shape
    x1 = np.concatenate([x, np.ones((m, 1))], axis=1)
    xw = x1 if weights is None else x1 * np.asarray(weights, dtype=np.float64)[:, None]
    gram = xw.T @ x1
    scale = max(float(np.trace(gram)) / (n + 1), 1.0)
    reg = np.full(n + 1, ridge * scale)
    reg[-1] = 0.0
    beta = np.linalg.solve(gram + np.diag(reg), xw.T @ y)  # (N+1)×K
    return beta[:n].T.copy(), beta[n].copy()


def _bce_soft(z: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted BCE of σ(z) against soft labels p, computed stably from the logits z (sum over the last axis)."""
    return ((np.logaddexp(0.0, z) - p * z) * w).sum(axis=-1)


def fit_logistic(
    coalitions: np.ndarray,
    prob: np.ndarray,
    weights: np.ndarray | None = None,
    ridge: float = LOGISTIC_RIDGE,
    max_iter: int = LOGISTIC_MAX_ITER,
    tol: float = LOGISTIC_TOL,
) -> tuple[np.ndarray, float]:
    """Fit p'(b) = σ(α·b + β) to observed probabilities by minimising BCE (Newton).

    Parameters
    ----------
    coalitions : ndarray, M×N
    prob : ndarray, M
        The classifier's probability of the explained class on each coalition.
    weights : ndarray, M, optional
        Row weights (default 1).
    ridge : float
        L2 penalty on α (not β), keeps the problem strictly convex.
    max_iter, tol :
        Newton iterations and the step size at which to stop.

    Returns
    -------
    alpha : ndarray of float64, N
    beta : float
    """
    prob = np.asarray(prob, dtype=np.float64)
    alpha, beta = fit_logistic_batch(np.asarray(coalitions)[None], prob[None],
                                     None if weights is None else np.asarray(weights, dtype=np.float64)[None],
                                     ridge=ridge, max_iter=max_iter, tol=tol)
    return alpha[0], float(beta[0])


def fit_logistic_batch(
    coalitions: np.ndarray,
    prob: np.ndarray,
    weights: np.ndarray | None = None,
    ridge: float = LOGISTIC_RIDGE,
    max_iter: int = LOGISTIC_MAX_ITER,
    tol: float = LOGISTIC_TOL,
    init: np.ndarray | None = None,
    intercept_column: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """B independent fits p'_b(x) = σ(α_b·x + β_b) by minimising weighted BCE (Newton), all at once.

    Each fit follows :func:`fit_logistic`'s path: least squares on the log-odds as the start, Newton steps
    with backtracking (halving down to :data:`LOGISTIC_MIN_STEP` of a step), stop once a step is below
    ``tol`` or no backtracked step lowers the loss. Fits that have stopped leave the batch.

    Parameters
    ----------
    coalitions : ndarray, B×M×N
        Each fit's design (0/1 or real); a row with weight 0 does not enter that fit.
    prob : ndarray, B×M
    weights : ndarray, B×M, optional
        Row weights (default 1).
    ridge, max_iter, tol :
        As in :func:`fit_logistic`.
    init : ndarray, B×(N+1), optional
        Starting points (α, β), e.g. earlier fits on most of the same rows (the problems are strictly convex:
        the optimum does not depend on it); default: least squares on the log-odds.
    intercept_column : bool
        The designs already end with the intercept's column of ones (B×M×(N+1), float64): used as they are,
        without a copy.

    Returns
    -------
    alpha : ndarray of float64, B×N
    beta : ndarray of float64, B
    """
    if intercept_column:
        x1 = np.asarray(coalitions, dtype=np.float64)
        nb, m, n = x1.shape[0], x1.shape[1], x1.shape[2] - 1
    else:
        x = np.asarray(coalitions, dtype=np.float64)
        nb, m, n = x.shape
        x1 = np.empty((nb, m, n + 1))
        x1[..., :n] = x
        x1[..., n] = 1.0
    p = np.clip(np.asarray(prob, dtype=np.float64), LOGISTIC_PROB_EPS, 1.0 - LOGISTIC_PROB_EPS)
    w = np.ones((nb, m)) if weights is None else np.asarray(weights, dtype=np.float64)
    reg = np.full(n + 1, ridge)
    reg[-1] = 0.0
    damp = np.diag(reg + LOGISTIC_DAMPING)
    roots = np.empty(x1.shape)  # the Hessian's factor x1·√(w·q·(1 − q)) of every step, written in place
    if init is None:  # least squares on the log-odds (exact when the data are logistic-linear)
        xwt = np.swapaxes(np.multiply(x1, w[..., None], out=roots), 1, 2)
        theta = np.linalg.solve(xwt @ x1 + damp, (xwt @ np.log(p / (1.0 - p))[..., None]))[..., 0]
    else:
        theta = np.array(init, dtype=np.float64)
    # The logits x1·θ are carried along (a trial point's are z − s·(x1·step)), so a line-search trial
    # costs O(M) instead of a product with x1.
    z = (x1 @ theta[..., None])[..., 0]
    current = _bce_soft(z, p, w) + 0.5 * (theta**2 @ reg)
    halvings = int(np.ceil(np.log2(1.0 / LOGISTIC_MIN_STEP)))
    scales = 0.5 ** np.arange(halvings)  # 1, ½, … while above LOGISTIC_MIN_STEP
    active = np.arange(nb)
    for _ in range(max_iter):
        if not len(active):
            break
        if len(active) == nb:  # no fit has stopped yet: no copies
            xa, za, pa, wa, ta = x1, z, p, w, theta
        else:
            xa, za, pa, wa, ta = x1[active], z[active], p[active], w[active], theta[active]
        q = 1.0 / (1.0 + np.exp(-za))
        grad = (np.swapaxes(xa, 1, 2) @ (wa * (q - pa))[..., None])[..., 0] + reg * ta
        root = np.multiply(xa, np.sqrt(wa * q * (1.0 - q))[..., None], out=roots[:len(active)])
        step = np.linalg.solve(np.swapaxes(root, 1, 2) @ root + damp, grad[..., None])  # Hessian: rank-M product
        z_step = (xa @ step)[..., 0]
        step = step[..., 0]
        # A full step first; the backtracked ones only for the fits that rejected it (all halvings at once).
        value = _bce_soft(za - z_step, pa, wa) + 0.5 * ((ta - step) ** 2 @ reg)
        chosen = np.where(value <= current[active], 0, -1)
        redo = np.nonzero(chosen < 0)[0]
        if len(redo) and halvings > 1:
            s = scales[1:]
            z_try = za[redo, None, :] - s[None, :, None] * z_step[redo, None, :]
            t_try = ta[redo, None, :] - s[None, :, None] * step[redo, None, :]
            v_try = _bce_soft(z_try, pa[redo, None, :], wa[redo, None, :]) + 0.5 * (t_try**2 @ reg)
            ok = v_try <= current[active[redo], None]
            first = np.argmax(ok, axis=1)
            found = ok[np.arange(len(redo)), first]
            chosen[redo] = np.where(found, first + 1, -1)
            value[redo] = np.where(found, v_try[np.arange(len(redo)), first], value[redo])
        moved = chosen >= 0
        scale = scales[np.maximum(chosen, 0)]
        upd = active[moved]
        theta[upd] = ta[moved] - scale[moved, None] * step[moved]
        z[upd] = za[moved] - scale[moved, None] * z_step[moved]
        current[upd] = value[moved]
        small = np.abs(scale[:, None] * step).max(axis=1) < tol
        active = active[moved & ~small]  # no lower point found, or converged: the fit is done
    return theta[:, :n].copy(), theta[:, n].copy()
