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


def _bce_soft(z: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """Weighted BCE of σ(z) against soft labels p, computed stably from the logits z."""
    return float(w @ (np.logaddexp(0.0, z) - p * z))


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
    x = np.asarray(coalitions, dtype=np.float64)
    m, n = x.shape
    x1 = np.concatenate([x, np.ones((m, 1))], axis=1)
    p = np.clip(np.asarray(prob, dtype=np.float64), LOGISTIC_PROB_EPS, 1.0 - LOGISTIC_PROB_EPS)
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    reg = np.full(n + 1, ridge)
    reg[-1] = 0.0
    # Start from least squares on the log-odds (exact when the data are logistic-linear).
    xw = x1 * w[:, None]
    theta = np.linalg.solve(xw.T @ x1 + np.diag(reg + 1e-9), xw.T @ np.log(p / (1.0 - p)))

    def loss(t: np.ndarray) -> float:
        return _bce_soft(x1 @ t, p, w) + 0.5 * float(reg @ t**2)

    current = loss(theta)
    for _ in range(max_iter):
        q = 1.0 / (1.0 + np.exp(-(x1 @ theta)))
        grad = x1.T @ (w * (q - p)) + reg * theta
        hess = (x1 * (w * q * (1.0 - q))[:, None]).T @ x1 + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-4:
            trial = theta - scale * step
            value = loss(trial)
            if value <= current:
                break
            scale *= 0.5
        else:
            break
        theta, current = trial, value
        if np.abs(scale * step).max() < tol:
            break
    return theta[:n].copy(), float(theta[n])
