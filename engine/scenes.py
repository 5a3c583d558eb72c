"""Synthetic scenes whose right explanation is known.

Each scene is a textured background with a few coloured shapes. Exactly one
shape is red: its *shape* is the scene's class (``SHAPES``); the other shapes
are distractors in other colours. A classifier trained on such scenes must look
at the red shape, so the concept covering it is the right top concept. The
demo classifier shipped with eac and the test fixtures are trained on them
(``bench/train_demo.py``).

Pure numpy/opencv; deterministic given a :class:`numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .concepts import Concepts, Frame

#: Class names, in class-index order.
SHAPES = ("disk", "square", "triangle", "cross")
#: The colour marking the object that decides the class (RGB).
KEY_COLOUR = (215, 35, 35)
#: Distractor colours (RGB): none of them reads as red.
DISTRACTOR_COLOURS = ((40, 90, 220), (40, 170, 70), (225, 200, 40), (150, 150, 150), (140, 60, 170))
#: Object radius as a fraction of the scene side.
MIN_RADIUS_FRAC, MAX_RADIUS_FRAC = 0.09, 0.16
#: Number of distractor shapes per scene (inclusive range).
MIN_DISTRACTORS, MAX_DISTRACTORS = 1, 3
_PLACEMENT_TRIES = 200


@dataclass
class Scene:
    """One generated scene.

    Attributes
    ----------
    image : ndarray of uint8, H×W×3
        RGB image.
    label : int
        Class index (index into ``SHAPES``) of the red shape.
    key_mask : ndarray of bool, H×W
        Pixels of the red shape.
    object_masks : ndarray of bool, M×H×W
        Every shape, the red one first.
    """

    image: np.ndarray
    label: int
    key_mask: np.ndarray
    object_masks: np.ndarray

    @property
    def class_name(self) -> str:
        return SHAPES[self.label]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, low-contrast textured background (H×W×3 float32, 0-255)."""
    base = rng.uniform(70, 170, size=3)
    coarse = rng.normal(0, 1, size=(8, 8, 3)).astype(np.float32)
    coarse = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 16)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)[..., None]
    fine = rng.normal(0, 6, size=(size, size, 3))
    # Keep the background away from red: cap the red excess over green/blue.
    img = base + 18 * coarse + rng.uniform(5, 15) * stripes + fine
    img[..., 0] = np.minimum(img[..., 0], img[..., 1:].mean(axis=-1) + 25)
    return np.clip(img, 0, 255).astype(np.float32)


def shape_mask(shape: str, size: int, center: tuple[float, float], radius: float, angle: float = 0.0) -> np.ndarray:
    """Boolean H×W mask of one shape (``disk``, ``square``, ``triangle``, ``cross``)."""
    canvas = np.zeros((size, size), np.uint8)
    cx, cy = center
    if shape == "disk":
        cv2.circle(canvas, (round(cx), round(cy)), round(radius), 1, -1)
        return canvas.astype(bool)
    if shape == "square":
        k = np.arange(4)
        theta = angle + np.pi / 4 + k * np.pi / 2
        r = radius * 1.0
    elif shape == "triangle":
        k = np.arange(3)
        theta = angle - np.pi / 2 + k * 2 * np.pi / 3
        r = radius * 1.25
    elif shape == "cross":
        arm = radius * 0.38
        pts = np.array([(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
                        (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = pts @ rot.T + (cx, cy)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
        return canvas.astype(bool)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def make_scene(rng: np.random.Generator, size: int = 128, label: int | None = None) -> Scene:
    """Generate one scene of ``size``×``size`` pixels.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one).
    size : int
        Side of the square image.
    label : int, optional
        Force the class of the red shape (random when None).
    """
    image = _texture(rng, size)
    label = int(rng.integers(len(SHAPES))) if label is None else int(label)
    n_distractors = int(rng.integers(MIN_DISTRACTORS, MAX_DISTRACTORS + 1))
    shapes = [SHAPES[label]] + [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=n_distractors)]
    picks = rng.integers(len(DISTRACTOR_COLOURS), size=n_distractors)
    colours = [KEY_COLOUR] + [DISTRACTOR_COLOURS[int(i)] for i in picks]
    occupied = np.zeros((size, size), bool)
    masks = []
    for shape, colour in zip(shapes, colours):
        for _ in range(_PLACEMENT_TRIES):
            radius = rng.uniform(MIN_RADIUS_FRAC, MAX_RADIUS_FRAC) * size
            margin = radius * 1.3 + 1
            center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
            mask = shape_mask(shape, size, center, radius, angle=rng.uniform(-0.4, 0.4))
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if not (grown & occupied).any():
                break
        else:  # crowded scene: accept overlap with earlier shapes (drawn later, so on top)
            pass
        jitter = rng.normal(0, 8, size=3)
        image[mask] = np.clip(np.array(colour) + jitter, 0, 255)
        occupied |= mask
        masks.append(mask)
    # Later shapes may cover earlier ones: keep masks exclusive, key first.
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            masks[i] &= ~masks[j]
    image = np.clip(image + rng.normal(0, 3, size=image.shape), 0, 255).astype(np.uint8)
    return Scene(image=image, label=label, key_mask=masks[0], object_masks=np.stack(masks))


def scene_concepts(scene: Scene, background_cells: int = 2) -> Concepts:
    """Concepts with a known right answer: each shape, plus background tiles.

    The red shape is concept 0. The background (pixels of no shape) is split
    into ``background_cells``×``background_cells`` tiles. Concepts that end up
    empty are dropped.
    """
    size = scene.image.shape[0]
    objects = list(scene.object_masks)
    background = ~np.any(scene.object_masks, axis=0)
    edges = np.linspace(0, size, background_cells + 1).round().astype(int)
    tiles = []
    for r in range(background_cells):
        for c in range(background_cells):
            tile = np.zeros_like(background)
            tile[edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = True
            tiles.append(tile & background)
    masks = np.stack(objects + [t for t in tiles if t.any()])
    return Concepts(masks=masks, scores=None, source="scene", frame=Frame.identity((size, size)),
                    info={"key_concept": 0, "label": scene.label})
