"""What ONNX Runtime's CPU options buy on eac's evaluations: a re-runnable measurement.

The evaluations are almost all of the explain stage. This study runs the bench classifiers on
the explain workload's own masked images (one image, N = 32 SLIC concepts, random coalitions,
composed as the evaluator composes them) under each session configuration and reports images
per second (wall) and CPU seconds per image, in rounds in which every configuration runs once,
in order, so a change of the machine's load falls on all of them alike. Every measurement
records the machine's load (:mod:`eac.bench.load`); a study with a reading above the limit is
printed as NOT A RESULT.

Configurations (each changes one thing from ONNX Runtime's defaults, which eac uses):

* ``default`` — intra-op threads = cores, spinning on, memory arena on, graph level ``all``
  (which includes the CPU's blocked NCHWc layout for convolutions), batch 32;
* ``threads=1`` — one intra-op thread;
* ``no spinning`` — idle intra-op threads sleep instead of spin-waiting;
* ``inter-op 2`` — ONNX Runtime's parallel executor with two inter-op threads;
* ``no arena`` — no CPU memory arena;
* ``graph basic`` / ``graph extended`` / ``graph layout`` — lower optimisation levels
  (``extended`` has no layout transformation: plain NCHW convolutions);
* ``denormals as zero`` — ``session.set_denormal_as_zero``;
* ``batch 8`` / ``batch 16`` / ``batch 64`` — the evaluator's batch size;
* ``int8`` — the classifier statically quantised (:mod:`eac.export.quantize`), calibrated on
  other masked images of the same crop (the agreement of its explanations is the explain bench's
  ``--int8`` row).

    python -m eac.bench.study_ort_options                       # ResNet-50 and MobileNetV3-Large
    python -m eac.bench.study_ort_options --models resnet50 --rounds 5 --json out.json
    python -m eac.bench.study_ort_options --quick               # tiny models: checks it runs

Options that help are set through :class:`eac.engine.session.SessionOptions` (``eac bench
--ort KEY=VALUE`` for the workloads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .harness import QUICK_LABEL, format_table, machine_info
from .load import LoadMonitor, LoadRecord, load_verdict

#: Masked images per measurement (full runs; QUICK runs use QUICK_IMAGES).
IMAGES = 128
QUICK_IMAGES = 16
#: Rounds (every configuration once per round); the median over rounds is reported.
ROUNDS = 3
#: Concepts of the masked images (the explain workload's N).
N_CONCEPTS = 32
QUICK_N_CONCEPTS = 12
#: Batch of the default configuration (eac.engine.evaluator.DEFAULT_BATCH_SIZE).
DEFAULT_BATCH = 32
#: Seeds of the coalitions timed and of the int8 calibration coalitions (different draws).
TIMED_SEED = 0
CALIBRATION_SEED = 1
#: Models of a full study, and of a QUICK one.
FULL_MODELS = ("resnet50", "mobilenet_v3_large")
QUICK_MODELS = ("tiny", "tiny_mobile")
DEFAULT_ROW = "default"


@dataclass(frozen=True)
class Config:
    """One row: session settings (fields of SessionOptions), batch size, int8 or not."""

    name: str
    session: dict[str, Any] = field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    int8: bool = False


CONFIGS = (
    Config(DEFAULT_ROW),
    Config("threads=1", {"cpu_threads": 1}),
    Config("no spinning", {"allow_spinning": False}),
    Config("inter-op 2 (parallel executor)", {"inter_op_threads": 2}),
    Config("no memory arena", {"cpu_mem_arena": False}),
    Config("graph basic", {"graph_optimization": "basic"}),
    Config("graph extended (no NCHWc layout)", {"graph_optimization": "extended"}),
    Config("graph layout", {"graph_optimization": "layout"}),
    Config("denormals as zero", {"config_entries": {"session.set_denormal_as_zero": "1"}}),
    Config("batch 8", batch=8),
    Config("batch 16", batch=16),
    Config("batch 64", batch=64),
    Config("int8 (static, per-channel, 7-bit weights)", int8=True),
)


@dataclass
class Measurement:
    """Per configuration: wall seconds, CPU seconds and load record of each round."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    load: list[LoadRecord] = field(default_factory=list)


def masked_inputs(classifier: Any, n_concepts: int, count: int, seed: int) -> np.ndarray:
    """``count`` normalised masked images of the explain workload's photograph (count×3×h×w)."""
    from ..export.quantize import masked_calibration
    from .workloads import crop_for, exact_regions, load_photo

    crop = crop_for(load_photo(), classifier.input_hw, models.RESIZE)
    return masked_calibration(classifier, crop, exact_regions(crop, n_concepts), count, seed)


def _timed(run: Callable[[], None]) -> tuple[float, float, LoadRecord]:
    with LoadMonitor() as monitor:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall, cpu, monitor.record


