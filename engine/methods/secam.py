"""``secam``: Segmentation - Class Activation Mapping over any concepts.

SeCAM (Cao, Nguyen, Nguyen and Nguyen, arXiv 2307.04137; Nguyen et al., IEICE
Trans. Inf. & Syst. E105.D(8), 2022) explains a CNN that ends in global
average pooling and one linear layer with its class activation map averaged
over image segments: one forward pass, whole-region output. Its authors
segment with SLIC; here the segments are the explanation's concepts, whatever
made them (SAM masks, SLIC, a grid, user masks). The map is normalised as the
authors do — positive part divided by its maximum, into [0, 1] — upsampled
bilinearly to the crop, and each concept's value is its average over the
concept (:func:`eac.kernels.cam.secam`). The heat map paints each concept with
its value.
"""

from __future__ import annotations

import numpy as np

from ...kernels.cam import secam
from .base import MethodInput, MethodResult
from .cam import FeatureMapMethod, crop_class_maps


class SegmentClassActivationMap(FeatureMapMethod):
    name = "secam"
    summary = ("SeCAM (needs the feature map and head): one forward pass; a concept's value is the "
               "mean of the class activation map, positive part scaled to [0, 1], over it")

    def run(self, inp: MethodInput) -> MethodResult:
        with inp.timed("values"):
            cams, info = crop_class_maps(self.name, inp)
            values, maps = secam(cams, np.asarray(inp.evaluator.masks, dtype=bool))
        info.update({"normalisation": "max(W_y·F, 0) / its maximum, at the feature resolution",
                     "reduce": "mean", "upsampling": "bilinear (cv2 INTER_LINEAR)"})
        return MethodResult(values, info=info, heatmaps=maps.astype(np.float32))
