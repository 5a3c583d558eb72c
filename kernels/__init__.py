"""eac's numeric building blocks: plain functions on numpy arrays (numpy and opencv only).

Nothing here knows about model folders, sessions or files: Shapley estimators and exact values
(:mod:`~eac.kernels.estimators`, :mod:`~eac.kernels.shapley`), surrogate fits
(:mod:`~eac.kernels.surrogate`), masked-batch composition (:mod:`~eac.kernels.compose`), SAM
mask post-processing (:mod:`~eac.kernels.masks`), CAM/SeCAM (:mod:`~eac.kernels.cam`), COCO RLE
(:mod:`~eac.kernels.rle`), superpixels and grids (:mod:`~eac.kernels.superpixels`) and the
white-box games with known Shapley values used by tests and benchmarks (:mod:`~eac.kernels.games`).
"""
