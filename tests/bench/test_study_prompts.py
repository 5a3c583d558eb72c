"""`python -m eac.bench.study_prompts`: what a sparser schedule loses against the 32×32 grid, and its table."""

from __future__ import annotations

import numpy as np
from eac.bench import scene_metrics as sm
from eac.bench import study_prompts as sp


def _square(y: int, x: int, side: int = 8, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y:y + side, x:x + side] = True
    return mask


def test_lost_against_counts_objects_and_concepts_the_reference_had():
    objects = np.stack([_square(2, 2), _square(20, 20)])
    full = np.stack([_square(2, 2), _square(20, 20), _square(2, 20)])  # both objects and one extra concept
    sparse = np.stack([_square(2, 2)])  # the second object and the extra concept are gone
    reference = ([sm.score_scene(full, objects)], [full])
    other = ([sm.score_scene(sparse, objects)], [sparse])
    lost = sp.lost_against(reference, other)
    assert lost == {"objects_lost": 1, "concepts_lost_per_scene": 2.0, "concepts_lost_fraction": 2 / 3}
    assert sp.lost_against(reference, reference)["objects_lost"] == 0
    empty = ([sm.score_scene(np.zeros((0, 32, 32), bool), objects)], [np.zeros((0, 32, 32), bool)])
    assert sp.lost_against(reference, empty)["concepts_lost_fraction"] == 1.0


def test_markdown_has_a_row_per_schedule_and_the_default_rule():
    objects = np.stack([_square(2, 2)])
    summary = sm.summarise([sm.score_scene(objects, objects)])
    rows = [{"schedule": name, **summary, "prompts_per_scene": 1024.0 * (1 - i / 10), "decoder_runs_saved": i / 10,
             "objects_lost": 0, "concepts_lost_per_scene": 0.0, "recall_within_margin": i != 2}
            for i, (name, _) in enumerate(sp.SCHEDULES)]
    text = sp.markdown({"command": "python -m eac.bench.study_prompts", "recall_iou": sm.RECALL_IOU,
                        "duplicate_iou": sm.DUPLICATE_IOU, "sets": {"object scenes": rows}})
    for name, _ in sp.SCHEDULES:
        assert f"| {name} | 100.0 % (2.5–100.0) |" in text  # one object recovered: the exact interval
    assert text.count("| yes |") == len(sp.SCHEDULES) - 1 and text.count("| no |") == 1


def test_the_record_names_the_sam_folder_relative_to_the_checkout(tmp_path):
    from eac.bench.study_prompts import shown_path
    from eac.engine.demo import demo_sam_path

    assert shown_path(demo_sam_path()) == "engine/data/demo_sam"
    assert shown_path(tmp_path) == str(tmp_path)  # outside the checkout: as given
