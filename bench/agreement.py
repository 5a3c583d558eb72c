"""Agreement between two results on the same input: rankings of concept values, and mask sets."""

from __future__ import annotations

import numpy as np

#: Top-k overlap reported beside Spearman's correlation.
TOP_K = 3


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` (A×H×W) with every mask of ``b`` (B×H×W) → A×B."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def ranking_agreement(values: np.ndarray, reference: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """Spearman correlation, top-1 match and top-k overlap of two value vectors (N each)."""
    from ..engine.metrics import spearman

    values, reference = np.asarray(values, float), np.asarray(reference, float)
    k = min(k, len(values))
    top_v = np.argsort(-values, kind="stable")
    top_r = np.argsort(-reference, kind="stable")
    return {
        "spearman": float(spearman(values, reference)) if len(values) > 1 else float("nan"),
        "top1": float(top_v[0] == top_r[0]) if len(values) else float("nan"),
        f"top{TOP_K}": float(len(set(top_v[:k]) & set(top_r[:k])) / k) if k else float("nan"),
    }


def mask_agreement(engine_masks: np.ndarray, reference_masks: np.ndarray) -> dict[str, float]:
    """Mean best IoU of each reference mask among the engine's masks (E×H×W, R×H×W), and the reverse."""
    iou = mask_iou_matrix(reference_masks, engine_masks)
    return {
        "reference_masks": len(reference_masks),
        "engine_masks": len(engine_masks),
        "mean_best_iou_reference_in_engine": float(iou.max(1).mean()) if iou.size else float("nan"),
        "mean_best_iou_engine_in_reference": float(iou.max(0).mean()) if iou.size else float("nan"),
    }
