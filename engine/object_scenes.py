"""Generated scenes of many objects, every object's visible mask known (SAM's training and test data).

:mod:`eac.engine.scenes` makes the demo's scenes (one red shape whose shape is the
class, 1–3 distractors, never changed for a seed). The scenes here are for
segmentation: 1–6 objects of eight shapes, sizes from small to large, any colour
(the demo's palette included), plain, textured and gradient backgrounds, objects
that overlap and occlude each other and objects cut by the border. Every object's
*visible* mask (what is left after the objects drawn on top of it) is returned.

An object whose visible part would be too small, a thin sliver or in several
pieces is not drawn at all, so every listed object is one region a person would
outline and nothing unlisted is drawn: the pixels of no object are background.

Pure numpy/opencv; deterministic given a :class:`numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scenes import DISTRACTOR_COLOURS, KEY_COLOUR, _texture, make_scene, shape_mask

#: Shapes drawn (the demo's four plus four more).
OBJECT_SHAPES = ("disk", "square", "triangle", "cross", "ellipse", "rectangle", "hexagon", "star")
#: Objects tried per scene (inclusive range); fewer may survive the visibility rules.
MIN_OBJECTS, MAX_OBJECTS = 1, 6
#: Object radius as a fraction of the scene side (11.5–25.6 px at 128: from the demo's smallest shapes up).
#: A first SAM with 8×8-pixel patches, trained with radii down to 7.7 px, gave objects under 300 px an
#: IoU ≥ 0.85 mask from its best candidate only half the time (the larger ones 84–96 %); the smallest radius
#: stayed the demo's when the shipped SAM moved to 4×4-pixel patches.
MIN_RADIUS_FRAC, MAX_RADIUS_FRAC = 0.09, 0.2
#: Probability that an object's centre may lie anywhere (so it may be cut by the border); otherwise it
#: stays one radius inside.
BORDER_PROBABILITY = 0.3
#: Probability that an object is placed where it overlaps no earlier object (else anywhere: occlusion).
SEPARATE_PROBABILITY = 0.5
_PLACEMENT_TRIES = 30
#: Visibility rules: an object is drawn only if at least this many pixels per 128² scene are visible ...
MIN_VISIBLE_PIXELS_128 = 120
#: ... and this fraction of its own area ...
MIN_VISIBLE_FRACTION = 0.5
#: ... and its visible part is one 8-connected piece that keeps this fraction of its pixels under a 3×3
#: erosion (no slivers a pixel or two wide).
MIN_ERODED_FRACTION = 0.45
#: Colours: least RGB distance between an object's colour and the background under it (10th percentile
#: of the per-pixel distances) and between the colours of objects that touch: the object must be visible.
MIN_CONTRAST = 60.0
_COLOUR_TRIES = 50
#: Probability that an object's colour comes from the demo's palette (red key and distractors).
PALETTE_PROBABILITY = 0.3
#: Object fills: plain (colour + jitter), shaded (a linear ramp of ±SHADE_AMPLITUDE) or striped.
FILL_KINDS = ("plain", "shaded", "striped")
FILL_WEIGHTS = (0.6, 0.25, 0.15)
SHADE_AMPLITUDE = 25.0
STRIPE_AMPLITUDE = 14.0
COLOUR_JITTER = 8.0
#: Backgrounds and their probabilities: the demo's muted texture, a texture of any hue, plain, gradient.
BACKGROUNDS = ("demo_texture", "texture", "plain", "gradient")
BACKGROUND_WEIGHTS = (0.3, 0.25, 0.25, 0.2)
#: Pixel noise of the final image (standard deviation, 0-255 scale), and the chance of a slight blur
#: (soft edges, as a resized photograph has).
IMAGE_NOISE = 3.0
BLUR_PROBABILITY = 0.25
BLUR_SIGMA = 0.6
_REFERENCE_SIDE = 128
#: Scene side of the SAM trained on these scenes (the demo's scenes, and its encoder input).
SCENE_SIZE = 128
#: Seed streams (numpy SeedSequence entropy ``[stream, seed, ...]``): training scenes, and held-out scenes
#: that training never draws from (the training record, the tests and the prompt study use them).
TRAIN_STREAM = 17_000
HELD_OUT_STREAM = 17_001


@dataclass
class ObjectScene:
    """One generated scene.

    Attributes
    ----------
    image : ndarray of uint8, H×W×3
        RGB image.
    object_masks : ndarray of bool, M×H×W
        Visible pixels of each object, bottom-most first; disjoint. M ≥ 1.
    shapes : tuple of str
        Shape of each object.
    background : str
        Kind of background (one of :data:`BACKGROUNDS`).
    occluded : tuple of bool
        Whether each object is partly hidden by an object drawn on top of it.
    """

    image: np.ndarray
    object_masks: np.ndarray
    shapes: tuple[str, ...]
    background: str
    occluded: tuple[bool, ...]

    @property
    def background_mask(self) -> np.ndarray:
        """H×W bool: the pixels of no object."""
        return ~np.any(self.object_masks, axis=0)


def _polygon(size: int, center: tuple[float, float], radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    pts = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def object_mask(shape: str, size: int, center: tuple[float, float], radius: float, angle: float,
                aspect: float) -> np.ndarray:
    """Boolean size×size mask of one shape of :data:`OBJECT_SHAPES`.

    ``aspect`` (0.5–1) flattens ellipses and rectangles; the demo's four shapes
    are drawn by :func:`eac.engine.scenes.shape_mask`.
    """
    if shape in ("disk", "square", "triangle", "cross"):
        return shape_mask(shape, size, center, radius, angle=angle)
    if shape == "ellipse":
        canvas = np.zeros((size, size), np.uint8)
        axes = (max(1, round(radius)), max(1, round(radius * aspect)))
        cv2.ellipse(canvas, (round(center[0]), round(center[1])), axes, float(np.degrees(angle)), 0, 360, 1, -1)
        return canvas.astype(bool)
    if shape == "rectangle":
        half = np.array([radius, radius * aspect])
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = corners @ rot.T + np.asarray(center)
        canvas = np.zeros((size, size), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
        return canvas.astype(bool)
    if shape == "hexagon":
        k = np.arange(6)
        return _polygon(size, center, np.full(6, radius), angle + k * np.pi / 3)
    if shape == "star":
        k = np.arange(10)
        radii = np.where(k % 2 == 0, radius * 1.15, radius * 0.55)
        return _polygon(size, center, radii, angle - np.pi / 2 + k * np.pi / 5)
    raise ValueError(f"unknown shape {shape!r}; expected one of {OBJECT_SHAPES}")


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """H×W×3 float32 background (0-255) of one kind."""
    if kind == "demo_texture":
        return _texture(rng, size)
    base = rng.uniform(20, 235, size=3)
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "gradient":
        other = rng.uniform(20, 235, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)[..., None]
        return ((1 - t) * base + t * other).astype(np.float32)
    coarse = cv2.resize(rng.normal(0, 1, size=(8, 8, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * size * 2 * np.pi / rng.uniform(5, 16))[..., None]
    img = base + rng.uniform(8, 25) * coarse + rng.uniform(4, 14) * stripes + rng.normal(0, 5, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _visible_enough(mask: np.ndarray, full_area: int, size: int) -> bool:
    area = int(mask.sum())
    if area < MIN_VISIBLE_PIXELS_128 * (size / _REFERENCE_SIDE) ** 2 or area < MIN_VISIBLE_FRACTION * full_area:
        return False
    pieces, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if pieces != 2:  # label 0 is the rest of the image
        return False
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return int(eroded.sum()) >= MIN_ERODED_FRACTION * area


def _pick_colour(rng: np.random.Generator, under: np.ndarray, neighbours: list[np.ndarray]) -> np.ndarray | None:
    """An RGB colour far from the pixels ``under`` (K×3) and from every neighbour colour; None if none found."""
    for _ in range(_COLOUR_TRIES):
        if rng.random() < PALETTE_PROBABILITY:
            palette = (KEY_COLOUR, *DISTRACTOR_COLOURS)
            colour = np.asarray(palette[int(rng.integers(len(palette)))], np.float32)
        else:
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if len(under) and np.percentile(np.linalg.norm(under - colour, axis=1), 10) < MIN_CONTRAST:
            continue
        if any(np.linalg.norm(colour - other) < MIN_CONTRAST for other in neighbours):
            continue
        return colour
    return None


def _fill(rng: np.random.Generator, colour: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 float32 fill of one object (plain, shaded or striped around ``colour``)."""
    colour = colour + rng.normal(0, COLOUR_JITTER, size=3)
    kind = FILL_KINDS[int(rng.choice(len(FILL_KINDS), p=FILL_WEIGHTS))]
    if kind == "plain":
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    if kind == "shaded":
        return (colour + 2 * SHADE_AMPLITUDE * ramp[..., None]).astype(np.float32)
    wave = np.sin(ramp * size * 2 * np.pi / rng.uniform(4, 9))
    return (colour + STRIPE_AMPLITUDE * wave[..., None]).astype(np.float32)


