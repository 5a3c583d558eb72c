"""eac's runtime: explain image classifiers with concepts, on ONNX Runtime, without torch.

What lives here (imports numpy, onnxruntime and opencv only):

- :mod:`~eac.engine.session` — the one :class:`Runtime` (providers, device, threads) sessions are made on;
- :mod:`~eac.engine.classifier` — a classifier model folder: preprocessing and batched inference;
- :mod:`~eac.engine.sam` — SAM's automatic mask generator on an exported SAM folder;
- :mod:`~eac.engine.sources` — concepts without SAM (user masks, superpixels, grids);
- :mod:`~eac.engine.evaluator` — masked evaluations of coalitions of concepts;
- :mod:`~eac.engine.methods` — the explanation methods, one module each, registered by name;
- :mod:`~eac.engine.explain` — :class:`Explainer` / :func:`explain`: one image through one method;
- :mod:`~eac.engine.explanation` — the result, its files and pictures;
- :mod:`~eac.engine.cli` — the ``eac`` command, above everything else.

Typical use::

    from eac.engine import Classifier, SamConceptGenerator, explain

    classifier = Classifier.from_folder("models/resnet50")
    sam = SamConceptGenerator.from_folder("models/sam_vit_h")
    explanation = explain("photo.jpg", classifier, sam)
"""

from .classifier import Classifier
from .concepts import Concepts, Frame
from .explain import Explainer, explain
from .explanation import Explanation
from .sam import SamConceptGenerator
from .session import Runtime, SessionOptions

__all__ = [
    "Classifier",
    "Concepts",
    "Explainer",
    "Explanation",
    "Frame",
    "Runtime",
    "SamConceptGenerator",
    "SessionOptions",
    "explain",
]
