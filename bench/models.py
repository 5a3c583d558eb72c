"""Models the benchmarks run: a plain-torch ResNet, random SAM, their exports.

torchvision cannot be installed on the machines eac is developed on, so the
ResNet here is written in plain torch with torchvision's layer names
(``conv1``, ``bn1``, ``layer1`` … ``layer4``, ``fc``, blocks with
``conv1..3``, ``bn1..3`` and ``downsample``): a real torchvision ResNet-50
state dict loads into :func:`resnet50` unchanged. Without a state dict the
weights are random but deterministic (a seeded :class:`torch.Generator`, never
the global RNG), so the PyTorch model the reference runs and the ONNX model the
engine runs are the same network.

Random weights give the same compute as trained ones (ResNet-50 ≈ 4.1 GMAC per
224×224 image; SAM ViT-B ≈ 0.49 TMAC per 1024×1024 image), which is what the
timing workloads need. Fidelity is measured on a *trained* classifier
(:mod:`eac.bench.train_demo`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..engine.errors import EacError
from .mobilenet import mobilenet_v3_large

#: Seed of the bench models' random weights (any fixed value; recorded in results).
BENCH_SEED = 20230517
#: ResNet-50: Bottleneck blocks per stage.
RESNET50_LAYERS = (3, 4, 6, 3)
#: A reduced ResNet for quick runs and tests: one block per stage, narrow.
TINY_LAYERS = (1, 1, 1, 1)
TINY_WIDTH = 8
TINY_CLASSES = 10
IMAGENET_CLASSES = 1000
#: torchvision's Bottleneck expansion (output channels = 4 × width).
BOTTLENECK_EXPANSION = 4
#: ImageNet normalisation (0-1 scale), as torchvision classifiers expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Preprocessing of the explain workload: shorter side → 256, centre crop 224.
RESIZE = 256
CROP = 224
#: segment-anything encoder sizes: (embed_dim, depth, num_heads, global attention blocks).
SAM_ENCODERS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    # Reduced encoder for quick runs and tests (same 1024×1024 input, same decoder).
    "tiny": (64, 2, 2, (1,)),
}


class BenchModelError(EacError):
    """A bench model cannot be built, loaded or exported."""


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (stride on the 3×3 convolution, "v1.5")."""

    def __init__(self, inplanes: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out = width * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """A torchvision-compatible Bottleneck ResNet.

    Parameters
    ----------
    layers : sequence of 4 int
        Blocks per stage (ResNet-50: 3, 4, 6, 3).
    num_classes : int
        Outputs of ``fc``.
    width : int
        Width of the first stage (64 for ResNet-50); stages double it.

    Notes
    -----
    :meth:`features` returns the penultimate activations (B×D after global
    average pooling, D = 8 × width × 4 = 2048 for ResNet-50): what EAC's PIE
    surrogate maps concepts to, and what ``fc`` (the frozen head) consumes.
    """

    def __init__(self, layers: Sequence[int] = RESNET50_LAYERS, num_classes: int = IMAGENET_CLASSES,
                 width: int = 64) -> None:
        super().__init__()
        if len(layers) != 4:
            raise BenchModelError(f"a ResNet has 4 stages, got layers={tuple(layers)}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(width * 2, layers[1], 2)
        self.layer3 = self._stage(width * 4, layers[2], 2)
        self.layer4 = self._stage(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * BOTTLENECK_EXPANSION
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def _stage(self, width: int, blocks: int, stride: int) -> nn.Sequential:
        out = width * BOTTLENECK_EXPANSION
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        modules = [Bottleneck(self.inplanes, width, stride, downsample)]
        self.inplanes = out
        modules.extend(Bottleneck(out, width) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: B×3×H×W normalised images → B×D."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: B×3×H×W → B×K."""
        return self.fc(self.features(x))


def init_resnet_(model: ResNet, seed: int) -> ResNet:
    """Fill ``model`` with deterministic random weights (torchvision's init scheme).

    Convolutions: Kaiming normal (fan-out, ReLU gain); batch norms: weight 1,
    bias 0, running mean 0, running variance 1; ``fc``: uniform ±1/√D (the
    ``nn.Linear`` default). Uses its own :class:`torch.Generator` seeded with
    ``seed``; the global RNG is untouched.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                std = (2.0 / fan_out) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / module.in_features ** 0.5
                module.weight.copy_((torch.rand(module.weight.shape, generator=gen) * 2 - 1) * bound)
                module.bias.copy_((torch.rand(module.bias.shape, generator=gen) * 2 - 1) * bound)
    return model


def resnet50(seed: int = BENCH_SEED, num_classes: int = IMAGENET_CLASSES, checkpoint: str | None = None) -> ResNet:
    """ResNet-50 in eval mode: random weights from ``seed``, or a torchvision state dict.

    Parameters
    ----------
    seed : int
        Seed of the random weights (ignored when ``checkpoint`` is given).
    num_classes : int
        Classes of ``fc``.
    checkpoint : str, optional
        Path of a torchvision ``resnet50`` state dict (``.pth``).
    """
    model = init_resnet_(ResNet(RESNET50_LAYERS, num_classes), seed)
    if checkpoint is not None:
        load_state_dict(model, checkpoint)
    return model.eval()


def tiny_resnet(seed: int = BENCH_SEED, num_classes: int = TINY_CLASSES) -> ResNet:
    """A reduced ResNet (one narrow block per stage) for quick runs and tests, eval mode."""
    return init_resnet_(ResNet(TINY_LAYERS, num_classes, width=TINY_WIDTH), seed).eval()


def resnet50_factory() -> ResNet:
    """Factory for ``eac export classifier --module eac.bench.models:resnet50_factory``."""
    return resnet50()


def tiny_resnet_factory() -> ResNet:
    """Factory for ``--module eac.bench.models:tiny_resnet_factory``."""
    return tiny_resnet()


#: Width multiplier of the QUICK mobile classifier (≈ 0.025 GMAC instead of 0.22).
TINY_MOBILE_WIDTH = 0.25


def mobilenet_v3_large_factory() -> nn.Module:
    """Factory for ``--module eac.bench.models:mobilenet_v3_large_factory`` (random weights, :data:`BENCH_SEED`)."""
    return mobilenet_v3_large(BENCH_SEED)


def tiny_mobilenet_factory() -> nn.Module:
    """Factory of the narrow MobileNetV3 of quick runs (``--module eac.bench.models:tiny_mobilenet_factory``)."""
    return mobilenet_v3_large(BENCH_SEED, num_classes=TINY_CLASSES, width=TINY_MOBILE_WIDTH)


#: Architectures :func:`export_bench_classifier` knows: name → (factory path, builder).
CLASSIFIERS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "resnet50": ("eac.bench.models:resnet50_factory", resnet50_factory),
    "tiny": ("eac.bench.models:tiny_resnet_factory", tiny_resnet_factory),
    "mobilenet_v3_large": ("eac.bench.models:mobilenet_v3_large_factory", mobilenet_v3_large_factory),
    "tiny_mobile": ("eac.bench.models:tiny_mobilenet_factory", tiny_mobilenet_factory),
}
#: The mobile architectures (their final layer is ``classifier.3``; the ResNets' is ``fc``).
MOBILE_ARCHS = ("mobilenet_v3_large", "tiny_mobile")
#: How reports name each architecture.
ARCH_NAMES = {"resnet50": "ResNet-50", "tiny": "tiny ResNet", "mobilenet_v3_large": "MobileNetV3-Large",
              "tiny_mobile": "MobileNetV3 ×0.25 (QUICK)"}


def head_layer(arch: str) -> str:
    """Module name of the final linear layer of bench architecture ``arch``."""
    return "classifier.3" if arch in MOBILE_ARCHS else "fc"


def load_state_dict(model: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load a (torchvision-style) state dict into ``model``; clear error on mismatch."""
    path = Path(checkpoint)
    if not path.is_file():
        raise BenchModelError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise BenchModelError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BenchModelError(f"{path}: not a state dict of this architecture ({first})") from exc
    return model


def cache_dir() -> Path:
    """Where bench keeps exported models: ``$EAC_CACHE/bench`` (default ``~/.cache/eac/bench``)."""
    root = os.environ.get("EAC_CACHE") or str(Path.home() / ".cache" / "eac")
    return Path(root) / "bench"


def _fingerprint(*parts: object) -> str:
    from ..engine.manifest import eac_version

    text = "|".join(map(str, (*parts, eac_version(), torch.__version__)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _source_digest(module: str) -> str:
    """Digest of a module's source file, so cached exports follow changes of the exporter."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return "unknown"
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:12]


def export_bench_classifier(arch: str = "resnet50", out: str | os.PathLike | None = None,
                            validate: bool = True) -> Path:
    """Export a bench classifier to an eac classifier folder (cached).

    Parameters
    ----------
    arch : str
        A key of :data:`CLASSIFIERS` (random weights, :data:`BENCH_SEED`).
    out : path, optional
        Output folder; default a cache folder keyed by architecture, seed and
        versions. An existing complete export there is reused.
    validate : bool
        Compare the ONNX model with PyTorch during the export.

    Returns
    -------
    Path
        The classifier folder (``classifier.onnx``, ``head.npz``, ``manifest.json``).
    """
    if arch not in CLASSIFIERS:
        raise BenchModelError(f"unknown bench classifier {arch!r}; choose from {', '.join(CLASSIFIERS)}")
    factory, _ = CLASSIFIERS[arch]
    folder = Path(out) if out is not None else cache_dir() / (
        f"classifier-{arch}-{_fingerprint(arch, BENCH_SEED, _source_digest('eac.export.classifier'))}")
    if (folder / "manifest.json").is_file():
        return folder
    try:
        from ..export.classifier import export_classifier
    except ImportError as exc:
        raise BenchModelError(
            f"cannot export the bench classifier: eac.export.classifier is unavailable ({exc})") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    export_classifier(  # writes atomically (staged folder renamed at the end)
        out=str(folder), torchvision=None, weights=None, module=factory, checkpoint=None,
        feature_layer=head_layer(arch), input_size=CROP, resize=RESIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        channel_order="RGB", labels=None, opset=None, fp16=False, validate=validate,
    )
    return folder


# --- SAM ---------------------------------------------------------------------------------------


def import_segment_anything():
    """Import ``segment_anything`` without torchvision (through :mod:`eac.bench.tvshim`).

    Returns
    -------
    module
        The ``segment_anything`` package.
    """
    from . import tvshim

    # The shim stands in only while segment-anything imports (it binds the four functions then): left in
    # sys.modules it would tell later importers (transformers, timm) that torchvision is installed.
    with tvshim.installed():
        try:
            import segment_anything
        except ImportError as exc:
            raise BenchModelError(f"segment-anything is not importable ({exc}); pip install segment-anything") from exc
    return segment_anything


@contextlib.contextmanager
def _seeded_torch(seed: int):
    """Run a block with torch's global RNG seeded, restoring its state afterwards.

    segment-anything's modules initialise their weights from the global RNG and
    take no generator; this keeps their random weights deterministic without
    leaving the global state changed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def sam_architecture(model_type: str):
    """The :class:`eac.export.sam_loader.SamArchitecture` of a bench SAM model type."""
    if model_type not in SAM_ENCODERS:
        raise BenchModelError(f"unknown SAM model type {model_type!r}; choose from {', '.join(SAM_ENCODERS)}")
    try:
        from ..export.sam_loader import SamArchitecture
    except ImportError as exc:
        raise BenchModelError(f"cannot build SAM: eac.export.sam_loader is unavailable ({exc})") from exc
    dim, depth, heads, global_idx = SAM_ENCODERS[model_type]
    return SamArchitecture(dim, depth, heads, tuple(global_idx))


def build_sam(model_type: str = "vit_b", checkpoint: str | os.PathLike | None = None, seed: int = BENCH_SEED):
    """A segment-anything ``Sam`` in eval mode: random weights from ``seed`` or a checkpoint.

    Built with segment-anything's own modeling classes through
    :func:`eac.export.sam_loader.build_sam_model` (which needs no torchvision).

    Parameters
    ----------
    model_type : {"vit_b", "vit_l", "vit_h", "tiny"}
        Encoder size; ``"tiny"`` is a reduced encoder (2 blocks, 64 wide) for
        quick runs, with SAM's own prompt encoder and mask decoder.
    checkpoint : path, optional
        An official segment-anything checkpoint (``.pth``).
    seed : int
        Seed of the random weights (when no checkpoint).
    """
    from ..export.sam_loader import build_sam_model

    arch = sam_architecture(model_type)
    with _seeded_torch(seed):
        sam = build_sam_model(arch)
    if checkpoint is not None:
        load_state_dict(sam, checkpoint)
    return sam.float().eval()


def sam_checkpoint(model_type: str = "vit_b", seed: int = BENCH_SEED) -> Path:
    """Save the random-weight SAM of :func:`build_sam` as a ``.pth`` state dict (cached).

    The engine's export and the reference then load the very same weights.
    """
    path = cache_dir() / f"sam-{model_type}-{_fingerprint('sam', model_type, seed)}.pth"
    return _cached_state_dict(path, lambda: build_sam(model_type, seed=seed))


def _cached_state_dict(path: Path, build) -> Path:
    """Save ``build()``'s state dict at ``path`` unless it is there already (written under a temporary name)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(build().state_dict(), str(tmp))
        tmp.replace(path)
    return path


def export_bench_sam(model_type: str = "vit_b", checkpoint: str | os.PathLike | None = None,
                     out: str | os.PathLike | None = None, validate: bool = True,
                     decoder_graph: str = "context") -> Path:
    """Export SAM (random weights, or ``checkpoint``) to an eac SAM folder (cached).

    The manifest's ``source`` records the checkpoint, so the reference side of a
    benchmark can load the very same weights into PyTorch.

    ``decoder_graph``: the decoder layout (``"context"``, the default, or ``"batched"``,
    SAM's operation order, to measure what the cheaper decoder gains).

    Returns
    -------
    Path
        The SAM folder (``encoder.onnx``, ``decoder*.onnx``, ``manifest.json``).
    """
    ckpt = Path(checkpoint) if checkpoint is not None else sam_checkpoint(model_type)
    if not ckpt.is_file():
        raise BenchModelError(f"{ckpt}: no such SAM checkpoint")
    key = _fingerprint("samfolder", model_type, ckpt.resolve(), ckpt.stat().st_size,
                       _source_digest("eac.export.sam"), _source_digest("eac.export.sam_loader"),
                       _source_digest("eac.export.sam_graphs"), decoder_graph)
    folder = Path(out) if out is not None else cache_dir() / f"sam-{model_type}-{key}"
    if (folder / "manifest.json").is_file():
        return folder
    try:
        from ..export.sam import export_sam_model
    except ImportError as exc:
        raise BenchModelError(f"cannot export SAM: eac.export.sam is unavailable ({exc})") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    source = {"checkpoint": str(ckpt.resolve()), "bench_model_type": model_type,
              "weights": f"random (seed {BENCH_SEED})" if checkpoint is None else "checkpoint"}
    export_sam_model(build_sam(model_type, checkpoint=ckpt), out=str(folder), model_type=model_type,
                     opset=None, fp16=False, validate=validate, source=source, decoder_graph=decoder_graph)
    return folder


# --- EfficientViT-SAM ----------------------------------------------------------------------------

class _ToTensor:
    """torchvision's ``ToTensor`` for an H×W×3 uint8 array: 3×H×W float in [0, 1]."""

    def __call__(self, image):
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))).float() / 255.0


class _Normalize:
    """torchvision's ``Normalize`` for a C×H×W tensor."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std


class _Compose:
    """torchvision's ``Compose``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


def import_efficientvit_sam_reference():
    """The ``efficientsam`` package's own model zoo and generator (the reference), without torchvision.

    The package's ``EfficientViTSam`` builds a ``torchvision.transforms`` pipeline
    (``Compose``, ``ToTensor``, ``Normalize``) and its generator imports
    ``torchvision.ops``; when torchvision is absent, :mod:`eac.bench.tvshim` stands in
    for the ops and PIL resizing and the three transforms above are added to it.

    Returns
    -------
    (module, module)
        ``efficientsam.sam_model_zoo`` and ``efficientsam.models.efficientvit.sam``.
    """
    import importlib
    import sys

    from . import tvshim

    with tvshim.installed() as shimmed:  # removed again after the imports, as in import_segment_anything
        if shimmed:
            transforms = sys.modules["torchvision.transforms"]
            for name, value in (("Compose", _Compose), ("ToTensor", _ToTensor), ("Normalize", _Normalize)):
                if not hasattr(transforms, name):
                    setattr(transforms, name, value)
        try:
            zoo = importlib.import_module("efficientsam.sam_model_zoo")
            sam = importlib.import_module("efficientsam.models.efficientvit.sam")
        except ImportError as exc:
            raise BenchModelError(f"the efficientsam package is not importable ({exc}); "
                                  "pip install --no-deps efficientsam==1.0.0") from exc
    return zoo, sam


def build_efficientvit_sam(model_type: str = "efficientvit_l0", checkpoint: str | os.PathLike | None = None,
                           seed: int = BENCH_SEED):
    """EfficientViT-SAM through eac's loader, random weights from ``seed`` (or a checkpoint); eval mode.

    The package initialises its layers from torch's global RNG; the RNG is seeded
    here and restored afterwards.
    """
    from ..export.efficientvit_sam import build_efficientvit_sam as build

    with _seeded_torch(seed):
        model = build(model_type)
    if checkpoint is not None:
        load_state_dict(model, checkpoint)
    return model.float().eval()


def efficientvit_reference_model(model):
    """The package's ``EfficientViTSam`` around ``model``'s modules (same weights), for its own generator."""
    _, sam = import_efficientvit_sam_reference()
    return sam.EfficientViTSam(model.image_encoder, model.prompt_encoder, model.mask_decoder,
                               image_size=(model.prompt_frame_size, model.encoder_input_size)).eval()


def efficientvit_checkpoint(model_type: str = "efficientvit_l0", seed: int = BENCH_SEED) -> Path:
    """Save the random-weight model of :func:`build_efficientvit_sam` as a state dict (cached)."""
    path = cache_dir() / f"{model_type}-{_fingerprint('efficientvit', model_type, seed)}.pt"
    return _cached_state_dict(path, lambda: build_efficientvit_sam(model_type, seed=seed))


def export_bench_efficientvit_sam(model_type: str = "efficientvit_l0", checkpoint: str | os.PathLike | None = None,
                                  out: str | os.PathLike | None = None, validate: bool = True,
                                  decoder_precision: str = "fp32") -> Path:
    """Export EfficientViT-SAM (random weights, or ``checkpoint``) to an eac SAM folder (cached).

    ``decoder_precision``: ``"fp32"``, or ``"int8"`` / ``"fp16"`` for the per-prompt decoder (measured
    against the fp32 decoder at export; see :func:`eac.export.sam.export_sam_model`).
    """
    ckpt = Path(checkpoint) if checkpoint is not None else efficientvit_checkpoint(model_type)
    if not ckpt.is_file():
        raise BenchModelError(f"{ckpt}: no such EfficientViT-SAM checkpoint")
    key = _fingerprint("evitfolder", model_type, ckpt.resolve(), ckpt.stat().st_size,
                       _source_digest("eac.export.sam"), _source_digest("eac.export.sam_graphs"),
                       _source_digest("eac.export.efficientvit_sam"), decoder_precision)
    folder = Path(out) if out is not None else cache_dir() / f"{model_type}-{decoder_precision}-{key}"
    if (folder / "manifest.json").is_file():
        return folder
    from ..export.sam import export_sam_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    source = {"checkpoint": str(ckpt.resolve()), "bench_model_type": model_type,
              "weights": f"random (seed {BENCH_SEED})" if checkpoint is None else "checkpoint"}
    export_sam_model(build_efficientvit_sam(model_type, checkpoint=ckpt), out=str(folder), model_type=model_type,
                     opset=None, fp16=False, validate=validate, source=source, decoder_precision=decoder_precision)
    return folder
