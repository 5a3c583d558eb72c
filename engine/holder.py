"""An engine that lives across many images: runtime, classifier, concept source and explainer, made once.

Every place that explains image after image with one configuration holds one
:class:`EngineHolder`: a dataset run's worker processes and Ray Data actors
(:mod:`eac.engine.dataset`) and the HTTP service's process or Ray Serve replica
(:mod:`eac.engine.serve`). It is built from a
:class:`~eac.engine.dataset.RunConfig` — the picklable description of an engine
that the dataset runners already ship to their workers — and creates the ONNX
Runtime sessions exactly once.

Per image, :meth:`EngineHolder.explain` runs the configured explainer, or one
made by :meth:`EngineHolder.explainer_for` with other method options, seed or a
stand-in classifier (the service's batching front, :mod:`eac.engine.serve.batcher`);
explainers are cheap (they hold no sessions), the sessions are shared. The holder
is safe to use from several threads at once, as the classifier, the concept
sources and the explainer are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the configuration type only; dataset.py imports this module
    from .dataset import RunConfig
    from .explainer import Explainer
    from .explanation import Explanation


def make_concept_source(config: RunConfig, runtime: Any = None) -> Any:
    """The concept source ``config`` asks for (SAM, a masks file, superpixels or a grid).

    Parameters
    ----------
    config : RunConfig
    runtime : Runtime, optional
        Where SAM's sessions run (the classifier's runtime).

    Returns
    -------
    callable(crop, frame) -> Concepts
    """
    if config.sam:
        from .sam import SamConceptGenerator

        return SamConceptGenerator.from_folder(config.sam, session_options=runtime, verify=config.verify,
                                               **config.sam_settings)
    if config.masks:
        from .sources import MaskSource

        return MaskSource.from_file(config.masks)
    from .sources import make_source

    return make_source(config.concepts or "superpixels", config.n_segments)


class EngineHolder:
    """One engine made from a :class:`~eac.engine.dataset.RunConfig`, explaining many images.

    Parameters
    ----------
    config : RunConfig
        Models, concepts, method and its options, seed, limits, ONNX Runtime settings.
    threads : int, optional
        ONNX Runtime intra-op threads (default ``config.threads``; None: all cores).

    Attributes
    ----------
    config : RunConfig
    runtime : Runtime
        Providers, device and threads every session of this engine is made on.
    classifier : Classifier
    source : callable(crop, frame) -> Concepts
        The concept source (SAM, masks file, superpixels or grid).
    explainer : Explainer
        The configured method, options and seed.
    target : int, str, list or None
        The configured target(s) (None: each image's top-1 class).

    Raises
    ------
    EacError
        A model folder, provider, method option or concept setting is not usable.
    """

    def __init__(self, config: RunConfig, threads: int | None = None) -> None:
        from .classifier import Classifier
        from .session import Runtime, SessionOptions

        self.config = config
        self.runtime = Runtime.from_options(SessionOptions(
            providers=config.providers, cpu_threads=config.threads if threads is None else threads,
            cuda_device_id=config.device_id, trt_fp16=config.trt_fp16, trt_cache_dir=config.trt_cache))
        self.classifier = Classifier.from_folder(config.classifier, session_options=self.runtime,
                                                 verify=config.verify, batch_size=config.batch_size)
        self.source = make_concept_source(config, self.runtime)
        self.explainer = self.explainer_for()
        target = config.target
        self.target = None if not target else (target[0] if len(target) == 1 else list(target))

    def explainer_for(self, method: str | None = None, options: dict[str, Any] | None = None,
                      seed: int | None = None, classifier: Any = None) -> Explainer:
        """An explainer on this engine's sessions; anything not given comes from the configuration.

        Parameters
        ----------
        method : str, optional
            Registered method name (default ``config.method``).
        options : dict, optional
            Method options; default ``config.options`` when the method is the
            configured one, else the method's defaults.
        seed : int, optional
            Default ``config.seed``.
        classifier : optional
            A stand-in with the :class:`~eac.engine.classifier.Classifier` API
            (default: this engine's classifier).

        Raises
        ------
        ExplainError
            Unknown method, unknown or invalid options, a classifier the method cannot explain.
        """
        from .explainer import Explainer

        config = self.config
        name = config.method if method is None else method
        if options is None:
            options = dict(config.options) if name == config.method else {}
        return Explainer(self.classifier if classifier is None else classifier, method=name,
                         batch_size=config.batch_size, seed=config.seed if seed is None else seed, progress=False,
                         max_concepts=config.max_concepts, **options)

    def explain(self, image: Any, target: Any = None, *, explainer: Explainer | None = None,
                source: Any = None) -> Explanation:
        """Explain one image (H×W×3 uint8 RGB or a path), with the metrics when the configuration asks.

        Parameters
        ----------
        image : ndarray or path
        target : int, str, list or None
            Classes to explain (None: the top-1 class).
        explainer : Explainer, optional
            Default :attr:`explainer`.
        source : callable(crop, frame) -> Concepts, optional
            Default :attr:`source` (the service wraps it to bound SAM's memory).

        Returns
        -------
        Explanation
        """
        explainer = self.explainer if explainer is None else explainer
        explanation = explainer.explain(image, self.source if source is None else source, target)
        if self.config.metrics and explanation.num_concepts:
            from .metrics import add_metrics

            add_metrics(explanation, explainer.classifier, self.config.batch_size)
        return explanation
