"""``cam``: the class activation map W_y·F on the crop, read over each concept.

For a network that ends in global average pooling and one linear layer, the
class activation map (Zhou et al., CVPR 2016) of class y is W_y·F, F the
C×h×w input of the pooling and W_y the class's row of the last layer. It comes
from one forward pass of the whole crop (no masked evaluations), is upsampled
bilinearly to the crop, and each concept's value is the map's mean over the
concept's pixels (the sum is in ``info["sums"]``). The map's mean over the
whole feature grid is the class's logit minus its bias, so the values are in
logit units. The upsampled map is the method's heat map.

The pure numerics are :mod:`eac.kernels.cam`; this module fetches the feature
map and the head from the classifier and refuses classifiers without them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...kernels.cam import class_activation_map, concept_scores, upsample_map
from ..errors import ExplainError
from .base import Method, MethodInput, MethodResult

#: How to get a classifier folder with a feature map (error messages).
_FEATURE_MAP_HINT = ("export it with `eac export classifier` (a network ending in global pooling → "
                     "linear) or adopt it with `eac import-onnx`, or use --method eac")


def require_feature_map(name: str, classifier: Any) -> None:
    """Refuse (ExplainError, one line) a classifier without a feature map output or a head."""
    if not getattr(classifier, "has_feature_map", False):
        raise ExplainError(f"{name} needs the classifier's feature map (the input of its global "
                           f"pooling), but this model folder has no feature_map output; "
                           f"{_FEATURE_MAP_HINT}")
    if getattr(classifier, "head", None) is None:
        raise ExplainError(f"{name} needs the classifier's last linear layer (head.npz), but this "
                           f"model folder has none; {_FEATURE_MAP_HINT}")


def crop_class_maps(name: str, inp: MethodInput) -> tuple[np.ndarray, dict[str, Any]]:
    """Class activation maps of the explained classes on the whole crop, at the feature resolution.

    Runs the classifier once on the normalised crop with its feature map output.

    Parameters
    ----------
    name : str
        The calling method (error messages).
    inp : MethodInput

    Returns
    -------
    cams : ndarray of float64, T×h×w
        W_y·F for each explained class y.
    info : dict
        ``feature_map_shape`` (C, h, w), ``feature_map_seconds`` and, for models
        that output logits, ``gap_consistency``: the largest |mean(W_y·F) + b_y −
        logit_y| (≈ 0 when the feature map is really the pooled tensor).
    """
    classifier = inp.classifier
    require_feature_map(name, classifier)
    start = time.perf_counter()
    out = classifier.run(np.asarray(inp.evaluator.image_norm, np.float32)[None], feature_map=True)
    seconds = time.perf_counter() - start
    fmap = getattr(out, "feature_map", None)
    if fmap is None:
        raise ExplainError(f"{name}: the classifier returned no feature map although its folder "
                           "declares one; re-export the model folder")
    fmap = np.asarray(fmap)
    if fmap.ndim != 4 or fmap.shape[0] != 1:
        raise ExplainError(f"{name}: the feature map must be B×C×h×w, got shape {fmap.shape}; "
                           "re-export the model folder")
    weight, bias = (np.asarray(a, np.float64) for a in classifier.head)
    if weight.ndim != 2 or weight.shape[1] != fmap.shape[1]:
        takes = weight.shape[1] if weight.ndim == 2 else weight.shape
        raise ExplainError(f"{name}: the feature map has {fmap.shape[1]} channels but the last "
                           f"layer takes {takes} inputs; re-export the model folder (or pick the "
                           "pooled layer with --feature-map-layer)")
    cams = class_activation_map(fmap[0], weight, inp.targets)
    info: dict[str, Any] = {"feature_map_shape": list(fmap.shape[1:]),
                            "feature_map_seconds": seconds}
    if getattr(classifier, "output_kind", "logits") == "logits":
        logits = np.asarray(inp.full_logits, np.float64)[inp.targets]
        gap = cams.reshape(len(cams), -1).mean(axis=1) + bias[inp.targets]
        info["gap_consistency"] = float(np.max(np.abs(gap - logits))) if len(cams) else 0.0
    return cams, info


class FeatureMapMethod(Method):
    """Base of the one-forward-pass methods read from the feature map and the head (cam, secam)."""

    value_type = "other"
    cost = "1 (the whole crop)"
    needs_head = True

    def check_classifier(self, classifier: Any) -> None:
        require_feature_map(self.name, classifier)


class ClassActivationMap(FeatureMapMethod):
    name = "cam"
    summary = ("class activation map W_y·F (needs the feature map and head): one forward pass; "
               "a concept's value is the upsampled map's mean over it (logits), with a heat map")

    def run(self, inp: MethodInput) -> MethodResult:
        with inp.timed("values"):
            cams, info = crop_class_maps(self.name, inp)
            masks = np.asarray(inp.evaluator.masks, dtype=bool)
            heat = upsample_map(cams, masks.shape[1:])
            values = concept_scores(heat, masks, "mean")
            sums = concept_scores(heat, masks, "sum")
        info.update({"reduce": "mean", "sums": sums.tolist(),
                     "upsampling": "bilinear (cv2 INTER_LINEAR)",
                     "units": "logit (the map's mean over the feature grid is logit − bias)"})
        return MethodResult(values, info=info, heatmaps=heat.astype(np.float32))
