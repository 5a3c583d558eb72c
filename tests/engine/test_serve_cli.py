"""``eac serve`` from the command line: safe by default, one-line failures, SIGTERM drains then exits, a second
Ctrl-C stops at once and still answers."""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette", reason="eac serve needs the serve extra")
pytest.importorskip("uvicorn", reason="eac serve needs the serve extra")

from eac.engine.cli import EXIT_INTERRUPTED, build_parser, main
from eac.engine.errors import ConfigError
from eac.engine.serve.app import authorized
from eac.engine.serve.settings import ServeSettings, is_loopback

from ..serve_helpers import (
    GRID,
    SLOW_EVALUATIONS,
    assert_counters_add_up,
    assert_one_line_error,
    metrics,
    outcome,
    post_image,
    request,
    scene_png,
    wait_for,
    wait_ready,
)

#: A request of the SIGTERM test: long enough to be in flight when the signal comes (a second or so).
DRAIN_REQUEST = {"method": "kernelshap", "evaluations": 600}
SERVE = ["serve", "--concepts", "grid", "--n-segments", str(GRID), "--threads", "1"]
#: A request still explaining long after two Ctrl-C (many seconds of classifier work).
SLOW_REQUEST = {"method": "kernelshap", "evaluations": SLOW_EVALUATIONS}
#: Seconds a forced stop may take, from the second Ctrl-C to the process' end.
FORCED_STOP_S = 5.0


def test_loopback_only_unless_a_key_or_insecure():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("myhost.example")  # names can resolve elsewhere: not trusted
    with pytest.raises(ConfigError, match="--api-key TOKEN"):
        ServeSettings(host="0.0.0.0").check()
    ServeSettings(host="0.0.0.0", api_key="k" * 32).check()
    ServeSettings(host="0.0.0.0", insecure=True).check()
    with pytest.raises(ConfigError, match="empty"):
        ServeSettings(api_key="  ").check()


def test_bearer_token_check():
    assert authorized(None, None) and authorized("anything", None)
    assert authorized("Bearer s3cret", "s3cret") and authorized("bearer s3cret", "s3cret")
    assert not authorized(None, "s3cret") and not authorized("Bearer s3cre", "s3cret")
    assert not authorized("Basic s3cret", "s3cret") and not authorized("s3cret", "s3cret")


