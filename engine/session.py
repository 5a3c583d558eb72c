"""ONNX Runtime sessions: the one place where eac creates them.

Provider choice
---------------
``"auto"`` picks, among the providers this onnxruntime build offers, TensorRT,
then CUDA, then CPU (CPU is always appended as the fallback ORT needs). A user
may instead name providers explicitly (``["cuda", "cpu"]``) and set options
through :class:`SessionOptions`. The provider a session actually runs on is
reported by :func:`active_provider` and recorded in every result.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .distribution import install_hint
from .errors import EacError, ModelFolderError, ProviderError

try:
    import onnxruntime as ort
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise EacError(
        f"ONNX Runtime is not installed: {install_hint('cpu')}, or on NVIDIA GPUs the gpu extra instead "
        "(onnxruntime-gpu; never both)"
    ) from _exc

#: Short names accepted on the command line → ONNX Runtime provider names.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: Providers that run on a GPU (I/O binding and on-device composition pay off there).
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
#: Preference order for ``providers="auto"``.
AUTO_ORDER = (*GPU_PROVIDERS, "CPUExecutionProvider")
#: ONNX Runtime log severity of eac's sessions: errors only (3), no warnings on stderr.
ORT_LOG_ERRORS_ONLY = 3


@dataclass(frozen=True)
class TensorRTProfile:
    """Optimisation profile of TensorRT for one dynamic batch axis.

    ``input_shapes`` maps an input name to its shape with the batch dimension
    replaced by ``None``; min/opt/max batch sizes fill that dimension.
    """

    input_shapes: dict[str, tuple[int | None, ...]]
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256

    def as_options(self) -> dict[str, str]:
        def render(batch: int) -> str:
            parts = []
            for name, shape in self.input_shapes.items():
                dims = [str(batch if d is None else d) for d in shape]
                parts.append(f"{name}:{'x'.join(dims)}")
            return ",".join(parts)

        return {
            "trt_profile_min_shapes": render(self.min_batch),
            "trt_profile_opt_shapes": render(self.opt_batch),
            "trt_profile_max_shapes": render(self.max_batch),
        }


@dataclass(frozen=True)
class SessionOptions:
    """How to create ONNX Runtime sessions.

    Parameters
    ----------
    providers : "auto" or sequence of str
        ``"auto"`` or provider names (full ORT names or ``tensorrt``/``cuda``/``cpu``).
    cpu_threads : int, optional
        Intra-op threads of the CPU provider (ORT's default, all cores, when None).
    cuda_device_id : int
        GPU used by the CUDA and TensorRT providers.
    cudnn_conv_algo_search : {"EXHAUSTIVE", "HEURISTIC", "DEFAULT"}
        cuDNN convolution algorithm search of the CUDA provider.
    trt_fp16 : bool
        Let TensorRT build fp16 engines.
    trt_cache_dir : str, optional
        Folder where TensorRT keeps built engines between runs.
    graph_optimization : {"all", "extended", "basic", "disabled"}
        ORT graph optimisation level.
    cpu_mem_arena : bool, optional
        ONNX Runtime's CPU memory arena. None: the caller's default (on for
        classifiers; off for SAM, whose encoder and decoder peaks would otherwise
        be kept and added — measured 7.2 GB instead of 3.8 GB peak RSS for ViT-B,
        with the decoder no slower).
    inter_op_threads : int, optional
        Threads running independent graph nodes side by side; with a value above 1
        the session runs in ONNX Runtime's parallel execution mode (default:
        sequential, one node at a time, each using the intra-op threads).
    allow_spinning : bool, optional
        Whether idle intra-op threads spin-wait for the next parallel section (ONNX
        Runtime's default, None, is to spin: lower latency between kernels, but CPU
        time burnt that other processes — or the next image — cannot use).
    config_entries : dict of str to str
        Further ONNX Runtime session configuration entries, passed as they are
        (``session.set_denormal_as_zero`` ...). ``python -m eac.bench.study_ort_options``
        measures what each buys.
    """

    providers: str | Sequence[str] = "auto"
    cpu_threads: int | None = None
    cuda_device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    trt_fp16: bool = False
    trt_cache_dir: str | None = None
    graph_optimization: str = "all"
    cpu_mem_arena: bool | None = None
    extra_provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    inter_op_threads: int | None = None
    allow_spinning: bool | None = None
    config_entries: dict[str, str] = field(default_factory=dict)


_GRAPH_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
# Layout optimisations (the CPU's blocked NCHWc convolutions) without the rest of "all", where this build has them.
if hasattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT"):
    _GRAPH_LEVELS["layout"] = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
#: Graph optimisation levels this onnxruntime build offers (``SessionOptions.graph_optimization``).
GRAPH_OPTIMIZATION_LEVELS = tuple(_GRAPH_LEVELS)
#: ONNX Runtime's session configuration key for spin-waiting intra-op threads.
ALLOW_SPINNING_KEY = "session.intra_op.allow_spinning"


def available_providers() -> list[str]:
    """Providers offered by the installed onnxruntime build."""
    return list(ort.get_available_providers())


def resolve_providers(providers: str | Sequence[str] = "auto", available: Sequence[str] | None = None) -> list[str]:
    """Turn a provider request into ORT provider names, in order.

    Parameters
    ----------
    providers : "auto" or sequence of str
        The request.
    available : sequence of str, optional
        Providers of this build (queried from onnxruntime when None).

    Returns
    -------
    list of str
        Provider names, always ending with ``CPUExecutionProvider``.

    Raises
    ------
    ProviderError
        A named provider is unknown or not offered by this onnxruntime build.
    """
    available = list(available_providers() if available is None else available)
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()] if providers != "auto" else "auto"
    if providers == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
    else:
        chosen = []
        for name in providers:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in available:
                hint = (
                    " (install onnxruntime-gpu instead of onnxruntime for CUDA/TensorRT)"
                    if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                    else ""
                )
                raise ProviderError(
                    f"execution provider {name!r} is not available in this onnxruntime build; "
                    f"available: {', '.join(available)}{hint}"
                )
            if full not in chosen:
                chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_options(
    names: Sequence[str], options: SessionOptions, trt_profile: TensorRTProfile | None = None
) -> list[dict[str, Any]]:
    """Per-provider option dictionaries for :class:`onnxruntime.InferenceSession`."""
    result = []
    for name in names:
        opts: dict[str, Any] = {}
        if name == "CUDAExecutionProvider":
            opts = {
                "device_id": options.cuda_device_id,
                "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
            }
        elif name == "TensorrtExecutionProvider":
            opts = {"device_id": options.cuda_device_id, "trt_fp16_enable": options.trt_fp16}
            if options.trt_cache_dir:
                opts["trt_engine_cache_enable"] = True
                opts["trt_engine_cache_path"] = str(options.trt_cache_dir)
            if trt_profile is not None:
                opts.update(trt_profile.as_options())
        opts.update(options.extra_provider_options.get(name, {}))
        result.append(opts)
    return result


@dataclass(frozen=True)
class Runtime:
    """Where and how eac runs its graphs: the one device object.

    Made once from :class:`SessionOptions` (providers resolved, so an
    unavailable provider fails here, before any model is loaded) and carried
    by the :class:`~eac.engine.classifier.Classifier`, the SAM generator and
    the on-device composer, which all create their sessions through
    :meth:`session`.

    Attributes
    ----------
    options : SessionOptions
    providers : tuple of str
        ONNX Runtime provider names, in preference order, ending with CPU.
    """

    options: SessionOptions
    providers: tuple[str, ...]

    @classmethod
    def from_options(cls, options: SessionOptions | Runtime | None = None) -> Runtime:
        """The runtime for ``options`` (``"auto"`` providers when None); a Runtime is returned as is."""
        if isinstance(options, Runtime):
            return options
        options = options or SessionOptions()
        return cls(options, tuple(resolve_providers(options.providers)))

    @property
    def device_id(self) -> int:
        """GPU index of the CUDA and TensorRT providers."""
        return int(self.options.cuda_device_id)

    def device_of(self, session: ort.InferenceSession) -> str:
        """``"cuda"`` when ``session`` runs on a GPU provider, else ``"cpu"`` (for OrtValues and binding)."""
        return "cuda" if uses_device_memory(session) else "cpu"

    def session(
        self, path: str | os.PathLike, trt_profile: TensorRTProfile | None = None, default_mem_arena: bool = True
    ) -> ort.InferenceSession:
        """Create an ONNX Runtime session for ``path`` on this runtime's providers.

        ``default_mem_arena`` is the CPU memory arena setting used when
        ``options.cpu_mem_arena`` is None.

        Raises
        ------
        ModelFolderError
            The file is missing or ONNX Runtime cannot load it.
        """
        options = self.options
        path = Path(path)
        if not path.is_file():
            raise ModelFolderError(f"{path}: ONNX file not found; re-run the export")
        names = list(self.providers)
        so = ort_session_options(options, default_mem_arena)
        try:
            return ort.InferenceSession(
                str(path), sess_options=so, providers=names,
                provider_options=provider_options(names, options, trt_profile),
            )
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFolderError(
                f"{path}: ONNX Runtime cannot load this model ({first_line}); re-run the export") from exc

    def runner(self, session: ort.InferenceSession) -> SessionRunner:
        """A thread-safe :class:`SessionRunner` for ``session`` on this runtime's device."""
        return SessionRunner(session, device_id=self.device_id)


