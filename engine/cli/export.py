"""``eac export sam|classifier`` and ``eac import-onnx``: the exporters, imported lazily."""

from __future__ import annotations

import argparse
import json

from ..distribution import export_hint, install_hint
from ..errors import EacError
from .options import add_preprocess_args, positive_int
from .report import plural

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "efficientvit_l0", "efficientvit_l1", "efficientvit_l2",
                   "efficientvit_xl0", "efficientvit_xl1", "scene")


class MissingExtraError(EacError):
    """A command needs an optional extra that is not installed."""


def _exporters(module: str):
    """Import ``eac.export.<module>``; without torch, one line saying which extra to install."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise MissingExtraError(f"this command needs PyTorch (not installed); install the export extra: "
                                f"{export_hint()}")
    return importlib.import_module(f"eac.export.{module}")


def register(sub: argparse._SubParsersAction) -> None:
    p_export = sub.add_parser("export", help="export SAM or a PyTorch classifier to ONNX (needs the export extra), "
                                             "or an int8 copy of a classifier folder")
    export_sub = p_export.add_subparsers(dest="what", metavar="WHAT", required=True)

    p = export_sub.add_parser("sam", help="export SAM's image encoder and a batched prompt decoder")
    p.add_argument("--model-type", required=True, choices=SAM_MODEL_TYPES,
                   help="segment-anything ViT-B/L/H, EfficientViT-SAM L0-XL1 (needs: pip install --no-deps "
                        "efficientsam==1.0.0), or scene: the small SAM trained on generated scenes "
                        "(bench/scene_sam/checkpoint.pth, python -m eac.bench.train_sam)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official checkpoint (segment-anything .pth, EfficientViT-SAM .pt)")
    src.add_argument("--download", action="store_true",
                     help="fetch the official checkpoint into the cache ($EAC_CACHE, default ~/.cache/eac)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX opset (default 17, the first with LayerNormalization)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights, LayerNorm and softmax kept in fp32")
    p.add_argument("--decoder-precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="precision of the per-prompt decoder (default fp32); fp16/int8 are measured against the "
                        "fp32 decoder at export (logit difference, mask IoU, time) and the numbers are printed and "
                        "kept in the manifest")
    p.add_argument("--skip-validation", action="store_true", help="do not compare with PyTorch (not recommended)")
    p.set_defaults(func=export_sam)

    p = export_sub.add_parser("classifier", help="export a PyTorch classifier with logits and features outputs")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="NAME",
                     help="a torchvision model name, e.g. resnet50 (needs torchvision built for your torch)")
    src.add_argument("--module", metavar="PKG.MOD:FACTORY",
                     help="a factory returning a torch.nn.Module (its output: logits, or an object with .logits)")
    src.add_argument("--hf", metavar="NAME_OR_PATH",
                     help="a Hugging Face transformers image classifier: a local folder (save_pretrained) or a hub "
                          f"id; preprocessing from its preprocessor_config.json ({install_hint('export', 'hf')})")
    src.add_argument("--timm", metavar="NAME",
                     help="a timm model name; preprocessing from timm's data configuration (pip install timm; "
                          "timm needs torchvision)")
    p.add_argument("--weights", default=None,
                   help="with --torchvision or --timm: PATH to a state dict, or 'default' (the library's "
                        "pretrained weights, downloaded by it)")
    p.add_argument("--checkpoint", default=None, help="with --module: a state dict to load")
    p.add_argument("--feature-layer", default=None, help="name of the final linear layer (found automatically)")
    p.add_argument("--feature-map-layer", default=None,
                   help="module whose output is the feature map before global pooling (found automatically; "
                        "used by --method cam/secam)")
    p.add_argument("--opset", type=positive_int, default=None)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--skip-validation", action="store_true")
    add_preprocess_args(p, defaults=True)
    p.set_defaults(func=export_classifier)

    p = export_sub.add_parser(
        "int8", help="an int8 copy of a classifier folder (an option: its agreement with fp32 is checked and printed)",
        description="ONNX Runtime static quantisation of the classifier's convolutions (per-channel 7-bit weights, "
                    "safe on AVX2 CPUs without VNNI), calibrated on masked images of the given images (superpixel "
                    "concepts, as eac's evaluations look). Half the images calibrate; the others are explained by "
                    "the fp32 and the int8 folder and their agreement (Spearman, top-1/3/5) is printed and kept in "
                    "the manifest. Needs onnx and onnxruntime only. Never use it without reading the agreement.")
    p.add_argument("images", nargs="+", help="calibration / check images (files or folders)")
    p.add_argument("--classifier", required=True, help="the fp32 classifier folder")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--per-image", type=positive_int, default=16, help="masked calibration images per image")
    p.add_argument("--n-segments", type=positive_int, default=32, help="superpixel concepts per image")
    p.set_defaults(func=export_int8)

    p = sub.add_parser("import-onnx", help="adopt a classifier that already is an ONNX file")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--features-output", default=None, help="name of a B×D features tensor, if the graph has one")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--probabilities", action="store_true",
                      help="the model outputs probabilities (softmax applied); detected when neither flag is given")
    kind.add_argument("--logits", action="store_true", help="the model outputs logits (skip the detection)")
    add_preprocess_args(p, defaults=False)
    p.set_defaults(func=import_onnx)


def export_sam(args: argparse.Namespace) -> int:
    manifest = _exporters("sam").export_sam(
        model_type=args.model_type, out=args.out, checkpoint=args.checkpoint, download=args.download,
        opset=args.opset, fp16=args.fp16, validate=not args.skip_validation,
        decoder_precision=args.decoder_precision,
    )
    print_export_summary(args.out, manifest)
    check = (manifest.get("validation") or {}).get("decoder_precision")
    if check:
        timing = check["decoder_ms_per_prompt"]
        print(f"{check['precision']} decoder vs fp32 (same weights, {check['candidates']} candidates): "
              f"max |logit diff| {check['max_abs_logit_diff']:.3g} (logits in {check['logit_range'][0]:.3g}.."
              f"{check['logit_range'][1]:.3g}), mask IoU per candidate mean "
              f"{check['mask_iou_same_candidate']['mean']:.3f} / min {check['mask_iou_same_candidate']['min']:.3f}, "
              f"{timing['fp32']:.1f} → {timing[check['precision']]:.1f} ms per prompt on this CPU")
    return 0


def export_classifier(args: argparse.Namespace) -> int:
    manifest = _exporters("classifier").export_classifier(
        out=args.out, torchvision=args.torchvision, weights=args.weights, module=args.module,
        checkpoint=args.checkpoint, feature_layer=args.feature_layer, input_size=args.input_size,
        resize=args.resize, mean=args.mean, std=args.std, channel_order=args.channel_order,
        labels=args.labels, opset=args.opset, fp16=args.fp16, validate=not args.skip_validation,
        feature_map_layer=args.feature_map_layer, hf=args.hf, timm=args.timm,
    )
    print_export_summary(args.out, manifest)
    return 0


def export_int8(args: argparse.Namespace) -> int:
    from ...export.quantize import quantize_on_images  # needs onnx and onnxruntime only
    from ..images import list_images

    manifest = quantize_on_images(args.classifier, args.out, list_images(args.images), per_image=args.per_image,
                                  concepts=args.n_segments, log=print)
    print_export_summary(args.out, {**manifest, "validation": {}})
    agreement = manifest["validation"]["int8"]["agreement"]
    where = "held-out images" if agreement["held_out"] else "the calibration image itself (optimistic)"
    print(f"int8 vs fp32 explanations on {agreement['images']} {where}:")
    for row in agreement["per_image"]:
        print(f"  Spearman {row['spearman']:.3f}, top-1/3/5 overlap {row['top1']:.2f}/{row['top3']:.2f}/"
              f"{row['top5']:.2f}, max |Δ value| {row['max_abs_value_difference']:.4f} (largest |value| "
              f"{row['value_scale']:.4f}), {row['seconds_fp32']:.2f} s fp32 → {row['seconds_int8']:.2f} s int8")
    return 0


def import_onnx(args: argparse.Namespace) -> int:
    from ...export.import_onnx import import_onnx as adopt  # needs onnx and onnxruntime only

    probabilities = True if args.probabilities else False if args.logits else None
    manifest = adopt(
        model=args.model, out=args.out, features_output=args.features_output, probabilities=probabilities,
        input_size=args.input_size, resize=args.resize, mean=args.mean, std=args.std,
        channel_order=args.channel_order, labels=args.labels,
    )
    print_export_summary(args.out, manifest)
    return 0


def print_export_summary(out: str, manifest: dict) -> None:
    """What an export wrote: files, validation, and for classifiers the input contract and rewrites."""
    files = ", ".join(f"{e['path']} ({e['bytes'] / 1e6:.1f} MB)" for e in manifest.get("files", {}).values())
    print(f"wrote {out}: {files}")
    validation = manifest.get("validation")
    if validation:
        print(f"validation: {json.dumps(validation)}")
    if manifest.get("kind") == "classifier":
        inp = manifest.get("input", {})
        batch = inp.get("batch")
        print(f"input {inp.get('name')} {inp.get('layout', 'NCHW')} {inp.get('height')}×{inp.get('width')}, "
              f"batch {'dynamic' if batch is None else f'fixed at {batch} (the engine loops)'}; "
              f"outputs are {manifest.get('output_kind')}; {plural(manifest.get('num_classes'), 'class')}")
        source = manifest.get("source", {})
        outputs = manifest.get("outputs", {})
        print(f"features: {outputs.get('features') or 'none'}; feature map: {outputs.get('feature_map') or 'none'}; "
              f"head: {'head.npz' if 'head' in manifest.get('files', {}) else 'none'}")
        for key in ("output_kind_reason", "rewrites", "assumed", "head", "feature_map", "other_outputs"):
            if source.get(key):
                print(f"{key.replace('_', ' ')}: {json.dumps(source[key], default=str, ensure_ascii=False)}")
