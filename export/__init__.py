"""PyTorch → ONNX: SAM (segment-anything, EfficientViT-SAM), classifiers, and ONNX files from the wild.

Needs the ``export`` extra (torch, segment-anything). Each exporter writes a model folder —
ONNX graphs, a typed manifest (:mod:`eac.engine.manifest`) and, for classifiers, the final
layer's weights — validated against PyTorch with the tolerances of :mod:`~eac.export.spec`.
The runtime (:mod:`eac.engine`) reads these folders without torch.
"""
