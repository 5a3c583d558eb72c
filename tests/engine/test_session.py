"""Sessions: provider resolution and options, I/O binding logic (on the CPU provider), manifests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from eac.engine.errors import ManifestVersionError, ModelFolderError, ProviderError
from eac.engine.manifest import FORMAT_VERSION, file_entry, read_manifest, verify_files, write_manifest
from eac.engine.session import (
    BoundRunner,
    SessionOptions,
    SessionRunner,
    TensorRTProfile,
    active_provider,
    create_session,
    provider_options,
    resolve_providers,
)
from onnx import TensorProto, helper

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture()
def affine_model(tmp_path):
    """y = 2·x + 1 with a dynamic batch axis."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"]),
                               helper.make_node("Add", ["t", "one"], ["y"])],
                              "affine", [x], [y], initializer=[two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "affine.onnx"
    onnx.save(model, path)
    return path


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    assert resolve_providers("auto", [CPU]) == [CPU]
    assert resolve_providers("auto", [CPU, CUDA]) == [CUDA, CPU]
    assert resolve_providers("auto", [CPU, CUDA, TRT, "AzureExecutionProvider"]) == [TRT, CUDA, CPU]


def test_named_providers_and_aliases():
    assert resolve_providers("cuda,cpu", [CPU, CUDA]) == [CUDA, CPU]
    assert resolve_providers(["trt"], [CPU, CUDA, TRT]) == [TRT, CPU]  # CPU always kept as the fallback
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        resolve_providers(["cuda"], [CPU])
    with pytest.raises(ProviderError, match="not available"):
        resolve_providers(["nonsense"], [CPU])


def test_provider_options_carry_cuda_and_tensorrt_settings(tmp_path):
    opts = SessionOptions(cuda_device_id=1, cudnn_conv_algo_search="EXHAUSTIVE", trt_fp16=True,
                          trt_cache_dir=str(tmp_path))
    profile = TensorRTProfile({"input": (None, 3, 224, 224)}, min_batch=1, opt_batch=32, max_batch=64)
    trt, cuda, cpu = provider_options([TRT, CUDA, CPU], opts, profile)
    assert cuda == {"device_id": 1, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert trt["trt_profile_opt_shapes"] == "input:32x3x224x224"
    assert trt["trt_profile_max_shapes"] == "input:64x3x224x224"
    assert cpu == {}


def test_create_session_reports_provider_and_errors(affine_model, tmp_path):
    session = create_session(affine_model, SessionOptions(providers="cpu", cpu_threads=1))
    assert active_provider(session) == CPU
    with pytest.raises(ModelFolderError, match="not found"):
        create_session(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFolderError, match="cannot load"):
        create_session(tmp_path / "junk.onnx")


def test_bound_runner_reuses_buffers_while_shapes_repeat(affine_model):
    session = create_session(affine_model, SessionOptions(providers="cpu"))
    runner = BoundRunner(session, device="cpu")
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.normal(size=(5, 4)).astype(np.float32)
        (y,) = runner.run({"x": x})
        np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)
    assert runner.allocations == 1  # one input buffer, updated in place
    x = rng.normal(size=(2, 4)).astype(np.float32)  # a new shape (the last, smaller batch)
    (y,) = runner.run({"x": x})
    np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)
    assert runner.allocations == 2


def test_session_runner_with_binding_is_thread_safe(affine_model):
    runner = SessionRunner(create_session(affine_model, SessionOptions(providers="cpu")), use_binding=True)
    inputs = [np.full((3, 4), i, np.float32) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda x: runner.run({"x": x})[0], inputs))
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(y, 2 * x + 1)


def test_manifest_roundtrip_and_checks(tmp_path, affine_model):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(affine_model.read_bytes())
    write_manifest(folder, {"kind": "classifier", "files": {"model": file_entry(folder, "model.onnx")}})
    manifest = read_manifest(folder, kind="classifier")
    assert manifest["format_version"] == FORMAT_VERSION
    verify_files(folder, manifest)
    with pytest.raises(ModelFolderError, match="'sam' model folder is needed"):
        read_manifest(folder, kind="sam")
    # A truncated file is caught by its size.
    (folder / "model.onnx").write_bytes(affine_model.read_bytes()[:-3])
    with pytest.raises(ModelFolderError, match="truncated"):
        read_manifest(folder)
    # A newer manifest format is refused with what to do.
    data = json.loads((folder / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestVersionError, match="upgrade eac"):
        read_manifest(folder)
    with pytest.raises(ModelFolderError, match=r"no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError):
        write_manifest(folder, {"kind": "other"})


def test_bound_runner_never_writes_into_the_callers_arrays(affine_model):
    runner = BoundRunner(create_session(affine_model, SessionOptions(providers="cpu")), device="cpu")
    first = np.ones((2, 4), np.float32)
    (y1,) = runner.run({"x": first})
    runner.run({"x": np.full((2, 4), 7, np.float32)})
    np.testing.assert_array_equal(first, 1)  # the first input is untouched by the in-place update
    np.testing.assert_array_equal(y1, 3)  # and the first output is not overwritten by the second run


def test_memory_arena_setting(affine_model):
    on = create_session(affine_model, SessionOptions(providers="cpu"))
    off = create_session(affine_model, SessionOptions(providers="cpu"), default_mem_arena=False)
    forced = create_session(affine_model, SessionOptions(providers="cpu", cpu_mem_arena=True), default_mem_arena=False)
    assert on.get_session_options().enable_cpu_mem_arena is True
    assert off.get_session_options().enable_cpu_mem_arena is False
    assert forced.get_session_options().enable_cpu_mem_arena is True  # the user's explicit choice wins
