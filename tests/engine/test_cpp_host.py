"""The C++ host example (engine/hosts/cpp/eac_host.cpp): built with g++, run, checked against the Python API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import eac.engine
import numpy as np
import pytest
from eac.engine import Classifier, Explainer
from eac.engine.demo import demo_classifier_path
from eac.engine.methods import get_method
from eac.engine.scenes import make_scene
from eac.engine.sources import make_source

HOST_SOURCE = Path(eac.engine.__file__).resolve().parent / "hosts" / "cpp" / "eac_host.cpp"
SEGMENTS = 8
EVALUATIONS = 64  # eac needs ≥ 2 + 8·(N//2) = 34 coalitions for N = 8
COMPILE_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
#: Fields of an explanation that must not depend on who called the engine.
SAME_FIELDS = ("method", "value_type", "targets", "labels", "num_concepts", "values_shape", "ranking",
               "concept_areas", "num_evaluations", "settings", "frame")


def _link_flags() -> list[str]:
    """Flags that link a program embedding this Python (shared or static libpython)."""
    cfg = sysconfig.get_config_var
    lib = f"-lpython{cfg('LDVERSION')}"
    extra = (cfg("LIBS") or "").split() + (cfg("SYSLIBS") or "").split()
    if cfg("Py_ENABLE_SHARED"):
        return [f"-L{cfg('LIBDIR')}", lib, f"-Wl,-rpath,{cfg('LIBDIR')}", *extra]
    return [f"-L{cfg('LIBPL')}", lib, *extra, "-Xlinker", "-export-dynamic"]


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    pybind11 = pytest.importorskip("pybind11")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        pytest.skip(f"Python headers are not installed ({include}/Python.h)")
    binary = tmp_path_factory.mktemp("host") / "eac_host"
    command = [gxx, "-O1", "-std=c++17", str(HOST_SOURCE), f"-I{include}", f"-I{pybind11.get_include()}",
               *_link_flags(), "-pthread", "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert built.returncode == 0, built.stderr[-4000:]
    return binary


def test_cpp_host_explains_from_two_threads_like_the_python_api(host, tmp_path):
    image = make_scene(np.random.default_rng(3), 128).image
    raw = tmp_path / "image.rgb"
    raw.write_bytes(image.tobytes())
    env = dict(os.environ, EAC_PYTHON=sys.executable)
    run = subprocess.run([str(host), str(demo_classifier_path()), str(raw), str(image.shape[0]),
                          str(image.shape[1]), str(SEGMENTS), str(EVALUATIONS)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    printed = json.loads(run.stdout)
    assert printed["errors"] == [None, None]
    # numpy saw the C++ vector's own memory: no copy at the boundary
    assert printed["numpy_addresses"] == [printed["pixels_address"]] * 2

    explainer = Explainer(Classifier.from_folder(demo_classifier_path()),
                          **get_method("eac").budget(EVALUATIONS))
    expected = explainer.explain(image, make_source("grid", SEGMENTS)).to_dict()
    for result in printed["results"]:
        for name in SAME_FIELDS:
            assert result[name] == expected[name], name
        np.testing.assert_allclose(result["values"], expected["values"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], rtol=1e-6)


def test_cpp_host_reports_each_threads_error_in_one_line(host, tmp_path):
    """An explanation that fails (too few evaluations for the concepts) is the exception's type and message
    on one line per thread (``what()`` of pybind11 adds the Python traceback on further lines)."""
    image = make_scene(np.random.default_rng(3), 128).image
    raw = tmp_path / "image.rgb"
    raw.write_bytes(image.tobytes())
    env = dict(os.environ, EAC_PYTHON=sys.executable)
    run = subprocess.run([str(host), str(demo_classifier_path()), str(raw), str(image.shape[0]),
                          str(image.shape[1]), str(SEGMENTS), "4"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert run.returncode == 1, run.stderr[-4000:]  # a thread failed
    printed = json.loads(run.stdout)
    assert printed["results"] == [None, None]
    for error in printed["errors"]:
        assert error.startswith("ExplainError: eac needs at least") and "\n" not in error
    missing = subprocess.run([str(host), str(tmp_path / "no_model"), str(raw), "128", "128"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "ModelFolderError: " in missing.stderr


def test_host_source_is_package_data():
    assert HOST_SOURCE.is_file()
    text = HOST_SOURCE.read_text()
    assert "gil_scoped_release" in text and "gil_scoped_acquire" in text and "py::capsule" in text
