"""Benchmarks and studies: ``eac bench`` against a faithful PyTorch reference and the peer libraries.

A PyTorch-eager re-implementation of the reference EAC pipeline (:mod:`~eac.bench.reference`),
the workloads and their timing harness, the peers comparison (captum, shap, lime, shapiq), and
the studies whose results (``bench/results/``) are the numbers behind eac's defaults.
"""