def make_object_scene(rng: np.random.Generator, size: int = 128, n_objects: int | None = None) -> ObjectScene:
    """Generate one scene of ``size``×``size`` pixels with known visible object masks.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one).
    size : int
        Side of the square image.
    n_objects : int, optional
        Objects tried (default: uniform in [MIN_OBJECTS, MAX_OBJECTS]); the
        visibility rules may drop some, but at least one is always drawn.

    Returns
    -------
    ObjectScene
    """
    kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_WEIGHTS))]
    background = _background(rng, size, kind)
    tries = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    full_masks: list[np.ndarray] = []
    shapes: list[str] = []
    occupied = np.zeros((size, size), bool)
    for _ in range(max(tries, 1)):
        shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
        separate = rng.random() < SEPARATE_PROBABILITY
        anywhere = rng.random() < BORDER_PROBABILITY
        for _ in range(_PLACEMENT_TRIES):
            radius = rng.uniform(MIN_RADIUS_FRAC, MAX_RADIUS_FRAC) * size
            lo, hi = (0.0, float(size)) if anywhere else (radius, size - radius)
            center = (rng.uniform(lo, hi), rng.uniform(lo, hi))
            mask = object_mask(shape, size, center, radius, rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.85))
            if mask.any() and not (separate and (mask & occupied).any()):
                break
        if not mask.any():
            continue
        full_masks.append(mask)
        shapes.append(shape)
        occupied |= mask

    # Top-most first: an object is drawn only if enough of it shows under the objects kept above it.
    kept: list[int] = []
    cover = np.zeros((size, size), bool)
    for i in reversed(range(len(full_masks))):
        visible = full_masks[i] & ~cover
        if _visible_enough(visible, int(full_masks[i].sum()), size):
            kept.append(i)
            cover |= full_masks[i]
    kept.reverse()  # bottom-most first, the drawing order
    if not kept:  # nothing survived: one centred object
        radius = 0.5 * (MIN_RADIUS_FRAC + MAX_RADIUS_FRAC) * size
        full_masks, shapes, kept = [object_mask("disk", size, (size / 2, size / 2), radius, 0.0, 1.0)], ["disk"], [0]

    image = background.copy()
    colours: list[np.ndarray] = []
    drawn = [full_masks[i] for i in kept]
    for k, mask in enumerate(drawn):
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        neighbours = [c for c, m in zip(colours, drawn[:k]) if (m & grown).any()]
        colour = _pick_colour(rng, image[grown & ~mask].reshape(-1, 3), neighbours)
        if colour is None:  # no colour stands out here (rare): draw another scene
            return make_object_scene(rng, size, n_objects)
        image[mask] = _fill(rng, colour, size)[mask]
        colours.append(colour)
    visible = [m.copy() for m in drawn]
    for a in range(len(visible)):
        for b in range(a + 1, len(visible)):
            visible[a] &= ~drawn[b]
    if rng.random() < BLUR_PROBABILITY:
        image = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA)
    image = np.clip(image + rng.normal(0, IMAGE_NOISE, size=image.shape), 0, 255).astype(np.uint8)
    names = tuple(shapes[i] for i in kept)
    occluded = tuple(bool((d & ~v).any()) for d, v in zip(drawn, visible))
    return ObjectScene(image=image, object_masks=np.stack(visible), shapes=names, background=kind, occluded=occluded)


