"""Building SAM models and loading official checkpoints, without torchvision.

``import segment_anything`` runs the package's ``__init__``, which imports the
automatic mask generator and through it torchvision; torchvision cannot be
installed on CPU-only machines here. The exporter only needs SAM's *modeling*
modules (``segment_anything/modeling/*.py``: plain torch), so
:func:`sam_modeling` imports them without running the package ``__init__``:

* if ``segment_anything`` is already imported, or torchvision is importable,
  the regular package is used (nothing changes for users who have it all);
* otherwise the package folder is mounted under a private alias package
  (:data:`ALIAS_PACKAGE`) and only ``modeling`` is imported from it. The real
  ``segment_anything`` entry of ``sys.modules`` is never touched, so a later
  ``import segment_anything`` (with torchvision, or with eac's test shim)
  still gets the real package.

Checkpoints: :data:`OFFICIAL_CHECKPOINTS` lists the official files (URL, size,
SHA-256). :func:`ensure_checkpoint` finds one in the cache folder
(``$EAC_CACHE``, default ``~/.cache/eac``) or downloads it, checking size and
hash; offline it raises :class:`CheckpointError` naming the file to download
and where to put it. :func:`load_sam` builds the architecture of a model type
and loads a checkpoint, refusing missing, truncated and wrong-type files with
one-line errors.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine.distribution import export_hint
from ..engine.manifest import file_sha256
from ._torch_utils import state_dict_mismatch, unreadable_checkpoint
from .errors import CheckpointError, ExportError

#: Name under which segment_anything's folder is mounted when its ``__init__`` cannot run.
ALIAS_PACKAGE = "_eac_segment_anything"
#: Environment variable naming the cache folder of downloaded checkpoints.
CACHE_ENV = "EAC_CACHE"
DEFAULT_CACHE = Path("~/.cache/eac")
_DOWNLOAD_CHUNK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60

_import_lock = threading.Lock()


@dataclass(frozen=True)
class SamModules:
    """SAM's modeling classes (from the real package or the private alias)."""

    Sam: type
    ImageEncoderViT: type
    PromptEncoder: type
    MaskDecoder: type
    TwoWayTransformer: type
    LayerNorm2d: type
    origin: str  # "segment_anything" or ALIAS_PACKAGE


def _torchvision_importable() -> bool:
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is not None
    return importlib.util.find_spec("torchvision") is not None


def _from_package(root: str) -> SamModules:
    modeling = importlib.import_module(f"{root}.modeling")
    common = importlib.import_module(f"{root}.modeling.common")
    return SamModules(
        Sam=modeling.Sam,
        ImageEncoderViT=modeling.ImageEncoderViT,
        PromptEncoder=modeling.PromptEncoder,
        MaskDecoder=modeling.MaskDecoder,
        TwoWayTransformer=modeling.TwoWayTransformer,
        LayerNorm2d=common.LayerNorm2d,
        origin=root,
    )


def _mount_alias() -> None:
    """Register :data:`ALIAS_PACKAGE` as a package over segment_anything's folder."""
    if ALIAS_PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"segment-anything is not installed; install the export extra: {export_hint()}"
        )
    alias_spec = importlib.machinery.ModuleSpec(ALIAS_PACKAGE, None, is_package=True)
    alias_spec.submodule_search_locations = list(spec.submodule_search_locations)
    package = importlib.util.module_from_spec(alias_spec)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[ALIAS_PACKAGE] = package


def sam_modeling() -> SamModules:
    """segment_anything's modeling classes, importable with or without torchvision.

    Raises
    ------
    ExportError
        segment-anything is not installed.
    """
    with _import_lock:
        loaded = sys.modules.get("segment_anything")
        if isinstance(loaded, ModuleType) and hasattr(loaded, "sam_model_registry"):
            return _from_package("segment_anything")
        if _torchvision_importable():
            try:
                importlib.import_module("segment_anything")
                return _from_package("segment_anything")
            except ImportError:
                pass  # a broken torchvision: fall back to the alias below
        _mount_alias()
        try:
            return _from_package(ALIAS_PACKAGE)
        except ImportError as exc:
            raise ExportError(
                f"cannot import segment-anything's modeling modules ({exc}); "
                f"reinstall the export extra: {export_hint()}"
            ) from exc


# --- architectures ------------------------------------------------------------------------

@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of one SAM variant (defaults: the official decoder and input size).

    The encoder fields differ between ViT-B/L/H; the others are shared by the
    official models and only changed by tests (tiny random-weight SAMs).
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    def describe(self) -> dict[str, Any]:
        return {
            "encoder_embed_dim": self.encoder_embed_dim,
            "encoder_depth": self.encoder_depth,
            "encoder_num_heads": self.encoder_num_heads,
            "encoder_global_attn_indexes": list(self.encoder_global_attn_indexes),
            "prompt_embed_dim": self.prompt_embed_dim,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "embedding_size": self.embedding_size,
            "window_size": self.window_size,
            "decoder_mlp_dim": self.decoder_mlp_dim,
        }


