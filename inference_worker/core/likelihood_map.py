"""A position likelihood on a grid, drawn for people and maps: GeoJSON contours and a PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, cast

import contourpy
import numpy as np
from PIL import Image, ImageDraw

from inference_worker.core.ellipse import scale_for_confidence

CONTOUR_LEVELS = (0.68, 0.95)
"""Confidence of each likelihood contour: the region where the log-likelihood is within
``-chi2_2(p)/2`` of its peak (exact for a Gaussian likelihood)."""


def contour_features(
    lats: np.ndarray,
    lons: np.ndarray,
    log_likelihood: np.ndarray,
    levels: Sequence[float] = CONTOUR_LEVELS,
) -> list[dict[str, Any]]:
    """GeoJSON features (MultiPolygon) of the likelihood's contours, one per confidence level.

    ``log_likelihood`` has shape ``(len(lats), len(lons))`` and its peak at 0.
    """
    generator = contourpy.contour_generator(
        x=lons, y=lats, z=log_likelihood, line_type=contourpy.LineType.Separate
    )
    features = []
    for level in levels:
        threshold = -0.5 * scale_for_confidence(level) ** 2
        rings = []
        lines = cast(list[np.ndarray], generator.lines(threshold))
        for line in lines:
            ring = [[round(float(x), 6), round(float(y), 6)] for x, y in line]
            if len(ring) < 3:
                continue
            if ring[0] != ring[-1]:
                ring.append(ring[0])  # a contour cut by the grid's edge, closed along it
            rings.append([ring])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": rings},
                "properties": {"kind": "likelihood_contour", "confidence": level},
            }
        )
    return features


def _colour(values: np.ndarray) -> np.ndarray:
    """A dark-blue -> yellow ramp of values in [0, 1] as RGB bytes."""
    stops = np.array(
        [
            [13, 8, 135],
            [84, 2, 163],
            [139, 10, 165],
            [185, 50, 137],
            [219, 92, 104],
            [244, 136, 73],
            [254, 188, 43],
            [240, 249, 33],
        ],
        dtype=np.float64,
    )
    position = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(stops) - 1)
    fraction = (position - low)[..., None]
    return (stops[low] * (1 - fraction) + stops[high] * fraction).astype(np.uint8)


def render_png(
    lats: np.ndarray,
    lons: np.ndarray,
    log_likelihood: np.ndarray,
    *,
    points: Sequence[tuple[float, float, str]] = (),
    notes: Sequence[str] = (),
    size: int = 480,
) -> bytes:
    """A PNG of the likelihood (north up), with ``(lat, lon, label)`` points marked and
    ``notes`` written along its top: the likelihood's 68 % and 95 % regions in colour, the rest
    dark."""
    peak = log_likelihood - log_likelihood.max()
    floor = -0.5 * scale_for_confidence(0.999) ** 2
    shade = 1.0 - np.clip(peak / floor, 0.0, 1.0)
    rgb = _colour(shade[::-1])  # row 0 of the image is the northernmost latitude
    image = Image.fromarray(rgb, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    to_x = lambda lon: (lon - lons[0]) / (lons[-1] - lons[0]) * (size - 1)  # noqa: E731
    to_y = lambda lat: (lats[-1] - lat) / (lats[-1] - lats[0]) * (size - 1)  # noqa: E731
    for index, (lat, lon, label) in enumerate(points):
        x, y = to_x(lon), to_y(lat)
        if not (0 <= x < size and 0 <= y < size):
            continue
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=(255, 255, 255), width=2)
        # labels alternate above and below their mark, so that close points stay readable, and
        # go left of a mark near the right edge rather than off the picture
        width = draw.textlength(label)
        left = x + 6 if x + 6 + width < size else x - 6 - width
        draw.text((left, y - 14 if index % 2 else y + 2), label, fill=(255, 255, 255))
    for row, note in enumerate(notes):
        draw.text((6, 4 + 14 * row), note, fill=(255, 255, 255))
    draw.text(
        (6, size - 16),
        f"{lats[0]:.4f}..{lats[-1]:.4f} N  {lons[0]:.4f}..{lons[-1]:.4f} E",
        fill=(255, 255, 255),
    )
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
