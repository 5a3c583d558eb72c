"""The torchvision stand-in must not outlive the imports it is for.

Left in ``sys.modules`` it tells later importers that torchvision is installed:
transformers then imports ``torchvision.transforms.InterpolationMode`` and every
``--hf`` export in the same process fails (a CI run failed this way when the bench
tests ran before the Hugging Face export tests).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eac.bench import tvshim

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("loader", ["import_segment_anything", "import_efficientvit_sam_reference"])
def test_the_shim_is_gone_after_the_reference_imports(loader):
    if tvshim.torchvision_available():
        pytest.skip("torchvision is installed here: no shim is used")
    needs = ["segment_anything"] + (["efficientsam"] if loader == "import_efficientvit_sam_reference" else [])
    if any(importlib.util.find_spec(name) is None for name in needs):
        pytest.skip(f"needs {needs}")
    code = (
        "import importlib.util, sys\n"
        "from eac.bench import models\n"
        f"models.{loader}()\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'torchvision'),"
        " importlib.util.find_spec('torchvision') is None)\n"
    )
    assert run_python(code) == "[] True"


def test_the_reference_generator_still_runs_after_the_shim_is_gone():
    """segment-anything bound the shim's functions at import: they keep working without sys.modules entries."""
    if tvshim.torchvision_available():
        pytest.skip("torchvision is installed here: no shim is used")
    if importlib.util.find_spec("segment_anything") is None:
        pytest.skip("needs segment_anything")
    code = (
        "import numpy as np, torch\n"
        "from eac.bench import models\n"
        "sa = models.import_segment_anything()\n"
        "from segment_anything import automatic_mask_generator as amg\n"
        "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
        "keep = amg.batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3), 0.5)\n"
        "from segment_anything.utils.transforms import ResizeLongestSide\n"
        "img = ResizeLongestSide(32).apply_image(np.zeros((16, 8, 3), np.uint8))\n"
        "print(keep.tolist(), img.shape)\n"
    )
    assert run_python(code) == "[0, 2] (32, 16, 3)"
