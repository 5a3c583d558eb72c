"""Model-parameter randomisation of an ONNX classifier folder (the first sanity check of Adebayo et al. 2018).

A classifier folder (``eac export classifier`` or ``eac import-onnx``) is copied
with some of its weights re-initialised, by rewriting the ONNX graph's
initialisers with :mod:`onnx` — no PyTorch, any exporter, any opset, weights
that are also listed as graph inputs (old files "from the wild") included.

What a *layer* is
-----------------
A layer is one node that multiplies by learned weights — ``Conv``,
``ConvTranspose``, ``Gemm`` or ``MatMul`` with a float initialiser operand (the
*anchor*) — together with the parameters that act on its output alone: its own
bias (``Conv``/``Gemm`` input), then, following the chain of single consumers,
an ``Add``/``Sub``/``Mul``/``Div`` by a float initialiser (a ``MatMul``'s bias,
a scale) and normalisations (``BatchNormalization``, ``InstanceNormalization``,
``LayerNormalization``, ``GroupNormalization``: scale, shift, running mean and
variance). For the exported CNNs this is "a conv with its bias and its batch
norm" (the exporter folds the batch norm into the conv) and "the final linear
layer". A float initialiser of more than one value that no anchor claims but a
norm, an elementwise op, ``PRelu``, ``Gather``, ``Concat`` or ``Expand`` uses
after the first anchor (a norm that precedes a conv, a positional embedding, a
class token) is a layer of its own, named after that node. Not weights, never
touched: single values (epsilons, exponents, scalar scales), float operands of
other ops (``Resize`` scales, ``Clip`` bounds), constants used before the first
anchor (an in-graph mean/std normalisation), integer tensors (shapes, indices,
quantised weights). Layers are ordered as
their anchors appear in the graph (ONNX orders nodes topologically): index 0
is nearest the input, the last is the head.

How a tensor is re-initialised
------------------------------
Each tensor is replaced by draws from a normal distribution with the tensor's
own mean and standard deviation (so the layer keeps its scale and the network
its rough activation statistics; a destroyed layer is not simply switched off),
except a batch norm's running variance, whose values are permuted instead (a
variance must stay positive; a permutation keeps every statistic). A tensor
with no spread (all values equal) has nothing to re-draw and stays as it is
(:attr:`RandomisedCopy.unchanged` lists such tensors). The draws of a tensor
depend only on the seed and the tensor's name, so a tensor randomised at one
step of a cascade has the same values at every later step, and the same seed
gives the same copies on every machine.

Modes
-----
``cascading``: step k re-initialises the top k layers, from the head down (the
curve of Adebayo et al.'s Fig. 2). ``independent``: each step re-initialises one
layer alone.

The classifier folder's ``head.npz`` (the final linear layer, used by ``cam``,
``secam`` and the PIE surrogate) is tied to the graph's initialiser it was taken
from (matched by value, transposed or scaled as the graph uses it), so a copy
whose head is randomised gets the matching ``head.npz``; :func:`check_head`
verifies on a random batch that ``head.npz`` reproduces the copy's logits.

Copies are written one at a time into a temporary folder and removed once used
(:meth:`ModelRandomiser.copies`): a ResNet-50 cascade has 54 layers and 100 MB
per copy.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.surrogate import softmax
from .errors import SanityError
from .manifest import ClassifierManifest, file_entry, model_path, verify_files

MODES = ("cascading", "independent")
#: Ops whose float initialiser operand makes a node the anchor of a layer.
ANCHOR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Elementwise ops whose float initialiser operand (bias, scale) joins the layer whose output they take.
ELEMENTWISE_OPS = ("Add", "Sub", "Mul", "Div")
#: Normalisations whose parameters join the layer whose output they normalise.
NORM_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization")
#: Ops whose float initialiser operands no anchor claims still count as learned weights (a layer of their own):
#: norms and elementwise biases/scales elsewhere, PReLU slopes, embedding tables, class tokens. Float operands
#: of other ops (Resize scales, Clip bounds, Pad values) are settings of the arithmetic, never touched.
LONE_WEIGHT_OPS = (*ELEMENTWISE_OPS, *NORM_OPS, "PRelu", "Gather", "Concat", "Expand")
#: BatchNormalization's input holding the running variance: permuted, not re-drawn (it must stay positive).
BN_VARIANCE_INPUT = 4
#: ONNX element types that hold weights (FLOAT, FLOAT16, DOUBLE, BFLOAT16).
FLOAT_TYPES = (1, 10, 11, 16)
#: The largest graph written without external data (protobuf's limit is 2 GiB; headroom for the structure).
MAX_INLINE_BYTES = 2**31 - 1 - 64 * 2**20
#: Tensors below this many bytes stay in the graph file when external data is used.
EXTERNAL_DATA_THRESHOLD = 1024
#: Manifest role of the model's external data file (as ``eac export`` names it).
MODEL_DATA_ROLE = "model_data"
#: Agreement required between head.npz and the graph's head initialiser (relative to the largest weight):
#: head.npz is a float32 copy of that tensor, transposed and scaled by the Gemm's alpha at most.
HEAD_MATCH_RTOL = 1e-4
#: head.npz must reproduce the copy's logits to this (relative to the largest logit) on a random batch;
#: fp16 models compute with fp16 rounding.
HEAD_CHECK_RTOL = {"fp32": 1e-3, "fp16": 2e-2}
HEAD_CHECK_ATOL = 1e-4
#: Random normalised images of the head check, and their seed (fixed: the check must not vary between runs).
HEAD_CHECK_BATCH = 2
HEAD_CHECK_SEED = 0
#: Names of the ``source`` entry a randomised copy's manifest records.
SOURCE_KEY = "randomised"


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Layer:
    """One randomisable layer of a graph.

    Attributes
    ----------
    name : str
        The anchor node's name (``"<op>:<output>"`` when the node has none).
    op_type : str
        The anchor's op (``Conv``, ``Gemm``...), or the op of a lone parameterised node.
    index : int
        Position from the input (0 = first layer; the last is the head).
    parameters : tuple of str
        Initialiser names re-initialised with the layer (weight first).
    size : int
        Number of values in those initialisers.
    """

    name: str
    op_type: str
    index: int
    parameters: tuple[str, ...]
    size: int


def _node_name(node: Any) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def _float_initialisers(graph: Any) -> dict[str, Any]:
    """Float initialisers with more than one value, by name (the tensors that can be weights)."""
    out = {}
    for init in graph.initializer:
        size = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type in FLOAT_TYPES and size > 1:
            out[init.name] = init
    return out


def find_layers(model: Any) -> list[Layer]:
    """The randomisable layers of an ONNX model, input first (see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    list of Layer
        Ordered from the input to the head; empty when the graph keeps no float
        weights in initialisers (weights in ``Constant`` nodes, fed at run time,
        or quantised to integers).
    """
    graph = model.graph
    weights = _float_initialisers(graph)
    # Identity nodes that merely rename an initialiser (some exporters insert them) resolve to it.
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in weights}

    def weight_of(name: str) -> str | None:
        name = alias.get(name, name)
        return name if name in weights else None

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    claimed: set[str] = set()
    found: list[tuple[int, str, str, list[str]]] = []
    for position, node in enumerate(graph.node):
        if node.op_type not in ANCHOR_OPS:
            continue
        params = [w for w in (weight_of(i) for i in node.input if i) if w is not None and w not in claimed]
        if not params:
            continue  # a product of two activations (attention), not a learned layer
        tail = _follow_chain(node, consumers, graph_outputs, weight_of, claimed | set(params))
        params += tail
        claimed.update(params)
        found.append((position, _node_name(node), node.op_type, params))
    first_anchor = min((p for p, *_ in found), default=len(graph.node))
    for position, node in enumerate(graph.node):  # parameters no anchor claimed: layers of their own
        if node.op_type not in LONE_WEIGHT_OPS or position < first_anchor:
            continue  # before the first learned layer: preprocessing constants (an in-graph mean/std)
        params = [w for w in (weight_of(i) for i in node.input if i) if w is not None and w not in claimed]
        if params:
            claimed.update(params)
            found.append((position, _node_name(node), node.op_type, params))
    found.sort(key=lambda item: item[0])
    layers, seen = [], {}
    for index, (_, name, op, params) in enumerate(found):
        seen[name] = seen.get(name, 0) + 1
        unique = name if seen[name] == 1 else f"{name}#{seen[name]}"
        size = sum(int(np.prod(weights[p].dims)) for p in params)
        layers.append(Layer(unique, op, index, tuple(params), size))
    return layers


def _follow_chain(anchor: Any, consumers: dict[str, list[Any]], graph_outputs: set[str], weight_of,
                  taken: set[str]) -> list[str]:
    """Parameters of the biases, scales and norms that act on ``anchor``'s output alone, in order."""
    params: list[str] = []
    tensor = anchor.output[0]
    while tensor not in graph_outputs:
        users = consumers.get(tensor, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in ELEMENTWISE_OPS:
            others = [i for i in node.input if i != tensor]
            new = [w for w in (weight_of(i) for i in others) if w is not None and w not in taken]
            if len(others) != 1 or not new:
                break
        elif node.op_type in NORM_OPS:
            new = [w for w in (weight_of(i) for i in node.input[1:] if i) if w is not None and w not in taken]
        else:
            break
        params += new
        taken = taken | set(new)
        tensor = node.output[0]
    return params


def _variance_tensors(graph: Any) -> set[str]:
    """Initialisers that are a BatchNormalization's running variance."""
    return {n.input[BN_VARIANCE_INPUT] for n in graph.node
            if n.op_type == "BatchNormalization" and len(n.input) > BN_VARIANCE_INPUT}


# --------------------------------------------------------------------------- re-initialisation
def tensor_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The seed of one tensor's draws: a function of ``seed`` and the tensor's name only."""
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])


def reinitialise(values: np.ndarray, seed: int, name: str, permute: bool = False) -> np.ndarray:
    """New values for one tensor, with its mean and standard deviation.

    Parameters
    ----------
    values : ndarray of float, any shape
    seed : int
    name : str
        The tensor's name (with ``seed``, it decides the draws).
    permute : bool
        Permute the values instead of drawing new ones (running variances).

    Returns
    -------
    ndarray, ``values``'s shape and dtype
        ``mean + std·z``, z standard normal (or a permutation); ``values``
        unchanged when they have no spread.
    """
    rng = np.random.default_rng(tensor_seed(seed, name))
    flat = np.asarray(values, np.float64).reshape(-1)
    std = float(flat.std())
    if not std > 0:
        return np.array(values, copy=True)
    if permute:
        new = rng.permutation(flat)
    else:
        new = float(flat.mean()) + std * rng.standard_normal(flat.size)
    return new.reshape(np.shape(values)).astype(np.asarray(values).dtype)


def randomise_model(model: Any, layers: Sequence[Layer], seed: int) -> tuple[Any, list[str], list[str]]:
    """A copy of ``model`` with the parameters of ``layers`` re-initialised.

    Parameters
    ----------
    model : onnx.ModelProto
        Not modified.
    layers : sequence of Layer
        From :func:`find_layers` of this model.
    seed : int

    Returns
    -------
    model : onnx.ModelProto
        The copy; only initialiser values differ from ``model``.
    changed : list of str
        Initialisers given new values.
    unchanged : list of str
        Initialisers of those layers left as they were (no spread to re-draw).
    """
    from onnx import numpy_helper

    out = type(model)()
    out.CopyFrom(model)
    variances = _variance_tensors(out.graph)
    wanted = {p for layer in layers for p in layer.parameters}
    changed, unchanged = [], []
    for init in out.graph.initializer:
        if init.name not in wanted:
            continue
        values = numpy_helper.to_array(init)
        new = reinitialise(values, seed, init.name, permute=init.name in variances)
        if np.array_equal(new, values):
            unchanged.append(init.name)
            continue
        init.CopyFrom(numpy_helper.from_array(new, init.name))
        changed.append(init.name)
    return out, changed, unchanged


# --------------------------------------------------------------------------- head.npz
@dataclass(frozen=True)
class HeadBinding:
    """Where head.npz comes from in the graph: ``weight = weight_scale · W[ᵀ]``, ``bias = bias_scale · b``."""

    weight: str
    transposed: bool
    weight_scale: float
    bias: str | None
    bias_scale: float

    def head_from(self, model: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """head.npz's (weight K×D, bias K) as float32 from ``model``'s initialisers (None if absent)."""
        from onnx import numpy_helper

        inits = {t.name: t for t in model.graph.initializer if t.name in (self.weight, self.bias)}
        if self.weight not in inits:
            return None
        w = numpy_helper.to_array(inits[self.weight]).astype(np.float64)
        weight = self.weight_scale * (w.T if self.transposed else w)
        if self.bias is None:
            bias = np.zeros(weight.shape[0])
        else:
            bias = self.bias_scale * numpy_helper.to_array(inits[self.bias]).astype(np.float64).reshape(-1)
        return weight.astype(np.float32), np.broadcast_to(bias, weight.shape[:1]).astype(np.float32)


def _scale_match(candidate: np.ndarray, target: np.ndarray) -> float | None:
    """The factor s with s·candidate = target (to :data:`HEAD_MATCH_RTOL`), or None."""
    if candidate.shape != target.shape:
        return None
    norm = float(np.sum(candidate * candidate))
    largest = float(np.max(np.abs(target))) if target.size else 0.0
    if not norm > 0:
        return None
    s = float(np.sum(candidate * target)) / norm
    if np.max(np.abs(s * candidate - target)) <= HEAD_MATCH_RTOL * max(largest, np.finfo(np.float32).tiny):
        return s
    return None


def bind_head(model: Any, weight: np.ndarray, bias: np.ndarray) -> HeadBinding | None:
    """The initialisers head.npz was taken from (matched by value), or None when none matches.

    Parameters
    ----------
    model : onnx.ModelProto
    weight : ndarray, K×D
    bias : ndarray, K
    """
    from onnx import numpy_helper

    weight = np.asarray(weight, np.float64)
    bias = np.asarray(bias, np.float64).reshape(-1)
    found = None
    for init in reversed(list(model.graph.initializer)):  # the head sits near the end of the graph
        if init.data_type not in FLOAT_TYPES or len(init.dims) != 2:
            continue
        w = numpy_helper.to_array(init).astype(np.float64)
        for transposed, candidate in ((False, w), (True, w.T)):
            s = _scale_match(candidate, weight)
            if s is not None:
                found = (init.name, transposed, s)
                break
        if found:
            break
    if found is None:
        return None
    bias_name, bias_scale = None, 1.0
    if np.any(bias != 0):
        for init in reversed(list(model.graph.initializer)):
            if init.data_type not in FLOAT_TYPES or init.name == found[0]:
                continue
            b = numpy_helper.to_array(init).astype(np.float64).reshape(-1)
            s = _scale_match(b, bias)
            if s is not None:
                bias_name, bias_scale = init.name, s
                break
        if bias_name is None:
            return None
    return HeadBinding(found[0], found[1], found[2], bias_name, bias_scale)


def check_head(classifier: Any) -> float:
    """Check that a classifier's head.npz reproduces its logits; returns the largest deviation.

    Runs :data:`HEAD_CHECK_BATCH` random normalised images (fixed seed) and
    compares ``softmax(features · Wᵀ + b)`` with the model's class distribution.

    Parameters
    ----------
    classifier : Classifier
        With features and a head (nothing is checked otherwise: returns 0).

    Raises
    ------
    SanityError
        head.npz does not follow the graph (a randomised head that could not be tied to it).
    """
    if classifier.head is None or not classifier.has_features:
        return 0.0
    h, w = classifier.input_hw
    x = np.random.default_rng(HEAD_CHECK_SEED).standard_normal((HEAD_CHECK_BATCH, 3, h, w)).astype(np.float32)
    out = classifier.run(x)
    weight, bias = (np.asarray(a, np.float64) for a in classifier.head)
    predicted = out.features.astype(np.float64) @ weight.T + bias
    got = out.logits.astype(np.float64)
    if classifier.output_kind == "probabilities":  # softmax inside the graph: compare the distributions
        predicted, got = softmax(predicted), softmax(got)
    deviation = float(np.max(np.abs(predicted - got)))
    precision = getattr(classifier.manifest, "precision", "fp32")
    tolerance = HEAD_CHECK_ATOL + HEAD_CHECK_RTOL.get(precision, HEAD_CHECK_RTOL["fp16"]) * float(np.max(np.abs(got)))
    if not deviation <= tolerance:
        raise SanityError(f"{classifier.folder}: head.npz does not reproduce the randomised model's logits "
                          f"(off by {deviation:.3g}): its final linear layer could not be tied to an initialiser; "
                          "leave the head out (--layers) or use methods that do not need head.npz")
    return deviation


# --------------------------------------------------------------------------- steps and copies
@dataclass(frozen=True)
class RandomisationStep:
    """One randomised model of a sanity check.

    Attributes
    ----------
    mode : {"cascading", "independent"}
    layers : tuple of str
        The layers re-initialised at this step (cascading: the top ones, head first).
    """

    mode: str
    layers: tuple[str, ...]

    @property
    def count(self) -> int:
        """How many layers this step randomises."""
        return len(self.layers)

    @property
    def label(self) -> str:
        """The step in words: ``"down to <layer>"`` (cascading) or ``"<layer>"`` (independent)."""
        if self.mode == "independent":
            return self.layers[0]
        return f"down to {self.layers[-1]}"


@dataclass
class RandomisedCopy:
    """A randomised classifier folder (removed when the next one is made).

    Attributes
    ----------
    step : RandomisationStep
    folder : Path
    changed : list of str
        Initialisers given new values.
    unchanged : list of str
        Initialisers of the step's layers that had no spread to re-draw.
    head_randomised : bool
        Whether head.npz was rewritten for the randomised head.
    """

    step: RandomisationStep
    folder: Path
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    head_randomised: bool = False

    def load(self, session_options: Any = None, batch_size: int | None = None):
        """The copy as a :class:`~eac.engine.classifier.Classifier`, its head.npz checked (:func:`check_head`)."""
        from .classifier import Classifier

        classifier = Classifier.from_folder(self.folder, session_options=session_options, verify=False,
                                            batch_size=batch_size)
        check_head(classifier)
        return classifier


class ModelRandomiser:
    """Randomised copies of one classifier folder.

    Parameters
    ----------
    folder : path-like
        A classifier folder (``eac export classifier`` / ``eac import-onnx``).
    seed : int
        Seed of the re-initialisation (same seed, same copies).
    verify : bool
        Check the folder's files against the manifest's checksums first.

    Raises
    ------
    ModelFolderError
        Not a classifier folder, or its files do not match the manifest.
    SanityError
        The graph keeps no float weights in initialisers.
    """

    def __init__(self, folder: str | Path, seed: int = 0, verify: bool = True) -> None:
        import onnx

        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SanityError(f"the randomisation seed must be a non-negative integer, got {seed!r}")
        self.folder = Path(folder)
        self.seed = int(seed)
        self.manifest = ClassifierManifest.read(self.folder)
        if verify:
            verify_files(self.folder, self.manifest)
        self.model_file = model_path(self.folder, self.manifest, "model")
        self.model = onnx.load(str(self.model_file))
        self.layers = find_layers(self.model)
        if not self.layers:
            raise SanityError(f"{self.model_file}: no weights to randomise: the graph keeps no float weights in "
                              "initialisers (Constant nodes, run-time inputs or integer weights are not rewritten)")
        self.head_binding: HeadBinding | None = None
        if self.manifest.has_head:
            with np.load(model_path(self.folder, self.manifest, "head"), allow_pickle=False) as data:
                self.head_binding = bind_head(self.model, data["weight"], data["bias"])

    @property
    def layer_names(self) -> list[str]:
        """Layer names, input first."""
        return [layer.name for layer in self.layers]

    def select(self, names: Sequence[str] | None = None) -> list[Layer]:
        """The named layers (input first), or every layer; SanityError names the layers there are."""
        if not names:
            return list(self.layers)
        by_name = {layer.name: layer for layer in self.layers}
        missing = [n for n in names if n not in by_name]
        if missing:
            shown = ", ".join(self.layer_names)
            raise SanityError(f"no layer named {', '.join(map(repr, missing))} in {self.model_file}; its layers "
                              f"(input first) are: {shown}")
        return sorted({by_name[n] for n in names}, key=lambda layer: layer.index)

    def steps(self, mode: str, layers: Sequence[str] | None = None, max_steps: int | None = None
              ) -> list[RandomisationStep]:
        """The randomisation steps of ``mode`` over the chosen layers.

        Parameters
        ----------
        mode : {"cascading", "independent"}
        layers : sequence of str, optional
            Layer names (default: all).
        max_steps : int, optional
            Cascading: at most this many steps, evenly spaced over the cascade
            (the last always randomises every chosen layer). Independent: the
            layers at evenly spaced positions.
        """
        if mode not in MODES:
            raise SanityError(f"randomisation mode must be one of {', '.join(MODES)}, got {mode!r}")
        chosen = self.select(layers)
        top_down = [layer.name for layer in reversed(chosen)]
        if mode == "cascading":
            counts = list(range(1, len(top_down) + 1))
        else:
            counts = list(range(len(top_down)))
        if max_steps is not None:
            if max_steps < 1:
                raise SanityError(f"max_steps must be at least 1, got {max_steps}")
            if max_steps < len(counts):
                if mode == "cascading":  # evenly spaced cascade depths, ending with every chosen layer
                    counts = sorted({int(np.ceil(i * len(counts) / max_steps)) for i in range(1, max_steps + 1)})
                else:  # evenly spaced layers, head and first layer included
                    counts = sorted({round(v) for v in np.linspace(0, len(counts) - 1, max_steps)})
        if mode == "cascading":
            return [RandomisationStep(mode, tuple(top_down[:k])) for k in counts]
        return [RandomisationStep(mode, (top_down[i],)) for i in counts]

    def write(self, step: RandomisationStep, dest: str | Path) -> RandomisedCopy:
        """Write the randomised classifier folder of ``step`` at ``dest`` (a new folder).

        Returns
        -------
        RandomisedCopy
        """
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=False)
        chosen = self.select(step.layers)
        model, changed, unchanged = randomise_model(self.model, chosen, self.seed)
        manifest = ClassifierManifest.from_dict(self.manifest.to_dict())
        written = {"model", MODEL_DATA_ROLE}
        files = dict(manifest.files)
        files.update(_save_model(model, dest / self.model_file.name, MODEL_DATA_ROLE in self.manifest.files))
        head_randomised = False
        if self.manifest.has_head and self.head_binding is not None and \
                {self.head_binding.weight, self.head_binding.bias} & set(changed):
            head = self.head_binding.head_from(model)
            if head is not None:
                head_name = model_path(self.folder, self.manifest, "head").name
                np.savez(dest / head_name, weight=head[0], bias=head[1])
                files["head"] = file_entry(dest, head_name)
                written.add("head")
                head_randomised = True
        for role, entry in self.manifest.files.items():
            if role not in written:
                target = dest / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.folder / entry["path"], target)
        manifest.files = files
        manifest.source = {**manifest.source, SOURCE_KEY: {
            "from": str(self.folder.resolve()), "mode": step.mode, "layers": list(step.layers), "seed": self.seed,
            "changed": len(changed), "unchanged": unchanged}}
        manifest.write(dest)
        return RandomisedCopy(step, dest, changed, unchanged, head_randomised)

    def copies(self, steps: Sequence[RandomisationStep], root: str | Path | None = None
               ) -> Iterator[RandomisedCopy]:
        """The copies of ``steps``, written one at a time in a temporary folder.

        Each copy is removed when the next is asked for, and the temporary folder
        when the iteration ends (also when it is left early or fails).

        Parameters
        ----------
        steps : sequence of RandomisationStep
        root : path-like, optional
            Where the temporary folder is made (default: the system's).
        """
        with tempfile.TemporaryDirectory(prefix="eac-randomised-", dir=root) as tmp:
            for i, step in enumerate(steps):
                folder = Path(tmp) / f"step-{i:03d}"
                try:
                    yield self.write(step, folder)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)


def _save_model(model: Any, path: Path, external: bool) -> dict[str, dict[str, Any]]:
    """Save the graph (external data when the original had it or it is too large); the manifest entries."""
    import onnx

    data_name = path.name + ".data"
    if external or model.ByteSize() >= MAX_INLINE_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=EXTERNAL_DATA_THRESHOLD)
        return {"model": file_entry(path.parent, path.name), MODEL_DATA_ROLE: file_entry(path.parent, data_name)}
    onnx.save_model(model, str(path))
    return {"model": file_entry(path.parent, path.name)}


__all__ = [
    "MODES",
    "HeadBinding",
    "Layer",
    "ModelRandomiser",
    "RandomisationStep",
    "RandomisedCopy",
    "bind_head",
    "check_head",
    "find_layers",
    "randomise_model",
    "reinitialise",
]
