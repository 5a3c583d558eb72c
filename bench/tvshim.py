"""A minimal torchvision stand-in, so segment-anything's own generator runs without torchvision.

segment-anything imports exactly four torchvision functions:
``torchvision.ops.boxes.batched_nms`` and ``box_area`` (automatic mask
generator) and ``torchvision.transforms.functional.resize`` and
``to_pil_image`` (``ResizeLongestSide.apply_image``). Tests and benchmarks
compare eac with segment-anything's real ``SamAutomaticMaskGenerator`` and
``SamPredictor``; on machines where torchvision cannot be installed,
:func:`install` registers this module's plain-torch / PIL versions under the
torchvision names. When torchvision *is* importable nothing is installed and
the real one is used.

The replacements follow torchvision's semantics for the inputs segment-anything
gives them: greedy NMS in descending score order suppressing boxes whose IoU
with a kept box is *greater* than the threshold (boxes ``x1, y1, x2, y2``,
area ``(x2-x1)·(y2-y1)``), per-category via coordinate offsets; PIL bilinear
resize of an HWC uint8 image to (h, w).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator

#: Marker attribute set on the shim's modules.
SHIM_MARKER = "__eac_tvshim__"


def box_area(boxes):
    """Areas of N×4 ``x1, y1, x2, y2`` boxes (torch tensor, N)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes, scores, iou_threshold: float):
    """Greedy NMS; indices of kept boxes (int64) in descending score order."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    areas = box_area(boxes)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    suppress = iou > iou_threshold  # NaN (two empty boxes) compares False, as in torchvision
    n = boxes.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return order[torch.as_tensor(keep, dtype=torch.int64)]


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within each category ``idxs`` (torchvision's coordinate-offset trick)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_pil_image(pic, mode=None):
    """HWC uint8 numpy array (or CHW tensor) → PIL image."""
    import numpy as np
    from PIL import Image

    if hasattr(pic, "detach"):
        pic = pic.detach().cpu().numpy()
        if pic.ndim == 3 and pic.shape[0] in (1, 3, 4):
            pic = np.transpose(pic, (1, 2, 0))
    pic = np.asarray(pic)
    if pic.ndim == 3 and pic.shape[2] == 1:
        pic = pic[:, :, 0]
    return Image.fromarray(pic, mode=mode)


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """Resize a PIL image to ``size`` = (h, w) (or shorter side = int) with PIL bilinear."""
    from PIL import Image

    if isinstance(size, int):
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        size = (new_long, new_short) if w <= h else (new_short, new_long)
    h, w = int(size[0]), int(size[1])
    resample = Image.BILINEAR if interpolation is None else interpolation
    return img.resize((w, h), resample)


def torchvision_available() -> bool:
    """True when a real torchvision can be imported."""
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return not getattr(existing, SHIM_MARKER, False)
    return importlib.util.find_spec("torchvision") is not None


def install() -> bool:
    """Register the shim as ``torchvision`` unless torchvision is importable.

    Returns
    -------
    bool
        True when the shim is (now) in place, False when the real torchvision is used.
    """
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return bool(getattr(existing, SHIM_MARKER, False))
    if importlib.util.find_spec("torchvision") is not None:
        return False
    this = sys.modules[__name__]

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() works on it
        setattr(mod, SHIM_MARKER, True)
        for key, value in attrs.items():
            setattr(mod, key, value)
        sys.modules[name] = mod
        return mod

    boxes = module("torchvision.ops.boxes", batched_nms=this.batched_nms, box_area=this.box_area, nms=this.nms)
    ops = module("torchvision.ops", boxes=boxes, batched_nms=this.batched_nms, box_area=this.box_area, nms=this.nms)
    functional = module("torchvision.transforms.functional", resize=this.resize, to_pil_image=this.to_pil_image)
    transforms = module("torchvision.transforms", functional=functional)
    module("torchvision", ops=ops, transforms=transforms, __version__="0+eac.tvshim")
    return True


def _shim_names() -> list[str]:
    return [name for name, mod in sys.modules.items()
            if (name == "torchvision" or name.startswith("torchvision.")) and getattr(mod, SHIM_MARKER, False)]


@contextlib.contextmanager
def installed() -> Iterator[bool]:
    """Install the shim for the duration of a ``with`` block (e.g. while importing segment-anything).

    Modules imported inside the block keep the functions they bound; the
    ``torchvision`` entries this call added to ``sys.modules`` are removed on
    exit, so code that later checks for torchvision sees the truth.

    Yields
    ------
    bool
        True when the shim is in place, False when a real torchvision is used.
    """
    had_shim = bool(_shim_names())
    active = install()
    try:
        yield active
    finally:
        if active and not had_shim:
            for name in _shim_names():
                del sys.modules[name]
