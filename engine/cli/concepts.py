"""``eac concepts``: propose concepts with an exported SAM and save them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..atomic import creation_blocker, write_file
from ..errors import ConfigError
from .options import (
    MAX_CROP_N_LAYERS,
    MAX_POINTS_PER_SIDE,
    add_sam_args,
    add_session_args,
    add_verify_arg,
    model_help,
    resolve_models,
    runtime_from_args,
    sam_settings_from_args,
)
from .report import plural


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("concepts", help="propose concepts with the exported SAM and save them")
    p.add_argument("image")
    p.add_argument("--sam", required=True, help=model_help("sam", "folder written by `eac export sam`"))
    p.add_argument("--out", required=True, help="output .npz file (masks, scores, timings)")
    p.add_argument("--classifier", default=None,
                   help=model_help("classifier", "classifier folder: masks in its crop frame"))
    add_sam_args(p)
    add_session_args(p)
    add_verify_arg(p)
    p.set_defaults(func=run)


def check_sam_limits(args: argparse.Namespace) -> None:
    """Refuse a point grid whose cost would be unbounded, unless --allow-large."""
    if args.points_per_side > MAX_POINTS_PER_SIDE and not args.allow_large:
        raise ConfigError(f"--points-per-side {args.points_per_side} means {args.points_per_side ** 2} decoder "
                          f"prompts; the limit is {MAX_POINTS_PER_SIDE} (pass --allow-large to go beyond)")
    if args.crop_n_layers > MAX_CROP_N_LAYERS and not args.allow_large:
        runs = sum(4**k for k in range(args.crop_n_layers + 1))
        raise ConfigError(f"--crop-n-layers {args.crop_n_layers} means {runs} SAM runs per image (each crop is "
                          f"encoded and decoded); the limit is {MAX_CROP_N_LAYERS} (pass --allow-large to go beyond)")


def npz_path(out: str) -> Path:
    """The file numpy will write: ``out`` with ``.npz`` appended unless it already ends so."""
    path = Path(out)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def check_npz_destination(out: Path) -> None:
    """ConfigError (one line) unless ``out`` can be written, its missing parent folders created.

    Nothing is written: the nearest existing folder gets a probe entry, removed at once.
    """
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give a file path for the concepts (.npz)")
    blocked = creation_blocker(out.parent)
    if blocked is not None:
        nearest, reason = blocked
        if reason is None:
            raise ConfigError(f"{out}: cannot create its folder, {nearest} is a file")
        raise ConfigError(f"{out}: cannot write there: nothing can be created in {nearest} ({reason})")


def run(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..sam import SamConceptGenerator

    check_sam_limits(args)
    resolve_models(args)
    out = npz_path(args.out)
    check_npz_destination(out)  # before any work
    image = load_image(args.image)
    runtime = runtime_from_args(args)
    generator = SamConceptGenerator.from_folder(args.sam, session_options=runtime, verify=not args.no_verify,
                                                **sam_settings_from_args(args))
    if args.classifier:
        from ..classifier import Classifier

        classifier = Classifier.from_folder(args.classifier, session_options=runtime, verify=not args.no_verify)
        crop, frame = classifier.crop(image)
        concepts = generator(crop, frame)
    else:
        concepts = generator.generate(image)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: numpy would append ".npz" to the temporary name
            concepts.save(handle)

    write_file(out, write)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in concepts.timings.items())
    print(f"{plural(len(concepts), 'concept')} ({concepts.hw[0]}×{concepts.hw[1]}) → {out}; {timing}")
    if not len(concepts):  # a valid, empty file: say what to change, as eac explain does
        from .explain import zero_concepts_hint

        print(f"eac: note: {zero_concepts_hint(args)}", file=sys.stderr)
    return 0