#: The small SAM trained here on generated scenes (``python -m eac.bench.train_sam``; shipped as
#: ``eac/engine/data/demo_sam``): the demo's 128×128 scenes at their own resolution (no upscaling), 4-pixel
#: patches (a 32×32 embedding grid, 128×128 low-resolution masks: one logit per scene pixel), a 128-wide
#: 4-block ViT with two global-attention blocks, and SAM's prompt encoder and two-way decoder at width 128
#: (≈ 1.9 M parameters). 8-pixel patches (16×16, 64×64 masks: two pixels per logit) trained the same way
#: reach best-of-3 mIoU 0.906 against 0.936 and miss more small objects; 4-pixel patches cost about 4× the
#: encoder and decoder time (bench/scene_sam/training.json, `eac bench concepts`).
SCENE_SAM = SamArchitecture(
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    prompt_embed_dim=128,
    image_size=128,
    patch_size=4,
    window_size=8,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)

#: Generator settings measured on a model type, written into its exported manifest as ``recommended_settings``
#: (the engine applies them where the user sets nothing). The scene SAM decodes coarse-to-fine: on 96 held-out
#: object scenes it decoded 13 % of the 32×32 grid's prompts, lost one of 326 objects (recall within 1 point) and
#: kept fewer near-duplicates (2.7 % vs 3.6 %); on the demo's 48 scenes 11 %, none lost (``python -m
#: eac.bench.study_prompts --scenes 96 --demo-scenes 48``, bench/results/prompts.md; before the shipped SAM's
#: logit shift: 12 %, none lost, 1.0 % vs 6.1 %). The official SAMs keep the reference grid: no real
#: SAM has been measured here, and objects with parts may lose part masks when points inside a whole are skipped.
RECOMMENDED_SETTINGS: dict[str, dict[str, Any]] = {"scene": {"prompt_schedule": "coarse-to-fine"}}

#: SAM variants by ``--model-type``: the official ones (segment_anything/build_sam.py) and ``scene``.
SAM_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "scene": SCENE_SAM,
}


def build_sam_model(arch: SamArchitecture):
    """A SAM ``nn.Module`` with ``arch``'s shape and freshly initialised weights (eval mode)."""
    import torch

    m = sam_modeling()
    size = arch.embedding_size
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(size, size),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=m.TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )
    sam.eval()
    return sam


def architecture(model_type: str) -> SamArchitecture:
    """The architecture registered for ``model_type``; :class:`ExportError` when unknown."""
    try:
        return SAM_ARCHITECTURES[model_type]
    except KeyError:
        raise ExportError(
            f"unknown SAM model type {model_type!r}; choose one of {', '.join(sorted(SAM_ARCHITECTURES))}"
        ) from None


# --- checkpoints --------------------------------------------------------------------------

@dataclass(frozen=True)
class OfficialCheckpoint:
    """An official segment-anything checkpoint file."""

    model_type: str
    filename: str
    url: str
    bytes: int | None
    sha256: str | None


_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_b": OfficialCheckpoint(
        "vit_b", "sam_vit_b_01ec64.pth", _BASE_URL + "sam_vit_b_01ec64.pth", 375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": OfficialCheckpoint(
        "vit_l", "sam_vit_l_0b3195.pth", _BASE_URL + "sam_vit_l_0b3195.pth", 1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": OfficialCheckpoint(
        "vit_h", "sam_vit_h_4b8939.pth", _BASE_URL + "sam_vit_h_4b8939.pth", 2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