def test_non_loopback_host_without_a_key_is_refused_in_one_line(demo_classifier_folder, capsys):
    code = main([*SERVE, "--classifier", str(demo_classifier_folder), "--host", "0.0.0.0", "--port", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("eac: error: --host 0.0.0.0 is reachable from other machines")


def test_missing_serve_extra_is_one_line(demo_classifier_folder, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main([*SERVE, "--classifier", str(demo_classifier_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("eac: error: eac serve needs the serve extra: pip install 'explain-any-concept[serve]' "
                   "(from a source checkout: pip install '.[serve]') (missing: uvicorn)")


@pytest.mark.parametrize("absent, expected", [
    (("uvicorn", "onnxruntime"), "eac: error: eac serve needs the serve extra and ONNX Runtime: pip install "
     "'explain-any-concept[cpu,serve]' (from a source checkout: pip install '.[cpu,serve]') (missing: uvicorn, "
     "onnxruntime; on NVIDIA GPUs the gpu extra instead of cpu)"),
    (("onnxruntime",), "eac: error: eac serve needs ONNX Runtime: pip install 'explain-any-concept[cpu]' (from a "
     "source checkout: pip install '.[cpu]') (on NVIDIA GPUs the gpu extra instead)"),
])
def test_missing_onnxruntime_is_named_with_the_serve_extra(demo_classifier_folder, capsys, monkeypatch, absent,
                                                            expected):
    # one line names everything to install (`pip install '.[serve]'` alone left the next run without a runtime)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    assert main([*SERVE, "--classifier", str(demo_classifier_folder)]) == 2
    assert capsys.readouterr().err.strip() == expected


def test_a_bad_classifier_folder_fails_before_listening(tmp_path, capsys):
    assert main([*SERVE, "--classifier", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eac: error:") and len(err.splitlines()) == 1 and "listening" not in err


def test_models_that_fail_to_load_stop_the_server_with_one_line(demo_classifier_folder, tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(demo_classifier_folder, folder)
    model = folder / "classifier.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other checksum: found only when the models load
    model.write_bytes(bytes(data))
    assert main([*SERVE, "--classifier", str(folder), "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "listening on http://127.0.0.1:" in lines[0]
    assert lines[-1].startswith("eac: error:") and "checksum" in lines[-1].lower()


def test_sigterm_stops_accepting_finishes_the_request_in_flight_then_exits(demo_classifier_folder):
    code = ("import sys; from eac.engine.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, *SERVE, "--classifier", str(demo_classifier_folder),
                                "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        url = re.search(r"listening on (http://\S+);", first).group(1)
        assert "ready at" in process.stderr.readline()
        reply: list = []
        client = threading.Thread(target=lambda: reply.append(post_image(url, scene_png(1), DRAIN_REQUEST)))
        client.start()
        wait_for(lambda: metrics(url)["eac_requests_explaining"] == 1, "the request to be in flight")
        before = metrics(url)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(url), "the listening socket to close")
        client.join(60)
        assert reply and reply[0].status == 200 and reply[0].json()["num_evaluations"] >= 600
        assert process.wait(60) == 0
        rest = process.stderr.read()
        assert "stopped on SIGTERM after answering 1 explanation request(s)" in rest
        assert outcome(before, "ok") == 0 and before["eac_requests_in_flight"] == 1
        assert_counters_add_up(before)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_second_ctrl_c_stops_at_once_and_answers_the_request_in_flight_503(demo_classifier_folder):
    """uvicorn alone force-quits on a second SIGINT: the request in flight got a plain-text 500 and the server printed
    tracebacks. Now it gets the service's one-line 503, its work is cancelled, and the command says so in one line."""
    code = ("import sys; from eac.engine.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, *SERVE, "--classifier", str(demo_classifier_folder),
                                "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"listening on (http://\S+);", process.stderr.readline()).group(1)
        wait_ready(url)
        reply: list = []
        client = threading.Thread(target=lambda: reply.append(post_image(url, scene_png(1), SLOW_REQUEST)))
        client.start()
        wait_for(lambda: metrics(url)["eac_requests_explaining"] == 1, "the request to be in flight")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: _refused(url), "the first Ctrl-C to close the listening socket")  # now draining
        process.send_signal(signal.SIGINT)
        forced = time.monotonic()
        exit_code = process.wait(FORCED_STOP_S)
        stopped_in = time.monotonic() - forced
        client.join(FORCED_STOP_S)
        assert reply, "the request in flight got no answer"
        assert assert_one_line_error(reply[0], 503) == "the server is shutting down"
        assert reply[0].headers["content-type"] == "application/json" and int(reply[0].headers["retry-after"]) >= 1
        err = process.stderr.read()
        assert "Traceback" not in err and "ERROR" not in err, err
        assert exit_code == EXIT_INTERRUPTED and stopped_in < FORCED_STOP_S
        # one line for the forced stop; the 503 counted once (the only answer: its kernelshap would take seconds)
        assert [line for line in err.splitlines() if not line.startswith("eac serve: ready at")] == [
            "eac serve: stopped at once on a second SIGINT: 1 request(s) in flight answered 503 and their work "
            "cancelled; 1 explanation request(s) answered in all"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _refused(url: str) -> bool:
    try:
        request("GET", f"{url}/healthz", timeout=2)
    except OSError:
        return True
    return False


def test_shipped_classifier_name_is_accepted(capsys):
    """`--classifier demo` means the shipped classifier, as in every other command (engine/shipped.py)."""
    from eac.engine.cli.serve import configs_from_args
    from eac.engine.demo import demo_classifier_path

    args = build_parser().parse_args([*SERVE, "--classifier", "demo"])
    config, _ = configs_from_args(args)
    assert config.classifier == str(demo_classifier_path())
