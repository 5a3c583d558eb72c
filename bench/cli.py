"""``eac bench``: engine vs the faithful PyTorch reference, side by side, in one run."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..engine.shipped import shipped_names
from .harness import DEFAULT_PHOTO, QUICK_LABEL, BenchError
from .load import LOAD_LIMIT_PER_CORE
from .registry import WORKLOADS

#: ``--ort`` keys and how their values are read (fields of eac.engine.session.SessionOptions);
#: any key starting with ``session.`` is passed to ONNX Runtime as a session configuration entry.
ORT_KEYS = {
    "inter_op_threads": int,
    "allow_spinning": "bool",
    "cpu_mem_arena": "bool",
    "graph_optimization": str,
}
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")

#: What --help says (run times measured on a 2-core CPU, see README "Performance").
DESCRIPTION = f"""\
Time the eac engine (ONNX Runtime) against a faithful PyTorch-eager re-implementation
of the reference EAC pipeline, on the same machine, in the same run, and print per-stage
median/min/max seconds, their ratio, classifier evaluations, peak memory, the provider,
the CPU/GPU model, thread counts and versions. --json FILE writes every number.

honest numbers: every timed run records the 1-minute load average before, during
(sampled each second) and after it, and the CPU time the process got; with --repeat > 1
the sides alternate (engine, reference, engine, ...). A run whose load average went above
{LOAD_LIMIT_PER_CORE:g} per logical CPU is NOT A RESULT: no ratio is printed, and the JSON says why
(verdict) and keeps the ratios apart (ratios_not_a_result). Run benchmarks alone.

