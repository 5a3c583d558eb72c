"""``eac serve``: explanations per request over HTTP (:mod:`eac.engine.serve`), here or on Ray Serve.

Needs the ``serve`` extra (Starlette, uvicorn, prometheus-client,
python-multipart); without it the command says so in one line. Settings are
checked before anything is loaded (a non-loopback ``--host`` needs
``--api-key`` or ``--insecure``; model folders, method options and providers
must be usable); the models then load while the server already answers
``/healthz`` (``/readyz`` turns 200 when they are loaded). SIGTERM or Ctrl-C
stops it after the requests in flight (exit 0); a second Ctrl-C stops it at
once, answering those 503 (exit 130, interrupted).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ..batching import DEFAULT_BATCH_SIZE
from ..concepts import DEFAULT_MAX_CONCEPTS
from ..errors import ConfigError
from ..methods import method_names
from .concepts import check_sam_limits
from .explain import CONCEPT_KINDS, method_options
from .options import (
    add_sam_args,
    add_session_args,
    add_verify_arg,
    float_between,
    model_help,
    non_negative_int,
    positive_int,
    resolve_models,
    runtime_from_args,
    sam_settings_from_args,
)

#: Packages of the serve extra (import names).
SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client", "python_multipart")
#: Import name of ONNX Runtime (the cpu extra's onnxruntime and the gpu extra's onnxruntime-gpu alike).
ONNXRUNTIME_MODULE = "onnxruntime"
#: Environment variable read for the API key when --api-key is not given (keeps it out of `ps`).
API_KEY_VARIABLE = "EAC_API_KEY"
MIB = 1024 * 1024
MS = 1000.0
#: Longest --timeout and --max-wait-ms accepted (a day; a batch wait of a second).
MAX_TIMEOUT_S = 86_400.0
MAX_WAIT_MS = 1000.0


def register(sub: argparse._SubParsersAction) -> None:
    from ..serve.settings import (
        DEFAULT_CONCURRENCY,
        DEFAULT_HOST,
        DEFAULT_MAX_EVALUATIONS,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_UPLOAD_BYTES,
        DEFAULT_MAX_WAIT_S,
        DEFAULT_PORT,
        DEFAULT_RESULTS,
        DEFAULT_TIMEOUT_S,
        DEFAULT_UPLOAD_TIMEOUT_S,
    )

    p = sub.add_parser("serve", help="serve explanations over HTTP (the serve extra)",
                       description="Serve explanations per request over HTTP: POST /v1/explanations, a web page at /, "
                                   "/metrics, /healthz, /readyz. Concurrent requests share classifier batches.")
    p.add_argument("--classifier", required=True,
                   help=model_help("classifier", "folder from `eac export classifier` or `eac import-onnx`"))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sam", default=None, help=model_help("sam", "SAM folder: concepts from SAM (the EAC method)"))
    src.add_argument("--concepts", default=None, choices=CONCEPT_KINDS,
                     help="concepts without SAM (default superpixels)")
    p.add_argument("--n-segments", type=positive_int, default=None, help="superpixel/grid concept count")
    p.add_argument("--method", default="eac", choices=method_names(), help="default method (a request may ask another)")
    p.add_argument("--evaluations", type=positive_int, default=None, help="default evaluation budget of the method")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default seed (a request may give its own)")
    p.add_argument("--metrics", action="store_true", help="also compute insertion/deletion AUC for every request")
    g = p.add_argument_group("listening (safe by default)")
    g.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; any other needs "
                        "--api-key or --insecure)")
    g.add_argument("--port", type=non_negative_int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    g.add_argument("--api-key", default=None,
                   help=f"bearer token required on /v1 and /metrics (default: ${API_KEY_VARIABLE} when set)")
    g.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    g.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable; default: no CORS)")
    g = p.add_argument_group("load and limits")
    g.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
                   help="requests explained at once (default: %(default)s)")
    g.add_argument("--max-queue", type=non_negative_int, default=DEFAULT_MAX_QUEUE,
                   help="admitted requests allowed to wait beyond those; more get 503 + Retry-After "
                        "(default: %(default)s)")
    g.add_argument("--timeout", type=float_between(1e-3, MAX_TIMEOUT_S), default=DEFAULT_TIMEOUT_S,
                   help="seconds from admission to answer; later: 504 and the work is dropped "
                        "(default: %(default)g)")
    g.add_argument("--upload-timeout", type=float_between(1e-3, MAX_TIMEOUT_S), default=DEFAULT_UPLOAD_TIMEOUT_S,
                   help="seconds a client has to send its whole request body; later: 408 (default: %(default)g)")
    g.add_argument("--max-upload-mb", type=float_between(1e-3, 1e6), default=DEFAULT_MAX_UPLOAD_BYTES / MIB,
                   help="largest request body in MiB (413 above; default: %(default)g)")
    g.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="largest decoded image, in pixels (default: %(default)s)")
    g.add_argument("--max-evaluations", type=positive_int, default=DEFAULT_MAX_EVALUATIONS,
                   help="largest evaluation budget a request may ask for (default: %(default)s)")
    g.add_argument("--max-concepts", type=positive_int, default=DEFAULT_MAX_CONCEPTS,
                   help="refuse images with more concepts than this (default: %(default)s)")
    g.add_argument("--results", type=positive_int, default=DEFAULT_RESULTS,
                   help="recent results kept in memory for the overlay/masks endpoints (default: %(default)s)")
    g = p.add_argument_group("batching")
    g.add_argument("--batch-size", type=positive_int, default=None, help="rows per classifier batch (default 32)")
    g.add_argument("--max-wait-ms", type=float_between(0.0, MAX_WAIT_MS), default=DEFAULT_MAX_WAIT_S * MS,
                   help="longest a part-full batch waits for other requests' rows (default: %(default)g)")
    g.add_argument("--no-batching", action="store_true",
                   help="each request runs its own classifier batches (for comparison)")
    g = p.add_argument_group("Ray Serve (more than one machine)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run as a Ray Serve deployment: a local Ray, or join the cluster at ADDRESS")
    g.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (each loads the models once)")
    add_sam_args(p)
    add_session_args(p)
    add_verify_arg(p)
    p.set_defaults(func=run)


def require_serve_extra() -> None:
    """ConfigError naming what to install when a package of the serve extra, or ONNX Runtime, is missing.

    Both are named in one line (``[cpu,serve]``), so one install fixes it.
    """
    from ..distribution import install_hint
    from ..serve.metrics import SERVE_HINT

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    no_runtime = importlib.util.find_spec(ONNXRUNTIME_MODULE) is None
    if missing and no_runtime:
        raise ConfigError(f"eac serve needs the serve extra and ONNX Runtime: {install_hint('cpu', 'serve')} "
                          f"(missing: {', '.join([*missing, ONNXRUNTIME_MODULE])}; on NVIDIA GPUs the gpu extra "
                          "instead of cpu)")
    if missing:
        raise ConfigError(f"{SERVE_HINT} (missing: {', '.join(missing)})")
    if no_runtime:
        raise ConfigError(f"eac serve needs ONNX Runtime: {install_hint('cpu')} (on NVIDIA GPUs the gpu extra "
                          "instead)")


def configs_from_args(args: argparse.Namespace):
    """(RunConfig, ServeSettings) from the command line, both checked; nothing loaded yet."""
    from ..dataset import RunConfig, run_settings
    from ..serve.settings import ServeSettings

    resolve_models(args)
    if args.sam:
        check_sam_limits(args)
    config = RunConfig(
        classifier=args.classifier, concepts=args.concepts, n_segments=args.n_segments, sam=args.sam,
        sam_settings=sam_settings_from_args(args) if args.sam else {}, method=args.method,
        options=method_options(args.method, args.evaluations), seed=args.seed, batch_size=args.batch_size,
        max_concepts=args.max_concepts, max_pixels=args.max_pixels, metrics=args.metrics, providers=args.providers,
        threads=args.threads, device_id=args.device_id, trt_fp16=args.trt_fp16, trt_cache=args.trt_cache,
        verify=not args.no_verify)
    run_settings(config)  # manifests readable, method options valid, concept limits kept
    runtime_from_args(args)  # the providers exist
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    settings = ServeSettings(
        host=args.host, port=args.port, api_key=api_key, insecure=args.insecure,
        cors_origins=tuple(args.cors_origin or ()), concurrency=args.concurrency, max_queue=args.max_queue,
        timeout_s=args.timeout, upload_timeout_s=args.upload_timeout,
        max_upload_bytes=max(1, int(args.max_upload_mb * MIB)), max_pixels=args.max_pixels,
        max_evaluations=args.max_evaluations, results=args.results, batching=not args.no_batching,
        batch_size=args.batch_size, max_wait_s=args.max_wait_ms / MS).check()
    return config, settings


def run(args: argparse.Namespace) -> int:
    require_serve_extra()
    config, settings = configs_from_args(args)
    describe = (f"classifier {args.classifier}, concepts {config.concept_kind}, method {config.method}, "
                + ("batching off" if not settings.batching else
                   f"batching up to {settings.batch_size or config.batch_size or DEFAULT_BATCH_SIZE} rows"))
    if args.ray is not None:
        from ..serve.ray_serve import run_on_ray

        def on_ray_ready(url: str) -> None:
            print(f"eac serve: ready at {url} on Ray Serve ({args.replicas} replica(s); {describe}); "
                  "Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)

        run_on_ray(config, settings, address=args.ray, replicas=args.replicas, on_ready=on_ray_ready)
        return 0
    from ..serve import server
    from ..serve.service import Service

    sock = server.bind(settings.host, settings.port)
    url = server.url_of(sock)
    print(f"eac serve: listening on {url}; loading the models ({describe})", file=sys.stderr, flush=True)

    def on_ready() -> None:
        print(f"eac serve: ready at {url} (the page at {url}/); Ctrl-C or SIGTERM stops it after the requests "
              "in flight (a second Ctrl-C: at once)", file=sys.stderr, flush=True)

    service = Service(config, settings)
    stopped = server.run(service, sock, on_ready)
    answered = service.metrics.answered_count()
    if stopped.forced:
        from . import EXIT_INTERRUPTED

        print(f"eac serve: stopped at once on a second SIGINT: {stopped.cut_off} request(s) in flight answered 503 "
              f"and their work cancelled; {answered} explanation request(s) answered in all",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(f"eac serve: stopped{f' on {stopped.signal}' if stopped.signal else ''} after answering {answered} "
          "explanation request(s)", file=sys.stderr, flush=True)
    return 0
