"""Class activation maps (CAM) and SeCAM over concept masks, in numpy/opencv only.

For a network that ends in global average pooling followed by one linear layer,
``logits = W · GAP(F) + b`` with F the C×h×w feature map, the class activation
map of class y (Zhou et al., "Learning Deep Features for Discriminative
Localization", CVPR 2016) is

    M_y(u, v) = Σ_c W[y, c] · F[c, u, v],

so that mean_{u,v} M_y = logit_y − b_y exactly: the map spreads the class's
logit over the feature grid. It is upsampled to the input crop bilinearly, as
the CAM paper does (:func:`upsample_map`).

Concepts read a map through :func:`concept_scores` (mean or sum of the map over
each mask). SeCAM ("Segmentation - Class Activation Mapping": Cao, Nguyen,
Nguyen and Nguyen, arXiv 2307.04137; Nguyen, Cao, Nguyen, Nguyen and Yairi,
"SeCAM: Tightly Accelerate the Image Explanation via Region-Based
Segmentation", IEICE Trans. Inf. & Syst. E105.D(8), 2022) gives each segment
the average of the class activation map over its pixels, after the map is
normalised: its positive part scaled by its maximum into [0, 1]
(:func:`secam_normalise`). The authors segment with SLIC; here any concept
masks serve (SAM masks, SLIC, a grid, user masks), and masks may overlap.

All functions are pure, vectorised and take plain arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Ways :func:`concept_scores` reduces a map over a mask.
REDUCTIONS = ("mean", "sum")


def _as_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be T×h×w (or h×w), got shape {maps.shape}")
    return maps


def class_activation_map(feature_map: np.ndarray, weight: np.ndarray, targets) -> np.ndarray:
    """Class activation maps W_y · F of the given classes.

    Parameters
    ----------
    feature_map : ndarray of float, C×h×w
        The input of the network's global average pooling for one image.
    weight : ndarray of float, K×C
        The final linear layer's weights (``head.npz``'s ``weight``).
    targets : int or sequence of int, T
        Classes whose maps are wanted.

    Returns
    -------
    ndarray of float64, T×h×w
        ``maps[t, u, v] = Σ_c weight[targets[t], c] · feature_map[c, u, v]``.
        The bias is left out; the mean of ``maps[t]`` is ``logit − bias``.

    Examples
    --------
    >>> f = np.stack([np.eye(2), np.ones((2, 2))])          # C=2, h=w=2
    >>> class_activation_map(f, np.array([[1.0, 0.5]]), 0)[0]
    array([[1.5, 0.5],
           [0.5, 1.5]])
    """
    feature_map = np.asarray(feature_map, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if feature_map.ndim != 3:
        raise ValueError(f"feature_map must be C×h×w, got shape {feature_map.shape}")
    if weight.ndim != 2 or weight.shape[1] != feature_map.shape[0]:
        raise ValueError(f"weight must be K×{feature_map.shape[0]} (the feature map has "
                         f"{feature_map.shape[0]} channels), got shape {weight.shape}")
    targets = np.atleast_1d(np.asarray(targets, dtype=np.int64))
    k = weight.shape[0]
    if targets.ndim != 1 or (targets.size and (targets.min() < 0 or targets.max() >= k)):
        raise ValueError(f"targets must be class indices in 0..{k - 1}, got {targets.tolist()}")
    c, h, w = feature_map.shape
    return (weight[targets] @ feature_map.reshape(c, h * w)).reshape(len(targets), h, w)


def upsample_map(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of maps to ``out_hw`` (pixel centres aligned, edges clamped).

    Same convention as ``cv2.resize(..., INTER_LINEAR)`` and PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)``: each output pixel
    is a convex combination of input pixels, so the range never grows.

    Parameters
    ----------
    maps : ndarray of float, T×h×w (or h×w)
    out_hw : (H, W)

    Returns
    -------
    ndarray of float64, T×H×W (or H×W for a 2-D input)
    """
    single = np.asarray(maps).ndim == 2
    maps = _as_maps(maps).astype(np.float64)
    out_h, out_w = (int(v) for v in out_hw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"out_hw must be positive, got {out_hw}")
    out = np.empty((maps.shape[0], out_h, out_w), np.float64)
    for t, m in enumerate(maps):
        out[t] = cv2.resize(m, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return out[0] if single else out


def concept_scores(maps: np.ndarray, masks: np.ndarray, reduce: str = "mean") -> np.ndarray:
    """Mean (or sum) of each map over each concept mask.

    Parameters
    ----------
    maps : ndarray of float, T×H×W (or H×W)
        Pixel maps in the masks' frame.
    masks : ndarray of bool, N×H×W
        Concept masks (may overlap, need not cover the image).
    reduce : {"mean", "sum"}
        ``mean``: the map's average over the mask's pixels (0 for an empty
        mask); ``sum``: its total over them.

    Returns
    -------
    ndarray of float64, T×N

    Examples
    --------
    >>> m = np.array([[1.0, -2.0], [3.0, 4.0]])
    >>> k = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)
    >>> concept_scores(m, k), concept_scores(m, k, "sum")
    (array([[-0.5,  0. ]]), array([[-1.,  0.]]))
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    maps = _as_maps(maps).astype(np.float64)
    masks = np.asarray(masks)
    if masks.ndim == 2 and masks.size == 0:
        masks = masks.reshape(0, *maps.shape[1:])
    if masks.ndim != 3 or masks.shape[1:] != maps.shape[1:]:
        raise ValueError(f"masks must be N×{maps.shape[1]}×{maps.shape[2]} (the maps' frame), "
                         f"got {masks.shape}")
    pixels = maps.shape[1] * maps.shape[2]
    flat = masks.reshape(masks.shape[0], pixels).astype(np.float64)
    sums = maps.reshape(maps.shape[0], pixels) @ flat.T
    if reduce == "sum":
        return sums
    areas = flat.sum(axis=1)
    return np.divide(sums, areas[None, :], out=np.zeros_like(sums), where=areas[None, :] > 0)


def secam_normalise(maps: np.ndarray) -> np.ndarray:
    """SeCAM's normalisation of class activation maps: positive part over its maximum.

    Each map keeps its positive evidence, ``max(M, 0)``, divided by its largest
    value, so it lies in [0, 1] with 1 at the most activated location. A map
    with no positive value becomes all zeros.

    Parameters
    ----------
    maps : ndarray of float, T×h×w (or h×w)

    Returns
    -------
    ndarray of float64, same shape

    Examples
    --------
    >>> secam_normalise(np.array([[-1.0, 0.5], [2.0, 0.0]]))
    array([[0.  , 0.25],
           [1.  , 0.  ]])
    >>> float(secam_normalise(np.full((1, 2, 2), -3.0)).max())
    0.0
    """
    single = np.asarray(maps).ndim == 2
    maps = _as_maps(maps).astype(np.float64)
    pos = np.maximum(maps, 0.0)
    peak = pos.reshape(pos.shape[0], -1).max(axis=1) if pos.size else np.zeros(pos.shape[0])
    scale = np.divide(1.0, peak, out=np.zeros_like(peak), where=peak > 0)
    out = pos * scale[:, None, None]
    return out[0] if single else out


def segment_map(values: np.ndarray, masks: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Paint each concept's value over its pixels (the largest where concepts overlap).

    Parameters
    ----------
    values : ndarray of float, T×N
    masks : ndarray of bool, N×H×W
    fill : float
        Value of pixels no concept covers.

    Returns
    -------
    ndarray of float64, T×H×W
    """
    values = np.asarray(values, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if values.ndim != 2 or masks.ndim != 3 or values.shape[1] != masks.shape[0]:
        raise ValueError(f"values must be T×N and masks N×H×W with the same N, "
                         f"got {values.shape} and {masks.shape}")
    t, (n, h, w) = values.shape[0], masks.shape
    out = np.full((t, h, w), -np.inf)
    for i in range(n):
        out[:, masks[i]] = np.maximum(out[:, masks[i]], values[:, i : i + 1])
    out[np.isneginf(out)] = fill
    return out


def secam(cams: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SeCAM over any concept masks: per-concept averages of the normalised CAM.

    The procedure of the SeCAM authors with concept masks in place of SLIC
    superpixels: (1) normalise each class activation map at the feature
    resolution (:func:`secam_normalise`: positive part / maximum); (2) upsample
    it bilinearly to the masks' frame; (3) give each concept the map's average
    over its pixels; (4) paint those averages over the concepts (the SeCAM map).

    Parameters
    ----------
    cams : ndarray of float, T×h×w
        Class activation maps at the feature resolution (:func:`class_activation_map`).
    masks : ndarray of bool, N×H×W
        Concept masks in the crop frame.

    Returns
    -------
    values : ndarray of float64, T×N
        SeCAM value of each concept, in [0, 1] (0 for an empty mask).
    maps : ndarray of float64, T×H×W
        The SeCAM map: each pixel holds the value of the concept covering it
        (the largest if several do, 0 if none).

    Examples
    --------
    >>> cam = np.array([[[-1.0, 1.0], [2.0, 4.0]]])      # one class, 2×2 features
    >>> left = np.zeros((2, 4, 4), bool); left[0, :, :2] = True; left[1, :, 2:] = True
    >>> values, _ = secam(cam, left)
    >>> values.round(4)
    array([[0.2969, 0.5781]])
    """
    cams = _as_maps(cams)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {masks.shape}")
    norm = upsample_map(secam_normalise(cams), masks.shape[1:])
    values = concept_scores(norm, masks, "mean")
    return values, segment_map(values, masks)
