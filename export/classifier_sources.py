"""Where a classifier to export comes from: torchvision, a factory, Hugging Face transformers, or timm.

:func:`build_model` returns a :class:`BuiltModel`: the ``torch.nn.Module`` (fp32, eval
mode), its provenance for the manifest, its class names when the source has them, and
the preprocessing the model's own configuration asks for, when it has one:

* ``--torchvision NAME`` — ``torchvision.models.get_model``; with ``--weights default``
  the weights enum's ``transforms()`` (crop, resize, mean, std) and categories.
* ``--module PKG.MOD:FACTORY`` — any factory returning an ``nn.Module``; nothing recommended.
* ``--hf NAME_OR_PATH`` — ``transformers.AutoModelForImageClassification`` from a local folder
  or a hub id; its ``preprocessor_config.json`` (see :func:`hf_preprocess`), else
  ``config.image_size``; labels from ``config.id2label``.
* ``--timm NAME`` — ``timm.create_model``; ``timm.data.resolve_data_config`` (see
  :func:`timm_preprocess`).

eac's preprocessing is: resize the shorter side to ``resize``, centre-crop ``crop``,
``(v·scale − mean) / std``. A source whose own pipeline differs (resizing to H×W without
keeping the aspect ratio, timm's ``squash``/``border`` crop modes) is mapped to the nearest
such pipeline — identical for square images — and the manifest's ``source.preprocess_note``
says so. Models whose forward returns an object carrying ``logits`` (transformers'
``ImageClassifierOutput...``) are accepted by the exporter as they are.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..engine.distribution import install_hint
from ..engine.manifest import PIXEL_SCALE
from ._torch_utils import import_factory, load_state_dict
from .common import first_line
from .errors import ExportError

#: How to get a torchvision that imports: it is built against one torch release.
TORCHVISION_HINT = ("install the torchvision release built for your torch, together with it (e.g. "
                    "pip install torch==2.14.1 torchvision==0.29.1; a torchvision of another torch release "
                    "fails to import)")
#: The file of a transformers model folder that holds its image processor's settings.
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
#: The Hugging Face hub, unless $HF_ENDPOINT names another.
HF_HUB_URL = "https://huggingface.co"
#: transformers' ConvNext processor: below this shortest edge it resizes to shortest_edge / crop_pct,
#: then centre-crops shortest_edge; at or above it, it resizes to a square without cropping.
HF_CROP_PCT_MAX_EDGE = 384
#: timm's crop mode that eac's pipeline (shorter side, then centre crop) reproduces exactly.
TIMM_CENTER_MODE = "center"
#: timm's crop fraction when a model's configuration gives none.
TIMM_DEFAULT_CROP_PCT = 0.875
#: Resize side over crop side of the usual ImageNet evaluation (resize 256, crop 224): used for a transformers
#: model that states only its input side.
IMAGENET_RESIZE_RATIO = 256 / 224
#: The import name of Hugging Face's hub-kernels distribution, which transformers (>= 5.25) imports when it is
#: installed; in a checkout, eac's own ``kernels/`` folder has the same name.
HF_KERNELS_PACKAGE = "kernels"
#: transformers' placeholder class names (``LABEL_0``...), which say nothing about the classes.
HF_PLACEHOLDER_LABEL = "LABEL_"


@dataclass
class BuiltModel:
    """A classifier to export and what its source says about it.

    Attributes
    ----------
    model : torch.nn.Module
        fp32, eval mode.
    source : dict
        Provenance recorded in the manifest's ``source``.
    labels : list of str or None
        Class names from the source (None when it has none).
    recommended : dict or None
        Some or all of ``{"crop", "resize", "mean", "std"}`` from the model's own configuration
        (mean/std on the 0-1 scale, for pixels scaled by 1/255), or None.
    recommended_from : str
        Where ``recommended`` comes from (for the manifest).
    notes : list of str
        Where eac's preprocessing differs from the source's own (for the manifest).
    """

    model: Any
    source: dict[str, Any]
    labels: list[str] | None = None
    recommended: dict[str, Any] | None = None
    recommended_from: str = ""
    notes: list[str] = field(default_factory=list)


def source_flag(torchvision=None, module=None, hf=None, timm=None) -> str:
    """How messages name the model: ``--torchvision resnet50``, ``--hf DIR``..."""
    for flag, value in (("--torchvision", torchvision), ("--module", module), ("--hf", hf), ("--timm", timm)):
        if value is not None:
            return f"{flag} {value}"
    return "the model"


def check_model_source(torchvision=None, weights=None, module=None, checkpoint=None, hf=None, timm=None) -> None:
    """Exactly one model source, each with its own weights option; raises ExportError."""
    given = [v for v in (torchvision, module, hf, timm) if v is not None]
    if len(given) != 1:
        raise ExportError("give exactly one of --torchvision NAME, --module PKG.MOD:FACTORY, --hf NAME_OR_PATH "
                          "or --timm NAME")
    if weights is not None and torchvision is None and timm is None:
        raise ExportError("--weights goes with --torchvision or --timm; use --checkpoint with --module "
                          "(a --hf model folder holds its weights)")
    if checkpoint is not None and module is None:
        raise ExportError("--checkpoint goes with --module; use --weights with --torchvision or --timm "
                          "(a --hf model folder holds its weights)")


def build_model(torchvision=None, weights=None, module=None, checkpoint=None, hf=None, timm=None) -> BuiltModel:
    """The model named by one of the sources (see the module docs), fp32 and in eval mode.

    Raises
    ------
    ExportError
        The source's package is missing (one line saying what to install), an unknown
        model name, a model that cannot be fetched here (one line saying what to fetch
        and how), or a factory that fails.
    CheckpointError
        A weights or checkpoint file that does not fit the model.
    """
    check_model_source(torchvision, weights, module, checkpoint, hf, timm)
    if torchvision is not None:
        built = _build_torchvision(torchvision, weights)
    elif module is not None:
        built = _build_module(module, checkpoint)
    elif hf is not None:
        built = _build_hf(hf)
    else:
        built = _build_timm(timm, weights)
    built.model = built.model.float().eval()
    return built


# --------------------------------------------------------------------------- torchvision
def _build_torchvision(name: str, weights: str | None) -> BuiltModel:
    """torchvision model ``name``, with the weights' class names and preprocessing for ``--weights default``."""
    try:
        import torchvision
        from torchvision.models import get_model, get_model_weights
    except ImportError as exc:
        raise ExportError(f"--torchvision {name}: torchvision is not installed ({first_line(exc)}); "
                          f"{TORCHVISION_HINT}; or export with --module PKG.MOD:FACTORY, --hf or --timm") from exc
    source: dict[str, Any] = {"torchvision": name, "torchvision_version": torchvision.__version__, "weights": weights}
    labels = None
    recommended = None
    try:
        if weights == "default":
            enum = get_model_weights(name).DEFAULT
            model = get_model(name, weights=enum)
            source["weights"] = str(enum)
            labels = list(enum.meta.get("categories") or []) or None
            recommended = _weights_preprocess(enum)
        else:
            model = get_model(name, weights=None)
    except ValueError as exc:  # unknown model name
        raise ExportError(f"--torchvision {name}: {first_line(exc)}") from exc
    except (OSError, RuntimeError) as exc:  # download failures, hash mismatches
        raise ExportError(
            f"--torchvision {name} --weights default: cannot get the default weights ({first_line(exc)}); "
            "download them elsewhere and pass the file with --weights PATH"
        ) from exc
    if weights not in (None, "default"):
        source["weights"] = load_state_dict(model, weights, what="weights file")
    elif weights is None:
        source["weights_note"] = "random weights (no --weights given)"
    return BuiltModel(model, source, labels, recommended, "the weights' transforms")


