"""Concepts scored against known objects (eac.bench.scene_metrics): recall, near-duplicates, leftovers."""

from __future__ import annotations

import numpy as np
from eac.bench import scene_metrics as sm


def box(y0, y1, x0, x1, size=40):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_recall_duplicates_and_leftovers():
    a, b = box(2, 12, 2, 12), box(20, 30, 20, 30)
    objects = np.stack([a, b])
    background = ~objects.any(axis=0)
    almost_a = a.copy()
    almost_a[2, 2] = False  # IoU 0.99 with a: recovers it, and is a near-duplicate of a
    part_of_b = box(20, 24, 20, 30)  # 40 % of b
    loose_b = box(19, 31, 19, 31)  # IoU 100/144 = 0.69 with b
    piece = box(32, 40, 0, 20)  # only background
    merged = box(0, 32, 0, 32)  # both objects and the background between them
    concepts = np.stack([a, almost_a, part_of_b, loose_b, background, piece, merged])
    score = sm.score_scene(concepts, objects)
    assert score.objects == 2 and score.recovered == 1  # b has no concept of IoU ≥ 0.85
    assert score.best_iou[0] == 1.0 and 0.6 < score.best_iou[1] < 0.85
    assert score.duplicates == 2  # a and almost_a, each counted
    assert score.leftovers == {"object part": 1, "imprecise object": 1, "background": 1, "background piece": 1,
                               "merged objects": 1}
    summary = sm.summarise([score, sm.score_scene(np.zeros((0, 40, 40), bool), objects)])
    assert summary["recall"] == 0.25 and summary["concepts_per_scene"] == 3.5
    assert summary["duplicate_fraction"] == 2 / 7