workloads:
  explain     one image (224×224 crop), N concept masks (default 32 SLIC regions; SAM's
              masks when --sam/--sam-checkpoint is given), a ResNet-50-sized classifier:
              --weights scenes (default): the bench ResNet-50's random convolutions
              (torchvision's zero_init_residual initialisation) with its final layer
              fitted on generated scenes (is the red object visible?), so its prediction
              depends on the image and eac can stop where the ranking is resolved; the
              image is then a generated scene. --weights random: all
              weights random, the worst case (flat values, eac runs to its cap). Or
              --classifier DIR. Engine method `eac` vs the reference (2500 evaluations,
              PIE SGD fit, 50 000-sample Monte-Carlo per concept). --int8 adds the engine
              on an int8 copy of the classifier (static quantisation calibrated on the
              image's own masked batches) with its agreement with the fp32 explanation.
  concepts    SAM ViT-B (random weights, or --sam-checkpoint / --sam) on the same crop,
              32×32 point grid: engine generator vs segment-anything's own generator,
              plus EfficientViT-SAM-L0 rows and an untimed mask-agreement check.
  end-to-end  one image from file to saved explanation (load, concepts, evaluations, fit,
              values, writing the folder), per stage, for EfficientViT-SAM-L0 +
              ResNet-50-sized, EfficientViT-SAM-L0 + MobileNetV3-Large (0.22 GMAC), SAM
              ViT-B + ResNet-50-sized, and the reference pipeline (segment-anything's
              generator + reference EAC) in the same run. Random-weight SAMs run with
              the IoU/stability filters off and the 32 highest-scored masks are explained.
  fidelity    the small trained scene classifier, scenes with ≤ 12 concepts: Spearman
              vs exact Shapley values, top-1/top-3 agreement, insertion/deletion AUC and
              evaluations for eac, eac-faithful, kernelshap, lime and the reference.
  peers       eac against the libraries you would use instead, in one process on the
              same trained scene classifier (PyTorch for the libraries, its ONNX export
              for eac), the same scenes (N <= 12 concepts) and the same concepts: captum
              (ShapleyValueSampling, KernelShap, Lime, FeatureAblation, and
              IntegratedGradients, Saliency, NoiseTunnel summed over the concepts), shap
              (KernelExplainer, PermutationExplainer), lime (LimeImageExplainer), shapiq
              (its own Shapley approximator) and eac's methods (secam/cam when the model
              folder has a feature map); each at its defaults and at eac's evaluation
              budget: seconds per image, evaluations, peak memory, Spearman / top-3 vs
              exact Shapley values, insertion/deletion AUC, time over eac's. Needs the
              peer libraries: the bench extra (a missing one is skipped, named).
  serve       `eac serve` (the serve extra) started here on a free loopback port,
              with and without cross-request batching, driven by 1, 4 and 16 concurrent
              clients (48 requests each; generated scenes, demo classifier or
              --classifier, a 4×4 grid or --n-concepts, eac at its default budget):
              p50/p95/p99 latency, requests/s, classifier batch fill, requests per
              batch, server CPU seconds per request, errors; batching's gain.
  sanity      the sanity checks of Adebayo et al. (2018) for every registered method
              (and captum's gradient methods when installed) on the trained scene
              classifier and the fidelity scenes: its layers re-initialised cascading
              from the head down and one at a time, and the same network trained on
              permuted labels; Spearman of the concept values with the original's and
              pass/fail per method (`eac sanity` runs the first check on your image).

ONNX Runtime CPU settings: --ort KEY=VALUE (inter_op_threads, allow_spinning,
cpu_mem_arena, graph_optimization, session.* entries); python -m
eac.bench.study_ort_options measures what each buys on this machine.

how long (2-core AMD EPYC, one repeat, models already exported; alone on the machine
2026-12-03, a day this VM ran about twice as slow as 2026-11-22): explain --int8 ≈ 11 min
(the reference ≈ 9 min of it), concepts ≈ 10.5 min (segment-anything ≈ 3.5 min of it),
end-to-end ≈ 17 min (the reference ≈ 13 min of it), serve ≈ 2.5 min, peers --warmup 1 ≈ 4.5 min;
fidelity ≈ 3 min (measured under load 2026-11-22). The first run exports the models into $EAC_CACHE/bench (ResNet-50
≈ 20 s, SAM ViT-B ≈ 2-4 min, EfficientViT-SAM-L0 ≈ 1 min, fitting a scene head: ResNet-50
features of 1200 scenes ≈ 1 min; the scene classifier's training: minutes).
--quick runs tiny models with fewer evaluations in about a minute (plus a one-time
export of the tiny models); its results are labelled QUICK and say nothing about
product speed.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eac bench`` to the ``eac`` command's subparsers.

    Registration runs on every ``eac`` command, so it must stay light: it may not
    import torch (or anything that does) — :mod:`.workloads` is imported only when
    a benchmark runs.
    """

    p = subparsers.add_parser(
        "bench", help="benchmark the engine against the faithful PyTorch reference",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", choices=WORKLOADS, help="what to measure")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per side (median/min/max over them; default 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs per side before timing (default 0; 1 with --quick)")
    p.add_argument("--providers", default="auto",
                   help="ONNX Runtime providers for the engine: auto, or a comma list such as cuda,cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads of both sides, ONNX Runtime and torch (default: all cores)")
    p.add_argument("--json", metavar="FILE", default=None, help="write every number to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced run (tiny models, fewer evaluations, smaller grid), labelled {QUICK_LABEL}")
    p.add_argument("--classifier", metavar="DIR", default=None,
                   help="classifier folder (explain/end-to-end/fidelity), or a shipped one's name "
                        f"({', '.join(shipped_names('classifier'))}); the reference rebuilds its PyTorch model "
                        "from the manifest's source (--module + --checkpoint, or a torchvision resnet50 state dict)")
    p.add_argument("--sam", metavar="DIR", default=None,
                   help=f"SAM folder for the engine, or a shipped one's name ({', '.join(shipped_names('sam'))}); "
                        "needs its checkpoint")
    p.add_argument("--sam-checkpoint", metavar="PATH", default=None,
                   help="segment-anything ViT-B checkpoint: both sides use it (exported once for the engine)")
    p.add_argument("--n-concepts", type=int, default=None, help="concept masks of the explain workload (default 32)")
    p.add_argument("--photo", default=None,
                   help="skimage.data image (astronaut, chelsea, coffee, ...) or 'scene' (a generated scene); "
                        f"default: a scene for --weights scenes, {DEFAULT_PHOTO} otherwise")
    p.add_argument("--weights", choices=("scenes", "random"), default="scenes",
                   help="explain/end-to-end classifiers: 'scenes' (random trunk, final layer fitted on generated "
                        "scenes: the prediction depends on the image; default) or 'random' (the worst case: "
                        "nothing resolves, eac runs to its cap)")
    p.add_argument("--int8", action="store_true",
                   help="explain: also run the engine on an int8 copy of the classifier (ONNX Runtime static "
                        "quantisation calibrated on the image's own masked batches) and report its agreement "
                        "with the fp32 explanation (Spearman, top-k); never the default")
    p.add_argument("--ort", action="append", default=[], metavar="KEY=VALUE",
                   help="an ONNX Runtime CPU setting of the engine's sessions (repeatable): "
                        + ", ".join(ORT_KEYS) + ", or any session.* configuration entry "
                        "(python -m eac.bench.study_ort_options measures them)")
    p.add_argument("--seed", type=int, default=0, help="seed of both sides' random draws")
    p.add_argument("--no-agreement", action="store_true", help="concepts: skip the untimed mask-agreement check")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=bench_command)
    return p


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (``eac bench ...``), or rebuilt from the workload when called in-process."""
    argv = sys.argv[1:]
    if "bench" in argv:
        return "eac " + " ".join(shlex.quote(a) for a in argv[argv.index("bench"):])
    return f"eac bench {args.workload}" + (" --quick" if args.quick else "")


def parse_ort_settings(items: list[str]) -> dict:
    """``--ort KEY=VALUE`` items → keyword arguments of :class:`eac.engine.session.SessionOptions`."""
    out: dict = {}
    entries: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise BenchError(f"--ort {item!r}: expected KEY=VALUE")
        if key.startswith("session."):
            entries[key] = value
            continue
        kind = ORT_KEYS.get(key)
        if kind is None:
            raise BenchError(f"--ort {key}: unknown setting; choose from {', '.join(ORT_KEYS)} or a session.* entry")
        if kind == "bool":
            if value.lower() not in _TRUE + _FALSE:
                raise BenchError(f"--ort {key}={value}: expected 1/0, true/false or on/off")
            out[key] = value.lower() in _TRUE
        elif kind is int:
            try:
                out[key] = int(value)
            except ValueError:
                raise BenchError(f"--ort {key}={value}: expected an integer") from None
        else:
            out[key] = value
    if entries:
        out["config_entries"] = entries
    return out


def bench_command(args: argparse.Namespace) -> int:
    """Run one workload, print its table, write JSON when asked."""
    from ..engine.cli.options import resolve_models
    from .options import BenchOptions
    from .registry import run_workload

    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 0)
    ort_settings = parse_ort_settings(args.ort)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be at least 1 (got {args.threads})")
        import torch

        torch.set_num_threads(args.threads)  # the reference gets the same number of threads as the engine

    def progress(line: str) -> None:
        print(f"[bench{' ' + QUICK_LABEL if args.quick else ''}] {line}", file=sys.stderr, flush=True)

    resolve_models(args)  # --classifier / --sam: a folder, or a shipped model's name (demo)
    opts = BenchOptions(
        workload=args.workload, repeat=args.repeat, warmup=warmup, providers=args.providers,
        threads=args.threads, quick=args.quick, classifier=args.classifier, sam=args.sam,
        sam_checkpoint=args.sam_checkpoint, n_concepts=args.n_concepts, photo=args.photo, seed=args.seed,
        agreement=not args.no_agreement, progress=None if args.quiet else progress,
        command=_command_line(args), weights=args.weights, int8=args.int8, ort=ort_settings,
    )
    report = run_workload(opts)
    print(report.render())
    if args.json:
        path = report.write_json(args.json)
        print(f"wrote {path}")
    return 0
