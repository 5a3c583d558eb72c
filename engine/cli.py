"""The ``eac`` command.

Subcommands import their implementation lazily, so ``eac explain`` never
imports torch and ``eac export`` fails with a clear message when the export
extra is not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .errors import EacError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats3(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R G B), got {text!r}")
    return tuple(float(p) for p in parts)  # type: ignore[return-value]


def _add_session_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ONNX Runtime")
    g.add_argument("--providers", default="auto",
                   help="auto (TensorRT, then CUDA, then CPU), or a comma list such as cuda,cpu")
    g.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: all cores)")
    g.add_argument("--device-id", type=int, default=0, help="GPU index for CUDA/TensorRT")
    g.add_argument("--trt-fp16", action="store_true", help="let TensorRT build fp16 engines")
    g.add_argument("--trt-cache", default=None, help="folder for TensorRT engine caches")


def session_options_from_args(args: argparse.Namespace):
    from .session import SessionOptions

    return SessionOptions(
        providers=args.providers,
        cpu_threads=args.threads,
        cuda_device_id=args.device_id,
        trt_fp16=args.trt_fp16,
        trt_cache_dir=args.trt_cache,
    )


def _add_preprocess_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    g = p.add_argument_group("preprocessing (recorded in the manifest)")
    g.add_argument("--input-size", type=int, default=224 if defaults else None, help="network input side (crop size)")
    g.add_argument("--resize", type=int, default=256 if defaults else None,
                   help="resize the shorter side to this before the centre crop")
    g.add_argument("--mean", type=_floats3, default=IMAGENET_MEAN if defaults else None,
                   help="per-channel mean, 0-1 scale (default ImageNet)")
    g.add_argument("--std", type=_floats3, default=IMAGENET_STD if defaults else None,
                   help="per-channel std, 0-1 scale (default ImageNet)")
    g.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB")
    g.add_argument("--labels", default=None, help="text file with one class name per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eac",
        description="Explain Any Concept with ONNX Runtime: SAM concepts, surrogate Shapley values, no torch at run time.",
    )
    parser.add_argument("--version", action="store_true", help="print the eac version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # --- export ---------------------------------------------------------------------------
    p_export = sub.add_parser("export", help="export SAM or a PyTorch classifier to ONNX (needs the export extra)")
    export_sub = p_export.add_subparsers(dest="what", metavar="WHAT", required=True)

    p = export_sub.add_parser("sam", help="export SAM's image encoder and a batched prompt decoder")
    p.add_argument("--model-type", required=True, choices=("vit_b", "vit_l", "vit_h"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official segment-anything checkpoint (.pth)")
    src.add_argument("--download", action="store_true",
                     help="fetch the official checkpoint into the cache ($EAC_CACHE, default ~/.cache/eac)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, the first with LayerNormalization)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights, LayerNorm and softmax kept in fp32")
    p.add_argument("--skip-validation", action="store_true", help="do not compare with PyTorch (not recommended)")
    p.set_defaults(func=_cmd_export_sam)

    p = export_sub.add_parser("classifier", help="export a PyTorch classifier with logits and features outputs")
    p.add_argument("--out", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="NAME", help="a torchvision model name, e.g. resnet50")
    src.add_argument("--module", metavar="PKG.MOD:FACTORY", help="a factory returning a torch.nn.Module")
    p.add_argument("--weights", default=None, help="with --torchvision: PATH to a state dict, or 'default'")
    p.add_argument("--checkpoint", default=None, help="with --module: a state dict to load")
    p.add_argument("--feature-layer", default=None, help="name of the final linear layer (found automatically)")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--skip-validation", action="store_true")
    _add_preprocess_args(p, defaults=True)
    p.set_defaults(func=_cmd_export_classifier)

    p = sub.add_parser("import-onnx", help="adopt a classifier that already is an ONNX file")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--out", required=True)
    p.add_argument("--features-output", default=None, help="name of a B×D features output, if the graph has one")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--probabilities", action="store_true",
                      help="the model outputs probabilities (softmax applied); detected when neither flag is given")
    kind.add_argument("--logits", action="store_true", help="the model outputs logits (skip the detection)")
    _add_preprocess_args(p, defaults=False)
    p.set_defaults(func=_cmd_import_onnx)

    # --- concepts -------------------------------------------------------------------------
    p = sub.add_parser("concepts", help="propose concepts with the exported SAM and save them")
    p.add_argument("image")
    p.add_argument("--sam", required=True, help="folder written by `eac export sam`")
    p.add_argument("--out", required=True, help="output .npz (masks, scores, timings)")
    p.add_argument("--classifier", default=None, help="classifier folder: masks in its crop frame")
    _add_sam_args(p)
    _add_session_args(p)
    p.set_defaults(func=_cmd_concepts)

    # --- explain --------------------------------------------------------------------------
    p = sub.add_parser("explain", help="explain classifier predictions with concepts")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--classifier", required=True, help="folder from `eac export classifier` or `eac import-onnx`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sam", default=None, help="SAM folder: concepts from SAM (the EAC method)")
    src.add_argument("--concepts", default=None, choices=("superpixels", "slic", "grid"),
                     help="concepts without SAM")
    src.add_argument("--masks", default=None, help="N×H×W .npy/.npz masks or a label image (PNG/.npy)")
    p.add_argument("--method", default="eac",
                   choices=("eac", "eac-faithful", "shapley-exact", "kernelshap", "lime", "loo"))
    p.add_argument("--target", action="append", default=None,
                   help="class index or name to explain (repeatable; default: top-1)")
    p.add_argument("--out", default="eac-out", help="output folder (one sub-folder per image)")
    p.add_argument("--metrics", action="store_true", help="also compute insertion/deletion AUC")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--batch-size", type=int, default=None, help="classifier batch size")
    p.add_argument("--evaluations", type=int, default=None,
                   help="classifier-evaluation budget: eac's maximum (default 256; more buys fidelity at large N), "
                        "kernelshap/lime samples, eac-faithful coalitions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5, help="concepts shown in the overlay and cut-out")
    p.add_argument("--n-segments", type=int, default=None, help="superpixel/grid concept count")
    p.add_argument("--no-progress", action="store_true")
    _add_sam_args(p)
    _add_session_args(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("demo", help="explain a generated scene with the classifier shipped in the package")
    p.add_argument("--out", default="eac-demo", help="output folder")
    p.add_argument("--sam", default=None, help="use this SAM folder for concepts instead of superpixels")
    p.add_argument("--method", default="eac")
    p.add_argument("--seed", type=int, default=0, help="which generated scene")
    p.add_argument("--image", default=None, help="explain this image instead of a generated scene")
    p.add_argument("--json", action="store_true")
    _add_session_args(p)
    p.set_defaults(func=_cmd_demo)

    # --- bench ----------------------------------------------------------------------------
    try:
        from ..bench.cli import register as register_bench
    except ImportError:  # bench is part of the package; absent only in trimmed installs
        register_bench = None
    if register_bench is not None:
        register_bench(sub)
    return parser


def _add_sam_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SAM automatic mask generation (reference defaults)")
    g.add_argument("--points-per-side", type=int, default=32)
    g.add_argument("--points-per-batch", type=int, default=64)
    g.add_argument("--pred-iou-thresh", type=float, default=0.88)
    g.add_argument("--stability-score-thresh", type=float, default=0.95)
    g.add_argument("--box-nms-thresh", type=float, default=0.7)
    g.add_argument("--min-area", type=int, default=0, help="remove masks (and holes) smaller than this, in pixels")
    g.add_argument("--crop-n-layers", type=int, default=0,
                   help="extra layers of overlapping crops (0: the image only, as EAC uses)")


def sam_settings_from_args(args: argparse.Namespace) -> dict:
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "min_mask_region_area": args.min_area,
        "crop_n_layers": args.crop_n_layers,
    }


def _cmd_export_sam(args: argparse.Namespace) -> int:
    from ..export.sam import export_sam

    manifest = export_sam(
        model_type=args.model_type, out=args.out, checkpoint=args.checkpoint, download=args.download,
        opset=args.opset, fp16=args.fp16, validate=not args.skip_validation,
    )
    _print_export_summary(args.out, manifest)
    return 0


def _cmd_export_classifier(args: argparse.Namespace) -> int:
    from ..export.classifier import export_classifier

    manifest = export_classifier(
        out=args.out, torchvision=args.torchvision, weights=args.weights, module=args.module,
        checkpoint=args.checkpoint, feature_layer=args.feature_layer, input_size=args.input_size,
        resize=args.resize, mean=args.mean, std=args.std, channel_order=args.channel_order,
        labels=args.labels, opset=args.opset, fp16=args.fp16, validate=not args.skip_validation,
    )
    _print_export_summary(args.out, manifest)
    return 0


def _cmd_import_onnx(args: argparse.Namespace) -> int:
    from ..export.import_onnx import import_onnx

    manifest = import_onnx(
        model=args.model, out=args.out, features_output=args.features_output,
        probabilities=True if args.probabilities else False if args.logits else None, input_size=args.input_size, resize=args.resize,
        mean=args.mean, std=args.std, channel_order=args.channel_order, labels=args.labels,
    )
    _print_export_summary(args.out, manifest)
    return 0


def _print_export_summary(out: str, manifest: dict) -> None:
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
              f"outputs are {manifest.get('output_kind')}; {manifest.get('num_classes')} classes")
        source = manifest.get("source", {})
        for key in ("output_kind_reason", "rewrites", "assumed", "other_outputs"):
            if source.get(key):
                print(f"{key.replace('_', ' ')}: {json.dumps(source[key], default=str, ensure_ascii=False)}")


def _cmd_concepts(args: argparse.Namespace) -> int:
    from .images import load_image
    from .sam import SamConceptGenerator

    image = load_image(args.image)
    generator = SamConceptGenerator.from_folder(args.sam, session_options=session_options_from_args(args),
                                                **sam_settings_from_args(args))
    if args.classifier:
        from .classifier import Classifier

        classifier = Classifier.from_folder(args.classifier, session_options=session_options_from_args(args))
        crop, frame = classifier.crop(image)
        concepts = generator(crop, frame)
    else:
        concepts = generator.generate(image)
    concepts.save(args.out)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in concepts.timings.items())
    print(f"{len(concepts)} concepts ({concepts.hw[0]}×{concepts.hw[1]}) → {args.out}; {timing}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .run import explain_command

    return explain_command(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_command

    return demo_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .manifest import eac_version

        print(eac_version())
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except EacError as exc:
        print(f"eac: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("eac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
