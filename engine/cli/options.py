"""Argument groups and checked argument types shared by the ``eac`` subcommands.

Every numeric flag is range-checked by the parser itself (argparse prints one
``usage`` line and exits 2), so nothing out of range reaches the engine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ...kernels.prompts import DEFAULT_SKIP_IOU, PROMPT_SCHEDULES
from ..manifest import CHANNEL_ORDERS, IMAGENET_MEAN, IMAGENET_STD
from ..shipped import resolve_model_folder, shipped_names

#: SAM automatic mask generation flags (reference defaults: segment-anything's generator).
SAM_FLAGS = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "box_nms_thresh": 0.7,
}
#: Largest SAM point grid side accepted without --allow-large (128² = 16 384 prompts).
MAX_POINTS_PER_SIDE = 128
#: Most --crop-n-layers without --allow-large: layer k adds 4^k crops, each a whole SAM run (2 layers: 21 runs).
MAX_CROP_N_LAYERS = 2


def int_at_least(low: int, name: str = "value") -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = name
    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a float in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie in [{low:g}, {high:g}], got {value:g}")
        return value

    return parse


positive_int = int_at_least(1, "positive integer")
non_negative_int = int_at_least(0, "non-negative integer")


def floats3(text: str) -> tuple[float, float, float]:
    """An argparse type: three numbers (R G B), separated by spaces or commas."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R G B), got {text!r}")
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers (R G B), got {text!r}") from None


def add_session_args(p: argparse.ArgumentParser) -> None:
    """ONNX Runtime flags: providers, threads, device, TensorRT."""
    g = p.add_argument_group("ONNX Runtime")
    g.add_argument("--providers", default="auto",
                   help="auto (TensorRT, then CUDA, then CPU), or a comma list such as cuda,cpu")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU intra-op threads (default: all cores)")
    g.add_argument("--device-id", type=non_negative_int, default=0, help="GPU index for CUDA/TensorRT")
    g.add_argument("--trt-fp16", action="store_true", help="let TensorRT build fp16 engines")
    g.add_argument("--trt-cache", default=None, help="folder for TensorRT engine caches")


def runtime_from_args(args: argparse.Namespace):
    """The :class:`~eac.engine.session.Runtime` the session flags ask for (providers checked now)."""
    from ..session import Runtime, SessionOptions

    return Runtime.from_options(SessionOptions(
        providers=args.providers,
        cpu_threads=args.threads,
        cuda_device_id=args.device_id,
        trt_fp16=args.trt_fp16,
        trt_cache_dir=args.trt_cache,
    ))


def add_preprocess_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Classifier preprocessing flags (recorded in the manifest)."""
    g = p.add_argument_group("preprocessing (recorded in the manifest)")
    g.add_argument("--input-size", type=positive_int, default=224 if defaults else None,
                   help="network input side (crop size)")
    g.add_argument("--resize", type=positive_int, default=256 if defaults else None,
                   help="resize the shorter side to this before the centre crop")
    g.add_argument("--mean", type=floats3, default=IMAGENET_MEAN if defaults else None,
                   help="per-channel mean, 0-1 scale (default ImageNet)")
    g.add_argument("--std", type=floats3, default=IMAGENET_STD if defaults else None,
                   help="per-channel std, 0-1 scale (default ImageNet)")
    g.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="RGB")
    g.add_argument("--labels", default=None, help="text file with one class name per line")


def add_sam_args(p: argparse.ArgumentParser) -> None:
    """SAM automatic mask generation flags (reference defaults)."""
    unit = float_between(0.0, 1.0)
    g = p.add_argument_group("SAM automatic mask generation (reference defaults)")
    g.add_argument("--points-per-side", type=positive_int, default=SAM_FLAGS["points_per_side"],
                   help=f"point grid side (at most {MAX_POINTS_PER_SIDE} unless --allow-large)")
    g.add_argument("--allow-large", action="store_true",
                   help=f"allow --points-per-side above {MAX_POINTS_PER_SIDE} (memory and time grow with its square) "
                        f"and --crop-n-layers above {MAX_CROP_N_LAYERS}")
    g.add_argument("--points-per-batch", type=positive_int, default=SAM_FLAGS["points_per_batch"])
    g.add_argument("--pred-iou-thresh", type=unit, default=SAM_FLAGS["pred_iou_thresh"])
    g.add_argument("--stability-score-thresh", type=unit, default=SAM_FLAGS["stability_score_thresh"])
    g.add_argument("--box-nms-thresh", type=unit, default=SAM_FLAGS["box_nms_thresh"])
    g.add_argument("--min-area", type=non_negative_int, default=0,
                   help="remove masks (and holes) smaller than this, in pixels")
    g.add_argument("--crop-n-layers", type=int_at_least(0), default=0,
                   help="extra layers of overlapping crops (0: the image only, as EAC uses; layer k adds 4^k "
                        f"crops, each a whole SAM run; at most {MAX_CROP_N_LAYERS} unless --allow-large)")
    g.add_argument("--prompt-schedule", choices=PROMPT_SCHEDULES, default=None,
                   help="grid: decode every grid point (the reference); coarse-to-fine: decode every 4th, then "
                        "every 2nd row/column, then the rest, skipping points inside masks already kept with "
                        "predicted IoU >= --skip-iou-thresh (bench/results/prompts.md). Default: what the SAM "
                        "folder's manifest recommends (the shipped scene SAM: coarse-to-fine), else grid")
    g.add_argument("--skip-iou-thresh", type=unit, default=DEFAULT_SKIP_IOU,
                   help="coarse-to-fine: predicted IoU a kept mask needs to skip the points inside it")


def sam_settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The SAM generator's settings from :func:`add_sam_args` flags (a flag left unset is left out, so the
    SAM folder's recommended value applies)."""
    settings = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "min_mask_region_area": args.min_area,
        "crop_n_layers": args.crop_n_layers,
        "prompt_schedule": args.prompt_schedule,
        "skip_iou_thresh": args.skip_iou_thresh,
    }
    return {k: v for k, v in settings.items() if v is not None}


def add_verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of model files against the manifest's checksums "
                        "(the check is cached by size and modification time)")


#: Namespace attributes that name model folders, and the kind of model each holds.
MODEL_ARGS = {"classifier": "classifier", "sam": "sam"}


def model_help(kind: str, what: str) -> str:
    """Help text of a model-folder flag: ``what`` it takes, and the shipped names it also accepts."""
    return f"{what}, or the name of a model shipped in the package: {', '.join(shipped_names(kind))}"


def resolve_models(args: argparse.Namespace) -> None:
    """Replace the model flags given (``--classifier``, ``--sam``) by their folders (:func:`resolve_model_folder`).

    Raises
    ------
    ModelFolderError
        A value that is neither a folder nor a shipped model's name (one line listing the names).
    """
    for attr, kind in MODEL_ARGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            setattr(args, attr, str(resolve_model_folder(kind, value)))
