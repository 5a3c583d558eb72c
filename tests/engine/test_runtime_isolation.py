"""The runtime (eac.engine, eac.kernels) must work with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Packages the runtime must never import.
FORBIDDEN = ("torch", "torchvision", "segment_anything", "skimage", "PIL")

_BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    FORBIDDEN = {FORBIDDEN!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"{{name}} is blocked: the runtime must not import it")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=300)


def test_every_runtime_module_imports_without_torch():
    proc = _run(
        """
        import importlib, pkgutil
        import eac.engine, eac.kernels
        names = []
        for pkg in (eac.engine, eac.kernels):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        print(len(names), loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.split(" ", 1)
    assert int(count) >= 10  # the walk really found the runtime modules
    assert loaded.strip() == "[]"


def test_blocker_really_blocks_torch():
    proc = _run("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_main_job_runs_without_torch(tmp_path):
    proc = _run(
        """
        from eac.engine.cli import main
        raise SystemExit(main(["demo", "--out", sys.argv[1]]))
        """,
        str(tmp_path / "demo"),
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "explanation.json").is_file()
    assert (tmp_path / "demo" / "overlay.png").is_file()
