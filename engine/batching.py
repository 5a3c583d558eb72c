"""How many images one classifier call takes by default (importable without ONNX Runtime, for ``--help``)."""

from __future__ import annotations

#: Default classifier batch size (images per run). One 224×224 batch is then 19 MB of
#: float32 input, which bounds the explain stage's memory; on the 2-core CPU the small
#: demo CNN showed no consistent throughput gain from larger batches (measurements in
#: the issue note), and GPUs want batches of this order. Override with ``batch_size``.
DEFAULT_BATCH_SIZE = 32
