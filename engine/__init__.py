"""eac's runtime: explain image classifiers with concepts, on ONNX Runtime, without torch.

What lives here (imports numpy, onnxruntime and opencv only):

- :mod:`~eac.engine.session` — the one :class:`Runtime` (providers, device, threads) sessions are made on;
- :mod:`~eac.engine.classifier` — a classifier model folder: preprocessing and batched inference;
- :mod:`~eac.engine.sam` — SAM's automatic mask generator on an exported SAM folder;
- :mod:`~eac.engine.sources` — concepts without SAM (user masks, superpixels, grids);
- :mod:`~eac.engine.evaluator` — masked evaluations of coalitions of concepts;
- :mod:`~eac.engine.methods` — the explanation methods, one module each, registered by name;
- :mod:`~eac.engine.explainer` — :class:`Explainer` / :func:`explain`: one image through one method;
- :mod:`~eac.engine.explanation` — the result and its files (:mod:`~eac.engine.atomic`: written atomically);
- :mod:`~eac.engine.render` — pictures of a result: overlay, heat map, values figure, cut-outs;
- :mod:`~eac.engine.report` — a whole run as one static HTML page (``eac report``);
- :mod:`~eac.engine.randomise`, :mod:`~eac.engine.sanity` — sanity checks: classifier copies with weights
  re-initialised, and how much each method's explanation changes with them;
- :mod:`~eac.engine.cli` — the ``eac`` command, above everything else.

Typical use::

    from eac.engine import Classifier, SamConceptGenerator, explain

    classifier = Classifier.from_folder("models/resnet50")
    sam = SamConceptGenerator.from_folder("models/sam_vit_h")
    explanation = explain("photo.jpg", classifier, sam)
"""

from importlib import import_module
from typing import Any

#: The public API: name → module that defines it. Imported on first use, so that
#: ``eac --help`` works, and says what to install, even without ONNX Runtime.
_API = {
    "Classifier": "classifier",
    "Concepts": "concepts",
    "Explainer": "explainer",
    "Explanation": "explanation",
    "Frame": "concepts",
    "Runtime": "session",
    "SamConceptGenerator": "sam",
    "SessionOptions": "session",
    "explain": "explainer",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
