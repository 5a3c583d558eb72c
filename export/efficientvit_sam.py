"""EfficientViT-SAM (MIT HAN lab) for ``eac export sam --model-type efficientvit_*``.

EfficientViT-SAM keeps SAM's prompt encoder and mask decoder and replaces the
ViT image encoder with an EfficientViT backbone plus a small "neck" that
resamples three backbone stages to SAM's 64×64×256 image embedding
(Zhang, Cai, Han, *EfficientViT-SAM: Accelerated Segment Anything Model Without
Accuracy Loss*, arXiv:2402.05008). Its code ships on PyPI as ``efficientsam``
(the ``efficientvit`` repository's SAM part; https://github.com/mit-han-lab/efficientvit,
``efficientvit/models/efficientvit/sam.py``).

What differs from SAM, and what the exported folder's manifest says about it:

* the encoder input is ``image_size`` × ``image_size`` (512 for L0/L1/L2, 1024
  for XL0/XL1): the image resized so its longest side is ``image_size``
  (``SamResize``: PIL bilinear), normalised with SAM's pixel mean/std (the package
  applies ``mean / 255`` and ``std / 255`` to a 0-1 image: the same thing), and
  zero-padded bottom/right (``SamPad``, after normalisation);
* the prompt encoder still works in a 1024×1024 frame: point prompts are scaled to
  the image resized to longest side 1024 (``EfficientViTSamPredictor.apply_coords``),
  and the valid part of the 256×256 low-resolution masks is that frame's size / 4.
  The manifest records this as ``decoder.prompt_frame_size`` (absent in SAM
  folders, whose prompt frame is the encoder input).

Loading without torchvision: the package's ``efficientsam.models.efficientvit``
and ``efficientsam.segment_anything`` ``__init__`` files import torchvision (the
predictor, the automatic mask generator, ``torchvision.transforms``);
:func:`efficientvit_modules` imports only the torch-only modules it needs
(the backbone, the ``nn`` building blocks, SAM's modeling copy) without running
those ``__init__`` files, and :class:`SamNeck` / :class:`EfficientViTSamImageEncoder`
here rebuild the package's encoder head (same module tree, so the official
state dicts load unchanged). The package's own model and generator are used by
tests and ``eac bench`` as the reference.

Checkpoints: :data:`EFFICIENTVIT_CHECKPOINTS` lists the official files (Hugging Face
``mit-han-lab/efficientvit-sam``, as linked from the package's README); their
exact sizes and hashes are not published, so a downloaded file is checked by
loading it strictly into the architecture, and its SHA-256 is recorded in the
manifest.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ExportError

#: The model types this module adds to ``eac export sam --model-type``.
EFFICIENTVIT_SAM_TYPES = ("efficientvit_l0", "efficientvit_l1", "efficientvit_l2",
                          "efficientvit_xl0", "efficientvit_xl1")
#: SAM's prompt encoder frame, image embedding grid and width (fixed by EfficientViT-SAM).
PROMPT_FRAME_SIZE = 1024
EMBEDDING_SIZE = 64
PROMPT_EMBED_DIM = 256
#: The model zoo sets every normalisation layer's eps to this (``set_norm_eps(model, 1e-6)``).
NORM_EPS = 1e-6
#: SAM's pixel statistics (0-255 scale); EfficientViT-SAM uses the same ones on a 0-1 scale.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
#: Where the package's modules are looked up.
PACKAGE = "efficientsam"
_BARE_PACKAGES = (f"{PACKAGE}.models.efficientvit", f"{PACKAGE}.segment_anything")
_import_lock = threading.Lock()


# --- architectures ------------------------------------------------------------------------

@dataclass(frozen=True)
class EfficientVitSamArchitecture:
    """Hyper-parameters of one EfficientViT-SAM variant (the package's builders, as data).

    Attributes
    ----------
    image_size : int
        Encoder input side (512 or 1024).
    width_list, depth_list : tuple of int
        ``EfficientViTLargeBackbone`` stage widths and depths.
    block_list, expand_list, fewer_norm_list : tuple or None
        Backbone block kinds, expansion ratios and norm layout (None: the backbone's defaults).
    neck_stages : tuple of str
        Backbone outputs the neck reads (``"stage4", "stage3", "stage2"`` for L models).
    neck_depth : int
        Middle blocks of the neck.
    neck_expand : float
        Expansion ratio of the neck's FusedMBConv blocks.
    neck_width : int
        Width of the neck.
    """

    image_size: int
    width_list: tuple[int, ...]
    depth_list: tuple[int, ...]
    neck_stages: tuple[str, ...]
    neck_depth: int
    neck_expand: float
    block_list: tuple[str, ...] | None = None
    expand_list: tuple[float, ...] | None = None
    fewer_norm_list: tuple[bool, ...] | None = None
    neck_width: int = 256

    def neck_channels(self) -> tuple[int, ...]:
        """Input widths of the neck (the backbone width of each stage it reads)."""
        return tuple(self.width_list[int(name.removeprefix("stage"))] for name in self.neck_stages)

    def describe(self) -> dict[str, Any]:
        return {"family": "efficientvit_sam", "image_size": self.image_size, "width_list": list(self.width_list),
                "depth_list": list(self.depth_list), "neck_stages": list(self.neck_stages),
                "neck_depth": self.neck_depth, "neck_expand": self.neck_expand,
                "prompt_frame_size": PROMPT_FRAME_SIZE}


_L_STAGES = ("stage4", "stage3", "stage2")
_XL_STAGES = ("stage5", "stage4", "stage3")
_XL_BLOCKS = ("res", "fmb", "fmb", "fmb", "att@3", "att@3")
_XL_EXPAND = (1, 4, 4, 4, 4, 6)
_XL_FEWER_NORM = (False, False, False, False, True, True)
_L_WIDTHS = (32, 64, 128, 256, 512)
_XL_WIDTHS = (32, 64, 128, 256, 512, 1024)

#: Parameter names of an EfficientViT-SAM image encoder begin so (a SAM ViT's: ``image_encoder.patch_embed``).
BACKBONE_PREFIX = "image_encoder.backbone."

#: The official variants (``efficientvit/models/efficientvit/sam.py``: efficientvit_sam_l0 … xl1).
EFFICIENTVIT_ARCHITECTURES: dict[str, EfficientVitSamArchitecture] = {
    "efficientvit_l0": EfficientVitSamArchitecture(512, _L_WIDTHS, (1, 1, 1, 4, 4), _L_STAGES, 4, 1),
    "efficientvit_l1": EfficientVitSamArchitecture(512, _L_WIDTHS, (1, 1, 1, 6, 6), _L_STAGES, 8, 1),
    "efficientvit_l2": EfficientVitSamArchitecture(512, _L_WIDTHS, (1, 2, 2, 8, 8), _L_STAGES, 12, 1),
    "efficientvit_xl0": EfficientVitSamArchitecture(1024, _XL_WIDTHS, (0, 1, 1, 2, 3, 3), _XL_STAGES, 6, 4,
                                                    _XL_BLOCKS, _XL_EXPAND, _XL_FEWER_NORM),
    "efficientvit_xl1": EfficientVitSamArchitecture(1024, _XL_WIDTHS, (1, 2, 2, 4, 6, 6), _XL_STAGES, 12, 4,
                                                    _XL_BLOCKS, _XL_EXPAND, _XL_FEWER_NORM),
}


def efficientvit_architecture(model_type: str) -> EfficientVitSamArchitecture:
    """The architecture of an EfficientViT-SAM model type (ExportError when unknown)."""
    try:
        return EFFICIENTVIT_ARCHITECTURES[model_type]
    except KeyError:
        raise ExportError(f"unknown EfficientViT-SAM model type {model_type!r}; choose one of "
                          f"{', '.join(EFFICIENTVIT_SAM_TYPES)}") from None


def is_efficientvit(model_type: str) -> bool:
    return model_type in EFFICIENTVIT_ARCHITECTURES


# --- checkpoints --------------------------------------------------------------------------

@dataclass(frozen=True)
class EfficientVitCheckpoint:
    """An official EfficientViT-SAM checkpoint and what its authors report about the model.

    ``params_m``, ``macs_g``, ``orin_ms`` and ``a100_images_s``: parameters (millions),
    multiply-accumulates per image (billions), end-to-end latency on a Jetson AGX Orin
    (batch 1) and A100 throughput (batch 16), TensorRT fp16, from the README of
    https://github.com/mit-han-lab/efficientvit (``applications/efficientvit_sam/README.md``).
    """

    model_type: str
    filename: str
    url: str
    params_m: float
    macs_g: float
    orin_ms: float
    a100_images_s: float
    bytes: int | None = None
    sha256: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def approx_bytes(self) -> int:
        """fp32 weights: about 4 bytes per parameter (the file's exact size is not published)."""
        return int(self.params_m * 4e6)


_HF = "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/"


def _official(variant: str, params_m: float, macs_g: float, orin_ms: float, a100: float) -> EfficientVitCheckpoint:
    filename = f"efficientvit_sam_{variant}.pt"
    return EfficientVitCheckpoint(f"efficientvit_{variant}", filename, _HF + filename, params_m, macs_g, orin_ms, a100)


EFFICIENTVIT_CHECKPOINTS: dict[str, EfficientVitCheckpoint] = {
    "efficientvit_l0": _official("l0", 34.8, 35, 8.2, 762),
    "efficientvit_l1": _official("l1", 47.7, 49, 10.2, 638),
    "efficientvit_l2": _official("l2", 61.3, 69, 12.9, 538),
    "efficientvit_xl0": _official("xl0", 117.0, 185, 22.5, 278),
    "efficientvit_xl1": _official("xl1", 203.3, 322, 37.2, 182),
}


# --- importing the package without torchvision -------------------------------------------------

@dataclass(frozen=True)
class EfficientVitModules:
    """The torch-only classes of the ``efficientsam`` package this exporter builds models from."""

    nn: Any  # efficientsam.models.nn (ConvLayer, UpSampleLayer, FusedMBConv, ..., build_norm, set_norm_eps)
    backbone: Any  # efficientsam.models.efficientvit.backbone
    modeling: Any  # efficientsam.segment_anything.modeling (SAM's PromptEncoder, MaskDecoder, TwoWayTransformer)


def efficientvit_modules() -> EfficientVitModules:
    """Import the package's backbone, building blocks and SAM modeling copy, with or without torchvision.

    ``efficientsam.models.efficientvit`` and ``efficientsam.segment_anything`` are
    registered as bare packages (their ``__init__`` files, which import torchvision,
    are not run) just long enough to import the torch-only submodules; the bare
    entries are then removed, so a later ``import efficientsam.models.efficientvit``
    (with torchvision, or a stand-in) runs the real ``__init__`` and reuses the
    submodules already loaded.

    Raises
    ------
    ExportError
        The package is not installed, or its modules cannot be imported.
    """
    with _import_lock:
        if importlib.util.find_spec(PACKAGE) is None:
            raise ExportError("EfficientViT-SAM needs the efficientsam package: pip install --no-deps "
                              "efficientsam==1.0.0 (its torchvision requirement is not needed for export)")
        added: dict[str, Any] = {}
        try:
            for name in _BARE_PACKAGES:
                if name in sys.modules:
                    continue
                parent = importlib.import_module(name.rsplit(".", 1)[0])
                path = [str(Path(p) / name.rsplit(".", 1)[1]) for p in parent.__path__]
                spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
                spec.submodule_search_locations = path
                module = importlib.util.module_from_spec(spec)
                module.__path__ = path
                sys.modules[name] = module
                added[name] = module
            nn_mod = importlib.import_module(f"{PACKAGE}.models.nn")
            backbone = importlib.import_module(f"{PACKAGE}.models.efficientvit.backbone")
            modeling = importlib.import_module(f"{PACKAGE}.segment_anything.modeling")
        except ImportError as exc:
            raise ExportError(f"cannot import the efficientsam package's modules ({exc}); "
                              "pip install --no-deps efficientsam==1.0.0") from exc
        finally:
            for name, module in added.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
                parent, _, child = name.rpartition(".")
                if getattr(sys.modules.get(parent), child, None) is module:
                    delattr(sys.modules[parent], child)
        return EfficientVitModules(nn=nn_mod, backbone=backbone, modeling=modeling)


# --- the model ----------------------------------------------------------------------------------

def _build_neck(mods: EfficientVitModules, arch: EfficientVitSamArchitecture):
    """The package's ``SamNeck``: 1×1 conv + bicubic resample of each stage to 64×64, summed; FusedMBConv
    blocks; a 1×1 conv to 256 channels (same modules, same parameter names)."""
    nn = mods.nn
    width = arch.neck_width
    inputs = {
        name: nn.OpSequential([nn.ConvLayer(channels, width, 1, norm="bn2d", act_func=None),
                               nn.UpSampleLayer(size=(EMBEDDING_SIZE, EMBEDDING_SIZE))])
        for name, channels in zip(arch.neck_stages, arch.neck_channels(), strict=True)
    }
    middle = nn.OpSequential([
        nn.ResidualBlock(nn.FusedMBConv(width, width, expand_ratio=arch.neck_expand, norm="bn2d",
                                        act_func=("gelu", None)), nn.IdentityLayer())
        for _ in range(arch.neck_depth)
    ])
    outputs = {"sam_encoder": nn.OpSequential([nn.ConvLayer(width, PROMPT_EMBED_DIM, 1, use_bias=True, norm=None,
                                                            act_func=None)])}
    return nn.DAGBlock(inputs, "add", None, middle=middle, outputs=outputs)


def build_efficientvit_sam(arch: EfficientVitSamArchitecture | str):
    """An EfficientViT-SAM ``nn.Module`` (random weights; eval mode, fp32).

    The module tree and parameter names are the package's ``EfficientViTSam``
    (``image_encoder.backbone``, ``image_encoder.neck``, ``image_encoder.norm``,
    ``prompt_encoder``, ``mask_decoder``), so its checkpoints load strictly.

    Parameters
    ----------
    arch : EfficientVitSamArchitecture or str
        An architecture or an official model type (``"efficientvit_l0"``...).

    Returns
    -------
    torch.nn.Module
        With attributes ``encoder_input_size``, ``prompt_frame_size``, ``pixel_mean``,
        ``pixel_std`` (0-255 scale) and ``architecture`` read by the exporter.
    """
    import torch

    if isinstance(arch, str):
        arch = efficientvit_architecture(arch)
    mods = efficientvit_modules()
    kwargs: dict[str, Any] = {"width_list": list(arch.width_list), "depth_list": list(arch.depth_list)}
    for key in ("block_list", "expand_list", "fewer_norm_list"):
        value = getattr(arch, key)
        if value is not None:
            kwargs[key] = list(value)
    backbone = mods.backbone.EfficientViTLargeBackbone(**kwargs)
    modeling = mods.modeling

    class EfficientViTSamImageEncoder(torch.nn.Module):
        """Backbone → neck → LayerNorm2d: 1×3×S×S → 1×256×64×64 (the package's class)."""

        def __init__(self, backbone, neck):
            super().__init__()
            self.backbone = backbone
            self.neck = neck
            self.norm = mods.nn.build_norm("ln2d", PROMPT_EMBED_DIM)
            self.img_size = arch.image_size

        def forward(self, x):
            return self.norm(self.neck(self.backbone(x))["sam_encoder"])

    class EfficientViTSam(torch.nn.Module):
        """Image encoder + SAM's prompt encoder and mask decoder (state-dict compatible with the package)."""

        mask_threshold = 0.0

        def __init__(self):
            super().__init__()
            self.image_encoder = EfficientViTSamImageEncoder(backbone, _build_neck(mods, arch))
            self.prompt_encoder = modeling.PromptEncoder(
                embed_dim=PROMPT_EMBED_DIM, image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
                input_image_size=(PROMPT_FRAME_SIZE, PROMPT_FRAME_SIZE), mask_in_chans=16)
            self.mask_decoder = modeling.MaskDecoder(
                num_multimask_outputs=3,
                transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048,
                                                       num_heads=8),
                transformer_dim=PROMPT_EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256)
            self.encoder_input_size = arch.image_size
            self.prompt_frame_size = PROMPT_FRAME_SIZE
            self.pixel_mean = PIXEL_MEAN
            self.pixel_std = PIXEL_STD
            self.architecture = arch

    model = EfficientViTSam()
    mods.nn.set_norm_eps(model, NORM_EPS)
    return model.float().eval()


def read_efficientvit_state_dict(path: str | os.PathLike) -> dict:
    """A checkpoint's state dict (the package saves a plain dict, sometimes under ``"state_dict"``)."""
    from .sam_loader import read_state_dict

    state = read_state_dict(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def guess_efficientvit_type(state: dict) -> str | None:
    """The official EfficientViT-SAM model type whose parameter names and shapes ``state`` has exactly, or None.

    The candidates are built on PyTorch's ``meta`` device (shapes only, no memory, no initialisation).
    """
    import torch

    from ._torch_utils import state_dict_mismatch

    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        return None
    for name in EFFICIENTVIT_ARCHITECTURES:
        with torch.device("meta"):
            candidate = build_efficientvit_sam(name)
        if not state_dict_mismatch(candidate.state_dict(), state):
            return name
    return None


def load_efficientvit_sam(model_type: str, checkpoint: str | os.PathLike):
    """Build ``model_type`` and load ``checkpoint`` strictly (CheckpointError naming the mismatch and, when the
    file is another official type or a SAM ViT checkpoint, which one it looks like)."""
    from ._torch_utils import state_dict_mismatch
    from .sam_loader import describe_state_dict

    model = build_efficientvit_sam(model_type)
    state = read_efficientvit_state_dict(checkpoint)
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{checkpoint}: not an {model_type} checkpoint ({describe_state_dict(state)}; "
                              f"{problems}); pass the --model-type that matches the file")
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def ensure_efficientvit_checkpoint(model_type: str, cache: str | os.PathLike | None = None, opener=None,
                                   progress=None) -> Path:
    """The official checkpoint of ``model_type`` in the cache, downloaded if needed.

    Offline (or on any download error) the :class:`CheckpointError` names the URL
    and the path to put the file at. The file's size and hash are not published,
    so a cached or downloaded file is verified by loading it into the architecture
    (once; remembered in a ``.verified`` marker holding its SHA-256).
    """
    from ..engine.manifest import file_sha256
    from .sam_loader import OfficialCheckpoint, ensure_checkpoint

    if model_type not in EFFICIENTVIT_CHECKPOINTS:
        raise CheckpointError(f"no official checkpoint for model type {model_type!r}; pass --checkpoint PATH")
    entry = EFFICIENTVIT_CHECKPOINTS[model_type]
    official = OfficialCheckpoint(model_type, entry.filename, entry.url, entry.bytes, entry.sha256)
    path = ensure_checkpoint(model_type, cache=cache, opener=opener, progress=progress, official=official,
                             expected_bytes=entry.approx_bytes)
    marker = path.with_name(path.name + ".verified")
    digest = file_sha256(path)
    if not (marker.is_file() and marker.read_text().strip() == digest):
        try:
            load_efficientvit_sam(model_type, path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete {path} and download {entry.url} again") from exc
        try:
            marker.write_text(digest + "\n")
        except OSError:
            pass
    return path


__all__ = [
    "EFFICIENTVIT_ARCHITECTURES", "EFFICIENTVIT_CHECKPOINTS", "EFFICIENTVIT_SAM_TYPES", "EfficientVitSamArchitecture",
    "build_efficientvit_sam", "efficientvit_architecture", "efficientvit_modules", "ensure_efficientvit_checkpoint",
    "is_efficientvit", "load_efficientvit_sam",
]