def _weights_preprocess(enum) -> dict[str, Any] | None:
    """Crop, resize, mean and std of a torchvision weights enum's ``transforms()`` (None if unknown)."""
    try:
        t = enum.transforms()
        crop = t.crop_size
        resize = t.resize_size
        crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
        resize = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
        mean = tuple(float(v) for v in t.mean)
        std = tuple(float(v) for v in t.std)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return {"crop": crop, "resize": resize, "mean": mean, "std": std}


# --------------------------------------------------------------------------- a factory
def _build_module(spec: str, checkpoint) -> BuiltModel:
    import torch

    factory = import_factory(spec)
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"--module {spec!r}: the factory raised {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"--module {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    source: dict[str, Any] = {"module": spec, "checkpoint": None}
    if checkpoint is not None:
        source["checkpoint"] = load_state_dict(model, checkpoint)
    else:
        source["weights_note"] = "factory weights (no --checkpoint)"
    return BuiltModel(model, source)


# --------------------------------------------------------------------------- Hugging Face transformers
def _build_hf(name_or_path: str) -> BuiltModel:
    """A transformers image classifier from a local folder or a hub id, with its processor's preprocessing."""
    _check_kernels_not_shadowed()
    try:
        import transformers
    except ImportError as exc:
        raise ExportError(f"--hf needs Hugging Face transformers ({first_line(exc)}): "
                          f"{install_hint('export', 'hf')}") from exc
    folder = Path(str(name_or_path)).expanduser()
    local = folder.is_dir()
    # Without a network the hub client retries each file five times (25 s of "Retrying in 8s" lines) before it
    # looks in its cache: when the hub's name does not resolve, read the cache at once.
    cache_only = not local and not _hub_resolves()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder) if local else name_or_path, **({"local_files_only": True} if cache_only else {}))
    except (OSError, ValueError, KeyError) as exc:  # missing files, no network, an unknown architecture
        if local:
            raise ExportError(f"--hf {name_or_path}: cannot load the image classifier in that folder "
                              f"({first_line(exc)}); it needs config.json and the weights, as save_pretrained "
                              "writes them") from exc
        raise ExportError(
            f"--hf {name_or_path}: not a local folder, and the hub model cannot be loaded here ({first_line(exc)}); "
            f"fetch it where there is network: hf download {name_or_path} --local-dir DIR (huggingface_hub's CLI; "
            "older versions: huggingface-cli download), then give --hf DIR") from exc
    config = model.config
    source: dict[str, Any] = {"hf": str(name_or_path), "hf_class": type(model).__name__,
                              "transformers_version": transformers.__version__}
    processor = _hf_processor_config(folder if local else None, str(name_or_path), cache_only)
    notes: list[str] = []
    if processor is not None:
        recommended, origin = hf_preprocess(processor, notes), f"the model's {HF_PREPROCESSOR_FILE}"
    else:
        recommended, origin = _hf_config_preprocess(config, notes), "the model's config.image_size"
    return BuiltModel(model, source, _hf_labels(config), recommended, origin, notes)


