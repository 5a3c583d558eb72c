"""Pictures of explanations, made from an :class:`~eac.engine.explanation.Explanation` (opencv; matplotlib
for the values figure, the ``plot`` extra).

- :mod:`~eac.engine.render.overlay` — :func:`render_overlay`: the top concepts on the image, with a legend;
- :mod:`~eac.engine.render.heatmap` — :func:`render_heatmap`: every concept's value painted over the image;
- :mod:`~eac.engine.render.values` — :func:`render_values_figure`: values with 95 % intervals;
- :mod:`~eac.engine.render.cutout` — :func:`cutout`: one concept alone;
- :mod:`~eac.engine.render.scale` — the diverging colour scale they share (:func:`value_colour`);
- :mod:`~eac.engine.render.text` — number format (:func:`format_value`) and text drawing;
- :mod:`~eac.engine.render.layout` — sizes: the image shown large, bounded panels;
- :mod:`~eac.engine.render.files` — :func:`write_pictures`: the picture files of a saved explanation.

Every picture is BGR ``uint8`` (opencv's order), at most 1600 pixels wide and at most twice as wide as tall
or as tall as wide.
"""

from .cutout import cutout
from .files import CUTOUT_PATTERN, HEATMAP_NAME, OVERLAY_NAME, VALUES_NAME, write_pictures
from .heatmap import render_heatmap
from .overlay import render_overlay
from .scale import value_colour
from .text import format_value
from .values import PLOT_HINT, plot_available, render_values_figure

__all__ = [
    "CUTOUT_PATTERN", "HEATMAP_NAME", "OVERLAY_NAME", "PLOT_HINT", "VALUES_NAME", "cutout", "format_value",
    "plot_available", "render_heatmap", "render_overlay", "render_values_figure", "value_colour",
    "write_pictures",
]
