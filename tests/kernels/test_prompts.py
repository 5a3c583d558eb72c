"""Prompt schedules of the automatic mask generator (eac.kernels.prompts)."""

from __future__ import annotations

import numpy as np
import pytest
from eac.kernels import prompts as pr
from eac.kernels.masks import point_grid


def test_grid_is_one_level_in_grid_order():
    (level,) = pr.schedule_levels(5, "grid")
    assert np.array_equal(level, np.arange(25))


@pytest.mark.parametrize(("side", "sizes"), [(32, (64, 192, 768)), (24, (36, 108, 432)), (3, (1, 3, 5))])
def test_coarse_to_fine_partitions_the_grid(side, sizes):
    levels = pr.schedule_levels(side, "coarse-to-fine")
    assert tuple(len(level) for level in levels) == sizes
    assert np.array_equal(np.sort(np.concatenate(levels)), np.arange(side * side))
    # the first level spans the grid evenly: every 4th row and column
    rows, cols = np.divmod(levels[0], side)
    assert set(rows) == set(cols) == set(range(0, side, 4))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown prompt schedule"):
        pr.schedule_levels(4, "random")


def test_covered_points_respect_the_erosion():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 5:15, 5:15] = True
    points = np.array([[10.5, 10.5], [5.2, 10.0], [6.9, 6.9], [2.0, 2.0], [19.9, 25.0]])
    eroded = pr.covered_map(mask, (20, 20), erosion=1)
    assert pr.covered_points(eroded, points).tolist() == [True, False, True, False, False]
    plain = pr.covered_map(mask, (20, 20), erosion=0)
    assert pr.covered_points(plain, points).tolist() == [True, True, True, False, False]
    assert not pr.covered_map(np.zeros((0, 20, 20), bool), (20, 20), 1).any()


def test_levels_index_the_generator_grid():
    """The indices address point_grid's row-major layout: level 0 is where x and y are both on every 4th cell."""
    grid = point_grid(8)
    first = grid[pr.schedule_levels(8, "coarse-to-fine")[0]]
    cell = (first * 8 - 0.5).round().astype(int)
    assert np.all(cell % 4 == 0)