def study_model(arch: str, configs: tuple[Config, ...], images: int, rounds: int, n_concepts: int,
                workdir: str, log: Callable[[str], None]) -> dict[str, Measurement]:
    """Every configuration on bench classifier ``arch``, ``rounds`` alternating rounds."""
    from ..engine.classifier import Classifier
    from ..engine.session import SessionOptions
    from ..export.quantize import quantize_classifier

    folder = models.export_bench_classifier(arch)
    probe = Classifier.from_folder(folder)
    x = masked_inputs(probe, n_concepts, images, TIMED_SEED)
    int8_folder = None
    if any(c.int8 for c in configs):
        log(f"{arch}: quantising to int8 (calibration: other masked images of the same crop)...")
        int8_folder = Path(workdir) / f"{arch}-int8"
        quantize_classifier(folder, int8_folder, masked_inputs(probe, n_concepts, images, CALIBRATION_SEED),
                            calibration_source=f"{images} masked images, seed {CALIBRATION_SEED}")
    classifiers = {}
    for config in configs:
        source = int8_folder if config.int8 else folder
        clf = Classifier.from_folder(source, session_options=SessionOptions(**config.session))
        clf.run(x[: config.batch], features=False)  # warm: first-run allocations and kernel selection
        classifiers[config.name] = clf
    results = {c.name: Measurement() for c in configs}
    for r in range(rounds):
        for config in configs:
            log(f"{arch}: round {r + 1}/{rounds}: {config.name}")
            clf = classifiers[config.name]

            def run(clf=clf, batch=config.batch) -> None:
                for start in range(0, len(x), batch):
                    clf.run(x[start : start + batch], features=False)

            wall, cpu, load = _timed(run)
            m = results[config.name]
            m.wall.append(wall)
            m.cpu.append(cpu)
            m.load.append(load)
    return results


def summarise(results: dict[str, dict[str, Measurement]], images: int) -> list[dict[str, Any]]:
    """One row per model and configuration: median images/s, CPU s per image, ratio to the default."""
    rows = []
    for arch, per in results.items():
        base = statistics.median(per[DEFAULT_ROW].wall) if DEFAULT_ROW in per else float("nan")
        for name, m in per.items():
            wall = statistics.median(m.wall)
            rows.append({"model": arch, "config": name, "images_per_s": images / wall,
                         "cpu_s_per_image": statistics.median(m.cpu) / images,
                         "speed_vs_default": base / wall, "wall_s": m.wall, "cpu_s": m.cpu,
                         "load_max_per_cpu": max(r.max_per_cpu for r in m.load)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, choices=tuple(models.CLASSIFIERS),
                        help=f"bench classifiers (default {' '.join(FULL_MODELS)})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds (median over them)")
    parser.add_argument("--images", type=int, default=None, help=f"masked images per measurement (default {IMAGES})")
    parser.add_argument("--configs", nargs="+", default=None, help="only these configuration names")
    parser.add_argument("--quick", action="store_true", help=f"tiny models, few images; labelled {QUICK_LABEL}")
    parser.add_argument("--json", default=None, help="write every number to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    archs = tuple(args.models or (QUICK_MODELS if args.quick else FULL_MODELS))
    images = args.images or (QUICK_IMAGES if args.quick else IMAGES)
    n_concepts = QUICK_N_CONCEPTS if args.quick else N_CONCEPTS
    from ..engine.session import GRAPH_OPTIMIZATION_LEVELS

    offered = tuple(c for c in CONFIGS if c.session.get("graph_optimization", "all") in GRAPH_OPTIMIZATION_LEVELS)
    configs = offered if args.configs is None else tuple(c for c in offered if c.name in args.configs)
    if args.configs is not None and (not configs or DEFAULT_ROW not in args.configs):
        parser.error(f"--configs must include {DEFAULT_ROW!r} (every ratio divides by it); "
                     f"names: {', '.join(c.name for c in CONFIGS)}")
    if args.rounds < 1 or images < 1:
        parser.error("--rounds and --images must be at least 1")

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[study_ort_options{' ' + QUICK_LABEL if args.quick else ''}] {line}", flush=True)

    results: dict[str, dict[str, Measurement]] = {}
    with LoadMonitor() as whole, tempfile.TemporaryDirectory(prefix="eac-ort-study-") as workdir:
        for arch in archs:
            results[arch] = study_model(arch, configs, images, args.rounds, n_concepts, workdir, log)
    rows = summarise(results, images)
    verdict = load_verdict({f"{r['model']} {r['config']}": results[r["model"]][r["config"]].load for r in rows}
                           | {"whole study": [whole.record]})
    title = (f"ONNX Runtime CPU options: {images} masked images per measurement (N = {n_concepts} concepts), "
             f"median of {args.rounds} alternating rounds" + (f" [{QUICK_LABEL}]" if args.quick else ""))
    header = ["model", "configuration", "images/s", "CPU s / image", "speed-up", "max load per CPU"]
    table = [[r["model"], r["config"], f"{r['images_per_s']:.1f}", f"{r['cpu_s_per_image']:.4f}",
              f"{r['speed_vs_default']:.2f}×" if verdict.result else "withheld (load)", f"{r['load_max_per_cpu']:.2f}"]
             for r in rows]
    print(title)
    print("NOT A RESULT: " + verdict.reason if not verdict.result else
          f"load: a result (highest {verdict.max_per_cpu:.2f} per CPU, limit {verdict.limit_per_cpu:g})")
    print(format_table(header, table))
    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs); onnxruntime "
          f"{machine['versions']['onnxruntime']}; {machine['date_utc']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "images": images, "rounds": args.rounds,
                                               "n_concepts": n_concepts, "verdict": verdict.to_dict(),
                                               "rows": rows, "machine": machine}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
