"""White-box interaction games: classifier-like set functions with known Shapley values.

Each game is a tiny "classifier" over N concepts. A coalition b ∈ {0,1}^N is mapped to a
D-dimensional feature vector h(b) (region statistics: the bits themselves, products of
bits, region coverages, saturating detectors), a frozen head turns the features into the
logits of K classes, and the game's value is the softmax probability of the explained
class(es):

    v(b) = softmax(Fc · h(b) + bias)[classes]          (M×N coalitions → M×T, T = len(classes))

so values live on the probability scale (0..1) like the classifier probabilities the
engine explains, the Shapley values of the explained class sum to v(N) − v(∅) ≤ 1, and
an absolute error such as 0.02 means the same thing in every game. Because the features
are exposed (:meth:`Game.features`, :attr:`Game.head`), the PIE surrogate (a linear map
from bits to features, through the frozen head) can be fitted on them as on a real model.

Games (:data:`GAME_NAMES`, built by :func:`make_game`):

``pairwise``     additive evidence plus strong pairwise products b_i·b_j.
``triples``      additive evidence plus pairwise and triple products.
``saturation``   σ of a steep weighted sum: a few concepts suffice, the rest add nothing.
``and_or``       AND (product of coverages) of two regions, OR of two others.
``two_objects``  the class needs two objects together (each a saturating detector over
                 its concepts); single-object classes compete in the softmax.
``texture``      evidence spread over many concepts (a saturating weighted coverage of all
                 of them, with unequal weights): many similar, small values.

Exact values come from enumerating all 2^N coalitions (:meth:`Game.exact`, N ≤
:data:`MAX_GAME_N`) with :func:`eac.kernels.shapley.exact_shapley`.

Games with closed-form Shapley values at any N (:data:`CLOSED_FORM_GAMES`, built by
:func:`make_closed_form_game`; no enumeration, so the estimator study reaches N = 24–64):

``additive_pairwise``  v(S) = v₀ + Σ_i a_i·b_i + Σ_{i<j} γ_ij·b_i·b_j (a few strong pairs):
                       φ_i = a_i + ½·Σ_j γ_ij.
``unanimity``          a sum of unanimity games v(S) = v₀ + Σ_T w_T·1[T ⊆ S] over singletons,
                       pairs, triples and a few "objects" of 4–6 concepts that count only
                       when complete: φ_i = Σ_{T ∋ i} w_T/|T|.
``detectors``          a classifier-like saturating game: the concepts form four regions
                       (two parts of an object needed together, a third object, background),
                       each read by a saturating detector of its coverage; the class
                       probability is σ of their weighted sum (squeezed into [0.05, 0.95]),
                       plus a small additive term per concept. v depends on a coalition
                       only through its count per region (and the additive term), so the
                       Shapley values are a sum over count vectors (Π(|R_g| + 1) of them),
                       exact at any N.

Values stay on the probability scale, 0 ≤ v ≤ 1, as above (v(∅) ≈ 0.05, v(N) ≈ 0.95).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import comb, lgamma

import numpy as np
from eac.kernels.shapley import exact_shapley, tabulate

#: Largest N a game is built for: exact values enumerate 2^N coalitions (2^20 ≈ 1e6 rows, ~1 s).
MAX_GAME_N = 20
#: Smallest N: the games place regions of 2–4 concepts and need a few spare concepts.
MIN_GAME_N = 6
#: Rows per value call while tabulating the exact values (bounds memory: rows × D floats).
TABULATE_ROWS = 32768
#: Logit of the explained class on the empty coalition: a black image is weak evidence
#: (σ(−3) ≈ 0.05), and all games start there so v(∅) is small and v(N) large.
EMPTY_LOGIT = -3.0
#: Least logit of the explained class on the full coalition (σ(3) ≈ 0.95 before rivals).
FULL_LOGIT = 3.0
#: Slope of the saturating detectors σ(κ(x − θ)); 8 makes the step from 10 % to 90 % of a
#: detector's output span a quarter of its input range — clearly non-additive.
SATURATION_SLOPE = 8.0

Features = Callable[[np.ndarray], np.ndarray]


@dataclass
class Game:
    """A white-box classifier on N concepts: v(b) = softmax(Fc·h(b) + bias)[classes].

    Attributes
    ----------
    name : str
    n : int
        Number of concepts (players).
    features : callable
        M×N coalitions (bool or 0/1) → M×D float64 features h(b).
    head_weight : ndarray, K×D
    head_bias : ndarray, K
    classes : ndarray of int, T
        The explained classes (default: class 0 only).
    """

    name: str
    n: int
    features: Features
    head_weight: np.ndarray
    head_bias: np.ndarray
    classes: np.ndarray = field(default_factory=lambda: np.array([0]))
    _exact: np.ndarray | None = field(default=None, repr=False)

    @property
    def head(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Fc K×D, bias K, classes T): what the PIE surrogate needs."""
        return self.head_weight, self.head_bias, self.classes

    def logits(self, coalitions: np.ndarray) -> np.ndarray:
        """M×N coalitions → M×K logits."""
        return self.features(_bits(coalitions, self.n)) @ self.head_weight.T + self.head_bias

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """M×N coalitions → M×T probabilities of the explained classes (float64)."""
        z = self.logits(coalitions)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z[:, self.classes] / z.sum(axis=1, keepdims=True)

    def with_features(self, coalitions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """M×N coalitions → (M×T probabilities, M×D features), one "forward pass"."""
        h = self.features(_bits(coalitions, self.n))
        z = h @ self.head_weight.T + self.head_bias
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z[:, self.classes] / z.sum(axis=1, keepdims=True), h

    def exact(self) -> np.ndarray:
        """Exact Shapley values, N×T (enumerates 2^N coalitions once, then cached)."""
        if self._exact is None:
            self._exact = exact_shapley(tabulate(self, self.n, TABULATE_ROWS), self.n)
        return self._exact


def _bits(coalitions: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(coalitions)
    if b.ndim != 2 or b.shape[1] != n:
        raise ValueError(f"coalitions must be M×{n}, got shape {b.shape}")
    return b.astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _head(rows: list[np.ndarray], bias: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(rows, dtype=np.float64), np.array(bias, dtype=np.float64)


def _product_columns(b: np.ndarray, groups: list[tuple[int, ...]]) -> np.ndarray:
    if not groups:
        return np.zeros((b.shape[0], 0))
    return np.stack([b[:, list(g)].prod(axis=1) for g in groups], axis=1)


def _distinct_groups(rng: np.random.Generator, n: int, size: int,
                     count: int) -> list[tuple[int, ...]]:
    out: set[tuple[int, ...]] = set()
    while len(out) < count:
        out.add(tuple(sorted(rng.choice(n, size=size, replace=False).tolist())))
    return sorted(out)


def _interaction_game(name: str, n: int, rng: np.random.Generator, triples: bool) -> Game:
    # Additive part: a few strong concepts and a tail of weak ones (logit units).
    linear = rng.gamma(1.0, 0.5, size=n) * rng.choice([1.0, 1.0, 1.0, -0.5], size=n)
    pairs = _distinct_groups(rng, n, 2, max(2, n // 3))
    pair_w = rng.uniform(1.0, 2.5, size=len(pairs)) * rng.choice([1.0, -0.6], size=len(pairs))
    trip = _distinct_groups(rng, n, 3, max(1, n // 5)) if triples else []
    trip_w = rng.uniform(2.0, 3.5, size=len(trip))

    def features(b: np.ndarray) -> np.ndarray:
        return np.concatenate([b, _product_columns(b, pairs), _product_columns(b, trip)], axis=1)

    d = n + len(pairs) + len(trip)
    # The explained class is the model's top-1 on the whole image: lift the additive weights
    # evenly until the full coalition's logit reaches FULL_LOGIT (interactions untouched).
    full = EMPTY_LOGIT + linear.sum() + pair_w.sum() + trip_w.sum()
    linear = linear + max(FULL_LOGIT - full, 0.0) / n
    target = np.concatenate([linear, pair_w, trip_w])
    rival = np.zeros(d)
    rival[:n] = rng.normal(0.0, 0.3, size=n)  # a competing class that likes other concepts
    weight, bias = _head([target, rival, np.zeros(d)], [EMPTY_LOGIT, -1.0, 0.0])
    return Game(name, n, features, weight, bias)


def _saturation_game(n: int, rng: np.random.Generator) -> Game:
    a = rng.gamma(0.8, 1.0, size=n)
    a /= a.sum()
    theta = 0.35  # a third of the total evidence already gives most of the class

    def features(b: np.ndarray) -> np.ndarray:
        score = b @ a
        return np.stack([_sigmoid(SATURATION_SLOPE * (score - theta)), score], axis=1)

    weight, bias = _head([[7.0, 0.5], [0.0, 1.0], [0.0, 0.0]], [EMPTY_LOGIT, -1.0, 0.0])
    return Game("saturation", n, features, weight, bias)


def _regions(rng: np.random.Generator, n: int, count: int, size: int) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[r * size:(r + 1) * size] for r in range(count)]


def _and_or_game(n: int, rng: np.random.Generator) -> Game:
    size = max(2, n // 6)
    r1, r2, r3, r4 = _regions(rng, n, 4, size)
    linear = rng.normal(0.0, 0.3, size=n)

    def features(b: np.ndarray) -> np.ndarray:
        cov = [b[:, r].mean(axis=1) for r in (r1, r2, r3, r4)]
        both = cov[0] * cov[1]
        either = 1.0 - (1.0 - cov[2]) * (1.0 - cov[3])
        return np.concatenate([np.stack([both, either], axis=1), b], axis=1)

    target = np.concatenate([[5.0, 3.0], linear])
    rival = np.concatenate([[0.0, 1.5], np.zeros(n)])
    weight, bias = _head([target, rival, np.zeros(n + 2)], [EMPTY_LOGIT, -1.0, 0.0])
    return Game("and_or", n, features, weight, bias)


def _two_objects_game(n: int, rng: np.random.Generator) -> Game:
    size = 3
    obj_a, obj_b = _regions(rng, n, 2, size)
    wa = rng.uniform(0.5, 1.5, size=size)
    wb = rng.uniform(0.5, 1.5, size=size)
    background = rng.normal(0.0, 0.15, size=n)

    def features(b: np.ndarray) -> np.ndarray:
        det_a = _sigmoid(SATURATION_SLOPE * (b[:, obj_a] @ wa / wa.sum() - 0.4))
        det_b = _sigmoid(SATURATION_SLOPE * (b[:, obj_b] @ wb / wb.sum() - 0.4))
        return np.concatenate([np.stack([det_a * det_b, det_a, det_b], axis=1), b], axis=1)

    zeros = np.zeros(n)
    both = np.concatenate([[7.0, 0.0, 0.0], background])
    only_a = np.concatenate([[0.0, 2.0, 0.0], zeros])
    only_b = np.concatenate([[0.0, 0.0, 2.0], zeros])
    weight, bias = _head([both, only_a, only_b, np.zeros(n + 3)], [EMPTY_LOGIT, -1.0, -1.0, 0.0])
    return Game("two_objects", n, features, weight, bias)


def _texture_game(n: int, rng: np.random.Generator) -> Game:
    a = rng.lognormal(0.0, 0.6, size=n)
    a /= a.sum()

    def features(b: np.ndarray) -> np.ndarray:
        cov = b @ a
        return np.stack([_sigmoid(SATURATION_SLOPE * (cov - 0.5)), cov], axis=1)

    weight, bias = _head([[6.5, 1.0], [0.0, 0.0]], [EMPTY_LOGIT, 0.0])
    return Game("texture", n, features, weight, bias)


#: Names accepted by :func:`make_game`.
GAME_NAMES = ("pairwise", "triples", "saturation", "and_or", "two_objects", "texture")


def make_game(name: str, n: int, seed: int = 0, classes: tuple[int, ...] = (0,)) -> Game:
    """Build a white-box interaction game.

    Parameters
    ----------
    name : str
        One of :data:`GAME_NAMES`.
    n : int
        Number of concepts, :data:`MIN_GAME_N` ≤ n ≤ :data:`MAX_GAME_N`.
    seed : int
        Seeds the game's random weights and region placement (the game is deterministic
        afterwards).
    classes : tuple of int
        Explained classes (T of them); class 0 is the one the game is built around, class
        1 a competitor.

    Returns
    -------
    Game
        Callable M×N → M×T.
    """
    if name not in GAME_NAMES:
        raise ValueError(f"unknown game {name!r}; choose one of {', '.join(GAME_NAMES)}")
    if not MIN_GAME_N <= n <= MAX_GAME_N:
        raise ValueError(f"games are built for {MIN_GAME_N} ≤ n ≤ {MAX_GAME_N}, got n = {n}")
    rng = np.random.default_rng(seed)
    if name in ("pairwise", "triples"):
        game = _interaction_game(name, n, rng, triples=name == "triples")
    else:
        game = {"saturation": _saturation_game, "and_or": _and_or_game,
                "two_objects": _two_objects_game, "texture": _texture_game}[name](n, rng)
    cls = np.asarray(classes, dtype=np.int64)
    if cls.ndim != 1 or cls.size == 0 or cls.min() < 0 or cls.max() >= game.head_weight.shape[0]:
        raise ValueError(f"classes must be 1..{game.head_weight.shape[0]} indices below "
                         f"{game.head_weight.shape[0]}, got {classes}")
    game.classes = cls
    return game


# --------------------------------------------------------------------------- closed-form games


#: Names accepted by :func:`make_closed_form_game`.
CLOSED_FORM_GAMES = ("additive_pairwise", "unanimity", "detectors")
#: v(∅) and v(N) of the closed-form games: σ(EMPTY_LOGIT) and about σ(FULL_LOGIT), like the games above.
CLOSED_FORM_EMPTY = float(1.0 / (1.0 + np.exp(-EMPTY_LOGIT)))
CLOSED_FORM_SPAN = float(1.0 / (1.0 + np.exp(-FULL_LOGIT))) - CLOSED_FORM_EMPTY
#: Share of v(N) − v(∅) carried by interactions (pairs and larger sets) in the polynomial games.
INTERACTION_SHARE = 0.6
#: Share of the interaction mass carried by the 4–6-concept "objects" of the unanimity game.
OBJECT_SHARE = 0.35
#: Concepts per region of the detectors game, as fractions of N (the rest is background).
DETECTOR_REGIONS = (0.15, 0.15, 0.2)
#: Weights (logit units) of the detectors game: both parts of object 1 together, object 2 alone,
#: the background's coverage.
DETECTOR_AND_WEIGHT = 5.0
DETECTOR_SINGLE_WEIGHT = 2.5
DETECTOR_BACKGROUND_WEIGHT = 0.8
#: The detectors game's small additive term per concept (it tells a region's concepts apart): its positive and its
#: negative weights each sum to this in absolute value, and the sigmoid is squeezed into [m, 1 − m], so 0 ≤ v ≤ 1.
DETECTOR_ADDITIVE_MASS = 0.05
#: Coverage at which a region's detector is half on.
DETECTOR_THRESHOLD = 0.5


@dataclass
class ClosedFormGame:
    """A set function over N concepts with exact Shapley values in closed form (any N).

    Attributes
    ----------
    name : str
    n : int
    value : callable
        M×N coalitions (bool or 0/1, float64) → M values.
    exact_values : ndarray, N
        The exact Shapley values.
    classes : ndarray of int, T
        Always ``[0]`` (one explained "class"); values are returned M×1.
    """

    name: str
    n: int
    value: Callable[[np.ndarray], np.ndarray]
    exact_values: np.ndarray
    classes: np.ndarray = field(default_factory=lambda: np.array([0]))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """M×N coalitions → M×1 values (float64)."""
        return self.value(_bits(coalitions, self.n))[:, None]

    def exact(self) -> np.ndarray:
        """Exact Shapley values, N×1."""
        return self.exact_values[:, None]


def _unanimity(name: str, n: int, sets: list[tuple[int, ...]], weights: np.ndarray) -> ClosedFormGame:
    """v(S) = v₀ + Σ_T w_T·1[T ⊆ S]. The negative weights are scaled to sum to −v₀ and the positive ones to
    CLOSED_FORM_SPAN + v₀, so v(N) − v(∅) = CLOSED_FORM_SPAN and 0 ≤ v(S) ≤ 2·v₀ + CLOSED_FORM_SPAN < 1."""
    weights = np.asarray(weights, dtype=np.float64)
    neg = weights < 0
    weights = weights.copy()
    if neg.any():
        weights[neg] *= CLOSED_FORM_EMPTY / -weights[neg].sum()
    weights[~neg] *= (CLOSED_FORM_SPAN + CLOSED_FORM_EMPTY * neg.any()) / weights[~neg].sum()
    members = [np.array(t, dtype=np.int64) for t in sets]

    def value(b: np.ndarray) -> np.ndarray:
        out = np.full(b.shape[0], CLOSED_FORM_EMPTY)
        for t, w in zip(members, weights, strict=True):
            out += w * b[:, t].prod(axis=1)
        return out

    exact = np.zeros(n)
    for t, w in zip(members, weights, strict=True):
        exact[t] += w / len(t)
    return ClosedFormGame(name, n, value, exact)


def _polynomial_game(name: str, n: int, rng: np.random.Generator) -> ClosedFormGame:
    # Additive evidence: a few strong concepts, a tail of weak ones, some negative.
    additive = rng.gamma(1.0, 1.0, size=n) * rng.choice([1.0, 1.0, 1.0, -0.4], size=n)
    sets: list[tuple[int, ...]] = [(i,) for i in range(n)]
    inter: list[tuple[int, ...]] = list(_distinct_groups(rng, n, 2, max(2, n // 3)))
    signs = rng.choice([1.0, -0.5], size=len(inter))
    signs[0] = 1.0  # at least one synergy
    inter_w = [rng.uniform(1.0, 3.0, size=len(inter)) * signs]
    if name == "unanimity":
        triples = _distinct_groups(rng, n, 3, max(1, n // 5))
        inter += triples
        inter_w.append(rng.uniform(1.0, 3.0, size=len(triples)))
        objects = [tuple(sorted(rng.choice(n, size=int(rng.integers(4, 7)), replace=False).tolist()))
                   for _ in range(max(1, n // 10))]
        inter += objects
        obj_w = rng.uniform(1.0, 2.0, size=len(objects))
        inter_w.append(obj_w)
    iw = np.concatenate(inter_w)
    if name == "unanimity":  # the objects carry OBJECT_SHARE of the interaction mass
        k = len(iw) - len(obj_w)
        iw[k:] *= OBJECT_SHARE * iw[:k].sum() / ((1.0 - OBJECT_SHARE) * iw[k:].sum())
    # Interactions carry INTERACTION_SHARE of the total (positive) mass.
    iw *= INTERACTION_SHARE * additive[additive > 0].sum() / ((1.0 - INTERACTION_SHARE) * iw[iw > 0].sum())
    return _unanimity(name, n, sets + inter, np.concatenate([additive, iw]))


def _count_shapley(sizes: list[int], table: np.ndarray) -> np.ndarray:
    """Shapley value of one concept of each region for v(S) = F(counts of S per region).

    ``table`` holds F on the grid of count vectors (shape Π(|R_g| + 1)). For concept i of region g,
    φ_i = Σ_c #{S ∌ i with counts c}·|S|!(n − |S| − 1)!/n!·(F(c + e_g) − F(c)). Returns one value per region.
    """
    n = sum(sizes)
    grids = np.meshgrid(*[np.arange(s + 1) for s in sizes], indexing="ij")
    total = sum(grids)
    weight_by_size = np.array([np.exp(lgamma(s + 1) + lgamma(n - s) - lgamma(n + 1)) for s in range(n)])
    out = []
    for g, size in enumerate(sizes):
        others = [s - (h == g) for h, s in enumerate(sizes)]
        count = np.ones(table.shape)
        for h, grid in enumerate(grids):
            count *= np.array([comb(others[h], c) for c in range(sizes[h] + 1)])[grid]  # 0 where c > others
        lower = [slice(None)] * len(sizes)
        upper = [slice(None)] * len(sizes)
        lower[g], upper[g] = slice(0, size), slice(1, size + 1)
        marg = table[tuple(upper)] - table[tuple(lower)]
        w = weight_by_size[np.minimum(total[tuple(lower)], n - 1)]
        out.append(float((count[tuple(lower)] * w * marg).sum()))
    return np.array(out)


def _detectors_game(n: int, rng: np.random.Generator) -> ClosedFormGame:
    sizes = [max(2, round(f * n)) for f in DETECTOR_REGIONS]
    sizes.append(n - sum(sizes))
    order = rng.permutation(n)
    bounds = np.cumsum([0, *sizes])
    regions = [order[bounds[g]:bounds[g + 1]] for g in range(len(sizes))]
    additive = rng.normal(size=n)
    additive[additive > 0] *= DETECTOR_ADDITIVE_MASS / max(additive[additive > 0].sum(), 1e-12)
    additive[additive < 0] *= DETECTOR_ADDITIVE_MASS / max(-additive[additive < 0].sum(), 1e-12)
    squeeze = 1.0 - 2.0 * DETECTOR_ADDITIVE_MASS

    def logit(cov: list[np.ndarray]) -> np.ndarray:
        det = [_sigmoid(SATURATION_SLOPE * (c - DETECTOR_THRESHOLD)) for c in cov]
        return (EMPTY_LOGIT + DETECTOR_AND_WEIGHT * det[0] * det[1] + DETECTOR_SINGLE_WEIGHT * det[2]
                + DETECTOR_BACKGROUND_WEIGHT * cov[3])

    def value(b: np.ndarray) -> np.ndarray:
        cov = [b[:, r].mean(axis=1) for r in regions]
        return DETECTOR_ADDITIVE_MASS + squeeze * _sigmoid(logit(cov)) + b @ additive

    grids = np.meshgrid(*[np.arange(s + 1) / s for s in sizes], indexing="ij")
    table = squeeze * _sigmoid(logit(grids))
    per_region = _count_shapley(sizes, table)
    exact = additive.copy()
    for g, r in enumerate(regions):
        exact[r] += per_region[g]
    return ClosedFormGame("detectors", n, value, exact)


def make_closed_form_game(name: str, n: int, seed: int = 0) -> ClosedFormGame:
    """Build a game of :data:`CLOSED_FORM_GAMES` over n ≥ :data:`MIN_GAME_N` concepts (no upper limit).

    Parameters
    ----------
    name : str
    n : int
    seed : int
        Seeds the game's weights and sets (the game is deterministic afterwards).

    Returns
    -------
    ClosedFormGame
        Callable M×N → M×1, with :meth:`ClosedFormGame.exact`.
    """
    if name not in CLOSED_FORM_GAMES:
        raise ValueError(f"unknown closed-form game {name!r}; choose one of {', '.join(CLOSED_FORM_GAMES)}")
    if n < MIN_GAME_N:
        raise ValueError(f"games are built for n ≥ {MIN_GAME_N}, got n = {n}")
    rng = np.random.default_rng(seed)
    if name == "detectors":
        return _detectors_game(n, rng)
    return _polynomial_game(name, n, rng)