def _check_kernels_not_shadowed() -> None:
    """Fail in one line where ``import kernels`` would load eac's checkout folder instead of the installed package.

    ``python -m`` and ``python -c`` put the current folder first on the import path; run from a checkout, its
    ``kernels/`` folder (eac's numeric code, ``eac.kernels``) then hides the ``kernels`` distribution that
    transformers imports when it is installed, and a model class fails deep inside transformers.
    """
    spec = importlib.util.find_spec(HF_KERNELS_PACKAGE)
    if spec is None or spec.origin is None:
        return
    from .. import kernels as eac_kernels

    if Path(spec.origin).resolve().parent != Path(eac_kernels.__file__).resolve().parent:
        return
    try:
        importlib.metadata.version(HF_KERNELS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return  # transformers imports `kernels` only when its distribution is installed
    raise ExportError(f"--hf: this checkout's {HF_KERNELS_PACKAGE}/ folder hides the `{HF_KERNELS_PACKAGE}` package "
                      "that transformers imports (python -m and python -c put the current folder first on the "
                      "import path); run the `eac` command, or python from another folder")


def _hub_resolves() -> bool:
    """Whether the Hugging Face hub's host name resolves (``$HF_ENDPOINT`` or huggingface.co): no network, no."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or HF_HUB_URL).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hf_processor_config(folder: Path | None, name: str, cache_only: bool = False) -> dict[str, Any] | None:
    """The model's ``preprocessor_config.json`` as a dict: from the folder, or the hub (cache), or None."""
    if folder is not None:
        path = folder / HF_PREPROCESSOR_FILE
        if not path.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, HF_PREPROCESSOR_FILE, local_files_only=cache_only))
        except Exception:  # no such file in the repository, or no network and nothing cached: none to read
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable image processor settings ({first_line(exc)})") from exc
    return data if isinstance(data, dict) else None


