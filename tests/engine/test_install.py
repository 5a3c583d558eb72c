"""An install without any ONNX Runtime extra fails with one line that says how to add one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_BLOCK_ORT = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "onnxruntime":
                raise ModuleNotFoundError("No module named 'onnxruntime'")
            return None
    sys.meta_path.insert(0, Block())
    from eac.engine.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
)


def _eac_without_ort(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_ORT, *args], capture_output=True, text=True, timeout=120)


def test_demo_without_onnxruntime_says_which_extra(tmp_path):
    proc = _eac_without_ort("demo", "--out", str(tmp_path / "d"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "ONNX Runtime is not installed" in lines[0] and "'explain-any-concept[cpu]'" in lines[0]
    assert "pip install '.[cpu]'" in lines[0] and "gpu extra" in lines[0]
    assert not (tmp_path / "d").exists()


def test_version_without_onnxruntime_prints_the_version_and_what_to_install():
    from eac.engine.distribution import installed_version

    proc = _eac_without_ort("--version")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stdout
    assert lines[0].startswith(f"eac {installed_version()} (explain-any-concept)")
    assert "ONNX Runtime providers: none (ONNX Runtime is not installed" in lines[0]
    assert "'explain-any-concept[cpu]'" in lines[0]


def test_help_works_without_onnxruntime():
    proc = _eac_without_ort("explain", "--help")
    assert proc.returncode == 0 and "--method" in proc.stdout