def training_scene(rng: np.random.Generator, demo_fraction: float, size: int = SCENE_SIZE
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One training scene: the demo's ``make_scene`` with probability ``demo_fraction``, else an object scene.

    Returns
    -------
    image : ndarray of uint8, H×W×3
    objects : ndarray of bool, M×H×W
        Visible mask of every object (the demo scene's empty ones dropped).
    """
    if rng.random() < demo_fraction:
        scene = make_scene(rng, size)
        return scene.image, scene.object_masks[scene.object_masks.reshape(len(scene.object_masks), -1).any(1)]
    scene = make_object_scene(rng, size)
    return scene.image, scene.object_masks


def held_out_scenes(n: int, seed: int = 0, demo: bool = False, size: int = SCENE_SIZE
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` scenes training never sees: (image, object masks) each.

    ``demo=True`` gives the demo's ``make_scene`` scenes, else object scenes.
    Scene i comes from seed stream ``[HELD_OUT_STREAM, seed, i]``.
    """
    out = []
    for i in range(n):
        rng = np.random.default_rng([HELD_OUT_STREAM, seed, i])
        out.append(training_scene(rng, 1.0 if demo else 0.0, size))
    return out


__all__ = ["HELD_OUT_STREAM", "OBJECT_SHAPES", "SCENE_SIZE", "TRAIN_STREAM", "ObjectScene", "held_out_scenes",
           "make_object_scene", "object_mask", "training_scene"]