def _edge(size: Any) -> tuple[str, int] | None:
    """A transformers ``size``/``crop_size`` as ``("shortest", s)`` or ``("square", s)``; None when it is
    missing, not positive, or a rectangle (eac's crops are square)."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        found = ("square", int(size))
    elif isinstance(size, dict) and "shortest_edge" in size:
        found = ("shortest", int(size["shortest_edge"]))
    elif isinstance(size, dict) and "height" in size and "width" in size and size["height"] == size["width"]:
        found = ("square", int(size["height"]))
    else:
        return None
    return found if found[1] > 0 else None


def hf_preprocess(processor: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    """eac preprocessing from a transformers image processor's settings (``preprocessor_config.json``).

    Reads ``size`` (``shortest_edge``, or ``height``/``width``), ``crop_pct`` (ConvNext),
    ``do_center_crop``/``crop_size``, ``do_rescale``/``rescale_factor`` and
    ``do_normalize``/``image_mean``/``image_std``. Mean and std are returned for eac's 1/255
    pixel scale: a processor computing ``(v·r − m) / s`` is eac's ``(v/255 − m/(255r)) / (s/(255r))``.

    Parameters
    ----------
    processor : dict
        The JSON settings.
    notes : list of str
        Appended to: where eac's pipeline differs from the processor's.

    Returns
    -------
    dict or None
        ``{"crop", "resize", "mean", "std"}``; None when ``size`` is missing or not square.
    """
    size = _edge(processor.get("size"))
    if size is None:
        notes.append(f"{HF_PREPROCESSOR_FILE}: size {processor.get('size')!r} is not a shortest edge or a square; "
                     "the preprocessing options were used")
        return None
    kind, edge = size
    crop_pct = processor.get("crop_pct")
    crop_size = _edge(processor.get("crop_size")) if processor.get("do_center_crop", False) else None
    if kind == "shortest" and crop_pct and edge < HF_CROP_PCT_MAX_EDGE:
        resize, crop = int(edge / float(crop_pct)), edge
    elif crop_size is not None:
        resize, crop = edge, crop_size[1]
    else:
        resize, crop = edge, edge
    if kind == "square":
        notes.append(f"the model's processor resizes to {edge}×{edge} without keeping the aspect ratio; eac resizes "
                     f"the shorter side to {resize} and centre-crops (the same for square images)")
    rescale = float(processor.get("rescale_factor", PIXEL_SCALE)) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True):
        mean = [float(v) for v in processor.get("image_mean", (0.0, 0.0, 0.0))]
        std = [float(v) for v in processor.get("image_std", (1.0, 1.0, 1.0))]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    factor = PIXEL_SCALE / rescale  # eac's mean/std are for pixels scaled by 1/255
    return {"crop": int(crop), "resize": int(resize), "mean": tuple(m * factor for m in mean),
            "std": tuple(s * factor for s in std)}


def _hf_config_preprocess(config: Any, notes: list[str]) -> dict[str, Any] | None:
    """Without a processor file: the crop from ``config.image_size`` (a ViT needs exactly that side)."""
    side = getattr(config, "image_size", None)
    if isinstance(side, (list, tuple)):
        side = side[0] if len(set(side)) == 1 else None
    if not isinstance(side, int) or side <= 0:
        return None
    resize = round(side * IMAGENET_RESIZE_RATIO)
    notes.append(f"no {HF_PREPROCESSOR_FILE}: crop {side} from config.image_size, resize {resize} by the ImageNet "
                 "ratio 256/224, mean/std the options' (pass --resize/--mean/--std to match the model's training)")
    return {"crop": side, "resize": resize}


def _hf_labels(config: Any) -> list[str] | None:
    """Class names from ``config.id2label`` in index order; None for transformers' LABEL_i placeholders."""
    id2label = getattr(config, "id2label", None) or {}
    try:
        labels = [str(id2label[i]) for i in range(len(id2label))]
    except KeyError:
        return None
    if not labels or all(name.startswith(HF_PLACEHOLDER_LABEL) for name in labels):
        return None
    return labels