def cache_dir() -> Path:
    """The checkpoint cache folder: ``$EAC_CACHE`` or ``~/.cache/eac``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_cached(path: Path, official: OfficialCheckpoint) -> None:
    """Check size (always) and SHA-256 (once; remembered in a ``.sha256`` marker), where they are known."""
    size = path.stat().st_size
    if official.bytes is not None and size != official.bytes:
        raise CheckpointError(
            f"{path}: {size} bytes, but the official {official.model_type} checkpoint has {official.bytes} "
            f"(truncated or another file); delete it and download {official.url} again"
        )
    if official.sha256 is None:
        return  # unpublished hash: the caller verifies the file otherwise
    marker = _verified_marker(path)
    if marker.is_file() and marker.read_text().strip() == official.sha256:
        return
    digest = file_sha256(path)
    if digest != official.sha256:
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:12]}… differs from the official {official.model_type} checkpoint "
            f"({official.sha256[:12]}…); delete it and download {official.url} again"
        )
    try:
        marker.write_text(official.sha256 + "\n")
    except OSError:
        pass  # read-only cache: the hash is simply checked again next time


def ensure_checkpoint(
    model_type: str,
    cache: str | os.PathLike | None = None,
    opener: Callable[..., Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    official: OfficialCheckpoint | None = None,
    expected_bytes: int | None = None,
) -> Path:
    """The official checkpoint of ``model_type`` in the cache, downloaded if needed.

    Parameters
    ----------
    model_type : {"vit_b", "vit_l", "vit_h"}
    cache : path-like, optional
        Cache folder (default :func:`cache_dir`).
    opener : callable, optional
        ``urlopen``-like function (default :func:`urllib.request.urlopen`).
    progress : callable, optional
        Called with (bytes so far, total bytes) while downloading.
    official : OfficialCheckpoint, optional
        The file to get (default: :data:`OFFICIAL_CHECKPOINTS` of ``model_type``);
        its ``bytes`` / ``sha256`` may be None when unpublished (then unchecked here).
    expected_bytes : int, optional
        Approximate size for the progress bar when ``official.bytes`` is None.

    Returns
    -------
    Path
        The verified checkpoint file (reused on later calls).

    Raises
    ------
    CheckpointError
        Unknown type, download impossible (offline: says which file to get and
        where to put it), or a size/hash mismatch.
    """
    if official is None:
        if model_type not in OFFICIAL_CHECKPOINTS:
            raise CheckpointError(
                f"no official checkpoint for model type {model_type!r}; pass --checkpoint PATH instead of --download"
            )
        official = OFFICIAL_CHECKPOINTS[model_type]
    total = official.bytes if official.bytes is not None else int(expected_bytes or 0)
    opener = opener or urllib.request.urlopen
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    target = folder / official.filename
    if target.is_file():
        _check_cached(target, official)
        return target
    where = f"download {official.url} by hand and put it at {target} (or pass --checkpoint PATH)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the cache folder {folder} ({exc.strerror}); set ${CACHE_ENV}") from exc
    partial_path = target.with_name(target.name + ".part")
    try:
        with opener(official.url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(partial_path, "wb") as out:
            done = 0
            while True:
                chunk = response.read(_DOWNLOAD_CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial_path.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"cannot download the {model_type} checkpoint ({reason}); {where}") from exc
    try:
        _check_cached(partial_path, official)
    except CheckpointError:
        partial_path.unlink(missing_ok=True)
        _verified_marker(partial_path).unlink(missing_ok=True)
        raise CheckpointError(
            f"the downloaded {model_type} checkpoint is corrupt (size or SHA-256 mismatch); {where}"
        ) from None
    os.replace(partial_path, target)
    marker = _verified_marker(partial_path)
    if marker.is_file():
        os.replace(marker, _verified_marker(target))
    return target


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a checkpoint's state dict (tensors only, ``weights_only``) with one-line errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the .pth file of the official SAM release")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for bad files
        raise unreadable_checkpoint(path, exc, "checkpoint", "download an official one again (--download), or "
                                    "pass the .pth file training wrote") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict; pass an official segment-anything checkpoint")
    return state


def describe_state_dict(state: dict) -> str:
    """A short guess of which SAM a state dict belongs to ("ViT embed dim 1024, depth 24")."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        from .efficientvit_sam import BACKBONE_PREFIX, guess_efficientvit_type

        if any(k.startswith(BACKBONE_PREFIX) for k in state):
            kind = guess_efficientvit_type(state)
            return (f"an EfficientViT-SAM checkpoint (looks like {kind})" if kind else
                    "an EfficientViT-SAM checkpoint of none of the official sizes")
        return "not a SAM checkpoint (no image_encoder.patch_embed)"
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    dim, depth = int(patch.shape[0]), len(blocks)
    names = [t for t, a in SAM_ARCHITECTURES.items() if (a.encoder_embed_dim, a.encoder_depth) == (dim, depth)]
    guess = f" (looks like {names[0]})" if names else ""
    return f"ViT embed dim {dim}, depth {depth}{guess}"


def load_state_into(sam, state: dict, model_type: str, source: str) -> None:
    """Load ``state`` into ``sam`` strictly; :class:`CheckpointError` on any mismatch."""
    problems = state_dict_mismatch(sam.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{source}: not a {model_type} checkpoint: {describe_state_dict(state)}; "
            f"{problems}. Pass the --model-type that matches the file"
        )
    sam.load_state_dict(state, strict=True)


def load_sam(model_type: str, checkpoint: str | os.PathLike):
    """Build the ``model_type`` architecture and load ``checkpoint`` into it (eval mode, fp32, CPU)."""
    arch = architecture(model_type)
    state = read_state_dict(checkpoint)
    sam = build_sam_model(arch)
    load_state_into(sam, state, model_type, str(checkpoint))
    return sam.float().eval()