def ort_session_options(options: SessionOptions, default_mem_arena: bool = True) -> ort.SessionOptions:
    """ONNX Runtime's session options for ``options`` (graph level, threads, spinning, arena, entries).

    Raises
    ------
    ProviderError
        An unknown graph optimisation level or a bad thread count.
    """
    if options.graph_optimization not in _GRAPH_LEVELS:
        raise ProviderError(f"unknown graph optimisation level {options.graph_optimization!r}; this onnxruntime "
                            f"offers {', '.join(_GRAPH_LEVELS)}")
    for name, value in (("cpu_threads", options.cpu_threads), ("inter_op_threads", options.inter_op_threads)):
        if value is not None and int(value) < 1:
            raise ProviderError(f"{name} must be at least 1 (got {value})")
    so = ort.SessionOptions()
    so.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization]
    if options.cpu_threads is not None:
        so.intra_op_num_threads = int(options.cpu_threads)
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = int(options.inter_op_threads)
        if int(options.inter_op_threads) > 1:
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.log_severity_level = ORT_LOG_ERRORS_ONLY
    so.enable_cpu_mem_arena = default_mem_arena if options.cpu_mem_arena is None else bool(options.cpu_mem_arena)
    entries = dict(options.config_entries)
    if options.allow_spinning is not None:
        entries[ALLOW_SPINNING_KEY] = "1" if options.allow_spinning else "0"
    for key, value in entries.items():
        so.add_session_config_entry(str(key), str(value))
    return so


