"""ONNX Runtime CPU options through SessionOptions: threads, parallel executor, spinning, entries, levels."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from eac.engine.errors import ProviderError
from eac.engine.session import (
    ALLOW_SPINNING_KEY,
    GRAPH_OPTIMIZATION_LEVELS,
    SessionOptions,
    ort_session_options,
)


def test_defaults_leave_onnx_runtime_alone():
    so = ort_session_options(SessionOptions())
    assert so.intra_op_num_threads == 0 and so.inter_op_num_threads == 0  # 0: ORT picks
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spin)
        so.get_session_config_entry(ALLOW_SPINNING_KEY)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_spinning_and_entries_are_applied():
    so = ort_session_options(SessionOptions(cpu_threads=1, inter_op_threads=2, allow_spinning=False,
                                            config_entries={"session.set_denormal_as_zero": "1"},
                                            graph_optimization="extended"))
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 2
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL  # more than one inter-op thread needs it
    assert so.get_session_config_entry(ALLOW_SPINNING_KEY) == "0"
    assert so.get_session_config_entry("session.set_denormal_as_zero") == "1"
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    spin = ort_session_options(SessionOptions(allow_spinning=True, inter_op_threads=1))
    assert spin.get_session_config_entry(ALLOW_SPINNING_KEY) == "1"
    assert spin.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_layout_level_is_offered_by_this_build():
    if not hasattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT"):
        pytest.skip("this onnxruntime has no layout level")
    assert "layout" in GRAPH_OPTIMIZATION_LEVELS
    so = ort_session_options(SessionOptions(graph_optimization="layout"))
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT


@pytest.mark.parametrize("options, message", [
    (SessionOptions(graph_optimization="fastest"), "optimisation level"),
    (SessionOptions(inter_op_threads=0), "inter_op_threads"),
    (SessionOptions(cpu_threads=-1), "cpu_threads"),
])
def test_bad_settings_fail_in_one_line(options, message):
    with pytest.raises(ProviderError, match=message):
        ort_session_options(options)