# --------------------------------------------------------------------------- timm
def _build_timm(name: str, weights: str | None) -> BuiltModel:
    """``timm.create_model(name)`` (pretrained with ``--weights default``) and its data configuration."""
    try:
        import timm
        import timm.data
    except ImportError as exc:
        raise ExportError(f"--timm {name}: timm is not installed or cannot be imported ({first_line(exc)}); "
                          f"pip install timm — it needs torchvision: {TORCHVISION_HINT}") from exc
    pretrained = weights == "default"
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # an unknown name (RuntimeError), or a download that failed (hub errors)
        hint = ("; fetch the weights where there is network and pass the file with --weights PATH" if pretrained
                else "")
        raise ExportError(f"--timm {name}: timm cannot create it ({type(exc).__name__}: {first_line(exc)}){hint}") \
            from exc
    source: dict[str, Any] = {"timm": name, "timm_version": getattr(timm, "__version__", None),
                              "weights": "pretrained" if pretrained else weights}
    if weights not in (None, "default"):
        source["weights"] = load_state_dict(model, weights, what="weights file")
    elif weights is None:
        source["weights_note"] = "random weights (no --weights given)"
    notes: list[str] = []
    recommended = timm_preprocess(timm.data.resolve_data_config({}, model=model), notes)
    return BuiltModel(model, source, None, recommended, "timm's data configuration of the model", notes)


def timm_preprocess(data_config: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    """eac preprocessing from timm's data configuration (``input_size``, ``crop_pct``, ``crop_mode``, mean, std).

    timm's evaluation transform resizes the shorter side to ``floor(side / crop_pct)`` and
    centre-crops ``side`` (its ``center`` mode, eac's pipeline).

    Returns
    -------
    dict or None
        ``{"crop", "resize", "mean", "std"}``; None for a non-square input size.
    """
    input_size = tuple(data_config.get("input_size") or ())
    if len(input_size) != 3 or input_size[1] != input_size[2]:
        notes.append(f"timm input_size {input_size} is not square; the preprocessing options were used")
        return None
    side = int(input_size[1])
    crop_pct = float(data_config.get("crop_pct") or TIMM_DEFAULT_CROP_PCT)
    mode = data_config.get("crop_mode") or TIMM_CENTER_MODE
    if mode != TIMM_CENTER_MODE:
        notes.append(f"timm crop_mode {mode!r}: eac resizes the shorter side and centre-crops (timm's 'center')")
    return {"crop": side, "resize": math.floor(side / crop_pct),
            "mean": tuple(float(v) for v in data_config["mean"]), "std": tuple(float(v) for v in data_config["std"])}


__all__ = ["BuiltModel", "build_model", "check_model_source", "hf_preprocess", "source_flag", "timm_preprocess"]