def create_session(
    path: str | os.PathLike,
    options: SessionOptions | Runtime | None = None,
    trt_profile: TensorRTProfile | None = None,
    default_mem_arena: bool = True,
) -> ort.InferenceSession:
    """Create an ONNX Runtime session for ``path`` as ``options`` asks (see :meth:`Runtime.session`).

    Raises
    ------
    ModelFolderError
        The file is missing or ONNX Runtime cannot load it.
    ProviderError
        A requested provider is unavailable.
    """
    return Runtime.from_options(options).session(path, trt_profile, default_mem_arena)


def active_provider(session: ort.InferenceSession) -> str:
    """The provider doing the work (the first one ORT kept for this session)."""
    return session.get_providers()[0]


class BoundRunner:
    """Runs one session through I/O binding, reusing device buffers across calls.

    On CUDA, feeding numpy arrays to ``session.run`` copies inputs to the device
    and allocates outputs on every call. This runner keeps one ``OrtValue`` per
    input and output per (name, shape) and reuses it while shapes repeat (the
    usual case: every batch but the last has the same size). On the CPU provider
    it works too (device ``"cpu"``), which is how its logic is tested.

    A runner is not shared between threads; :class:`SessionRunner` keeps one
    per thread.
    """

    def __init__(self, session: ort.InferenceSession, device: str = "cuda", device_id: int = 0):
        self.session = session
        self.device = device
        self.device_id = device_id
        self._inputs: dict[str, ort.OrtValue] = {}
        self.allocations = 0

    def _input_value(self, name: str, array: np.ndarray) -> ort.OrtValue:
        value = self._inputs.get(name)
        if value is not None and tuple(value.shape()) == array.shape and value.data_type() == _ort_type(array.dtype):
            value.update_inplace(array)
            return value
        # On the CPU device the OrtValue wraps the numpy memory instead of copying it;
        # give it a private copy so later in-place updates never touch the caller's array.
        owned = array.copy() if self.device == "cpu" else array
        value = ort.OrtValue.ortvalue_from_numpy(owned, self.device, self.device_id)
        self.allocations += 1
        self._inputs[name] = value
        return value

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the session on ``feeds``; return outputs as numpy arrays (host copies)."""
        output_names = list(output_names or [o.name for o in self.session.get_outputs()])
        binding = self.session.io_binding()
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            value = self._input_value(name, array)
            binding.bind_ortvalue_input(name, value)
        for name in output_names:
            # Outputs: let ORT allocate on the device; the binding keeps them until copied.
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        # .numpy() of a CPU OrtValue is a view of memory ORT reuses on the next run: copy.
        return [np.array(v.numpy(), copy=True) for v in binding.get_outputs()]


def _ort_type(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
            np.dtype(np.int64): "tensor(int64)", np.dtype(np.int32): "tensor(int32)"}.get(np.dtype(dtype), "")


def uses_device_memory(session: ort.InferenceSession) -> bool:
    """True when the session runs on a GPU provider (where I/O binding pays off)."""
    return active_provider(session) in GPU_PROVIDERS


class SessionRunner:
    """Thread-safe front of one session: plain ``run`` on CPU, I/O binding on GPU.

    ``InferenceSession.run`` is thread-safe in ONNX Runtime; I/O-binding buffers
    are not, so each thread gets its own :class:`BoundRunner`.
    """

    def __init__(self, session: ort.InferenceSession, device_id: int = 0, use_binding: bool | None = None):
        self.session = session
        self.provider = active_provider(session)
        self.use_binding = uses_device_memory(session) if use_binding is None else use_binding
        self._device = "cuda" if uses_device_memory(session) else "cpu"
        self._device_id = device_id
        self._local = threading.local()
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        if not self.use_binding:
            return self.session.run(list(output_names) if output_names else None, feeds)
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = BoundRunner(self.session, self._device, self._device_id)
            self._local.runner = runner
        return runner.run(feeds, output_names)
