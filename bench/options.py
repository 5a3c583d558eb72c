"""Options of one ``eac bench`` run, and what a QUICK (reduced) run changes.

Shared by every workload module (:mod:`.workloads`, :mod:`.end_to_end`, :mod:`.peers`, ...), which
is why it lives on its own: workloads never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .harness import DEFAULT_PHOTO
from .reference import ReferenceSettings

#: Concept masks of the explain workload (N ≈ 32 is where the reference's timings were taken).
DEFAULT_N_CONCEPTS = 32
#: Classifier weights of the explain / end-to-end workloads: ``scenes`` (the final layer trained on
#: generated scenes, so the prediction depends on the image) or ``random`` (the worst case).
WEIGHTS = ("scenes", "random")
DEFAULT_WEIGHTS = "scenes"
#: ``--photo`` value naming a generated scene (:mod:`eac.engine.scenes`) instead of a skimage photograph.
SCENE_PHOTO = "scene"


@dataclass(frozen=True)
class QuickSettings:
    """What a QUICK (reduced) run changes."""

    classifier_arch: str = "tiny"
    sam_model_type: str = "tiny"
    points_per_side: int = 4
    agreement_points_per_side: int = 4
    n_concepts: int = 12
    reference: ReferenceSettings = field(
        default_factory=lambda: ReferenceSettings(n_coalitions=160, epochs=3, mc_samples=2000))
    faithful_options: tuple = (("num_coalitions", 160), ("epochs", 3), ("mc_samples", 2000))
    fidelity_scenes: int = 2
    scene_size: int = 64
    train_n: int = 400
    train_epochs: int = 2
    #: Scenes the QUICK scene head is fitted on (:mod:`eac.bench.scene_head`).
    head_scenes: int = 96


QUICK = QuickSettings()


@dataclass
class BenchOptions:
    """Options of one ``eac bench`` run (the command-line flags).

    ``photo`` None means the workload's default image: a generated scene for a classifier whose
    final layer was trained on scenes, :data:`~eac.bench.harness.DEFAULT_PHOTO` otherwise.
    ``ort`` holds ONNX Runtime CPU settings for the engine's sessions (fields of
    :class:`eac.engine.session.SessionOptions`, e.g. ``{"allow_spinning": False}``).
    """

    workload: str
    repeat: int = 1
    warmup: int = 0
    providers: str = "auto"
    threads: int | None = None
    quick: bool = False
    classifier: str | None = None
    sam: str | None = None
    sam_checkpoint: str | None = None
    n_concepts: int | None = None
    photo: str | None = None
    seed: int = 0
    agreement: bool = True
    progress: Callable[[str], None] | None = None
    command: str = ""
    weights: str = DEFAULT_WEIGHTS
    int8: bool = False
    ort: dict = field(default_factory=dict)

    @property
    def concepts_n(self) -> int:
        if self.n_concepts is not None:
            return int(self.n_concepts)
        return QUICK.n_concepts if self.quick else DEFAULT_N_CONCEPTS

    def photo_for(self, scene_classifier: bool) -> str:
        """The image to explain: ``photo`` when given, else a scene for a scene-trained classifier."""
        if self.photo is not None:
            return self.photo
        return SCENE_PHOTO if scene_classifier else DEFAULT_PHOTO

    def session_options(self):
        from ..engine.session import SessionOptions

        return SessionOptions(providers=self.providers, cpu_threads=self.threads, **self.ort)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)
