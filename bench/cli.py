"""``eac bench``: engine vs the faithful PyTorch reference, side by side, in one run."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..engine.shipped import shipped_names
from .harness import DEFAULT_PHOTO, QUICK_LABEL, WORKLOADS

#: What --help says about run times (measured on a 2-core CPU, see README "Performance").
DESCRIPTION = """\
Time the eac engine (ONNX Runtime) against a faithful PyTorch-eager re-implementation
of the reference EAC pipeline, on the same machine, in the same run, and print per-stage
median/min/max seconds, their ratio, classifier evaluations, peak memory, the provider,
the CPU/GPU model, thread counts and versions. --json FILE writes every number.

workloads:
  explain     one skimage photograph (224×224 crop), N concept masks (default 32 SLIC
              regions; SAM's masks when --sam/--sam-checkpoint is given),
              ResNet-50 (bench-built, random weights) or --classifier DIR:
              engine method `eac` vs the reference (2500 evaluations, PIE SGD fit,
              50 000-sample Monte-Carlo per concept).
  concepts    SAM ViT-B (random weights, or --sam-checkpoint / --sam) on the same crop,
              32×32 point grid: engine generator vs segment-anything's own generator,
              plus an untimed mask-agreement check with every candidate kept.
  end-to-end  both stages.
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

how long (measured 2026-11-22 on a 2-core AMD EPYC, one repeat, models already exported):
  explain ≈ 7.5 min (reference ≈ 7.4 min: 2500 ResNet-50 evaluations in PyTorch eager
  ≈ 6 min, PIE fit 15 s, Monte-Carlo values 77 s; engine ≈ 6 s; reference peak RSS
  ≈ 10 GB), concepts ≈ 5 min (reference generator ≈ 3 min, engine ≈ 30 s, agreement
  check ≈ 1.5 min), fidelity ≈ 3 min, end-to-end ≈ 9 min (estimated from the two
  stages), peers ≈ 12 min (4 scenes, --warmup 1, on a loaded machine). The first run
  exports the models into $EAC_CACHE/bench (ResNet-50 ≈ 20 s,
  SAM ViT-B ≈ 2-4 min, scene classifier training: minutes; 13 min on a busy machine).
  --quick runs tiny models with fewer evaluations in about a minute (plus a
  one-time export of the tiny models); its results are labelled QUICK and say
  nothing about product speed.
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
    p.add_argument("--photo", default=DEFAULT_PHOTO, help="skimage.data image (astronaut, chelsea, coffee, ...)")
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


def bench_command(args: argparse.Namespace) -> int:
    """Run one workload, print its table, write JSON when asked."""
    from ..engine.cli.options import resolve_models
    from .workloads import BenchOptions, run_workload

    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 0)
    if args.threads is not None:
        if args.threads < 1:
            from .harness import BenchError

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
        command=_command_line(args),
    )
    report = run_workload(opts)
    print(report.render())
    if args.json:
        path = report.write_json(args.json)
        print(f"wrote {path}")
    return 0
