"""Position estimates and their uncertainty ellipses (pure maths, no I/O).

A model row is ``[lat°, lon°, σ_east m, σ_north m]`` or, with a fifth output, the east/north
correlation ρ. Together they describe a 2-D Gaussian in a local east/north frame around the
estimate. The ellipse that holds the true position with probability p has semi-axes
``k·sqrt(λ)`` along the covariance eigenvectors, with ``k = sqrt(-2 ln(1 - p))``:
a "1σ" ellipse (k = 1) holds only 39.3 %; 68 % needs k = 1.515 and 95 % needs k = 2.448.

A model calibrated level by level (``ellipse_radius_scales`` in its metadata) draws its 68 % and
95 % ellipses at ``k·r`` instead: ``r`` fitted so each holds its level on calibration captures,
where the model's errors are not quite Gaussian (the sigmas still give the 39 % ellipse).

Orientation convention: ``orientation_deg`` is the compass bearing of the semi-major axis,
degrees clockwise from true north, in [0, 180).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# WGS84
_A = 6_378_137.0
_E2 = 6.694_379_990_14e-3

DEFAULT_LEVELS = (0.6827, 0.95)
"""68.27 % (k = 1.515, the 1-D "1σ" probability) and 95 % (k = 2.448)."""


class EstimateError(ValueError):
    """The model produced an output that is not a usable estimate."""


@dataclass(frozen=True)
class Estimate:
    lat: float
    lon: float
    sigma_east_m: float
    sigma_north_m: float
    rho: float = 0.0

    def covariance(self) -> np.ndarray:
        se, sn, r = self.sigma_east_m, self.sigma_north_m, self.rho
        return np.array([[se * se, r * se * sn], [r * se * sn, sn * sn]])


@dataclass(frozen=True)
class Ellipse:
    confidence: float
    scale: float
    semi_major_m: float
    semi_minor_m: float
    orientation_deg: float

    def to_json(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "scale_k": round(self.scale, 6),
            "semi_major_m": self.semi_major_m,
            "semi_minor_m": self.semi_minor_m,
            "orientation_deg": self.orientation_deg,
        }


def scale_for_confidence(p: float) -> float:
    """k such that the k-scaled 1σ ellipse of a 2-D Gaussian holds probability p."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {p}")
    return math.sqrt(-2.0 * math.log1p(-p))


def decode_output(row: Sequence[float], layout: Sequence[str]) -> Estimate:
    """Turn one model output row into an :class:`Estimate`, checking it makes sense."""
    values = dict(zip(layout, (float(v) for v in row), strict=True))
    if not all(math.isfinite(v) for v in values.values()):
        raise EstimateError(f"model output is not finite: {values}")
    lat, lon = values["lat_deg"], values["lon_deg"]
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise EstimateError(f"model output is not a position on Earth: lat={lat}, lon={lon}")
    se, sn = values["sigma_east_m"], values["sigma_north_m"]
    if se <= 0.0 or sn <= 0.0:
        raise EstimateError(f"model output has non-positive sigma: east={se}, north={sn}")
    rho = values.get("rho", 0.0)
    if not -1.0 < rho < 1.0:
        raise EstimateError(f"model output correlation rho={rho} is outside (-1, 1)")
    return Estimate(lat, lon, se, sn, rho)


def ellipse(estimate: Estimate, confidence: float, radius_scale: float = 1.0) -> Ellipse:
    """The ellipse holding the truth with probability ``confidence`` under the model's Gaussian,
    its radii multiplied by ``radius_scale`` (a level's calibration)."""
    k = scale_for_confidence(confidence) * radius_scale
    eigenvalues, eigenvectors = np.linalg.eigh(estimate.covariance())
    minor_var, major_var = eigenvalues  # ascending
    east, north = eigenvectors[:, 1]
    bearing = math.degrees(math.atan2(east, north)) % 180.0
    return Ellipse(
        confidence=confidence,
        scale=k,
        semi_major_m=k * math.sqrt(max(major_var, 0.0)),
        semi_minor_m=k * math.sqrt(max(minor_var, 0.0)),
        orientation_deg=bearing,
    )


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """(metres per degree of latitude, metres per degree of longitude) on WGS84 at a latitude."""
    phi = math.radians(lat_deg)
    w = math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
    meridional = _A * (1.0 - _E2) / w**3
    prime_vertical = _A / w
    return math.radians(1.0) * meridional, math.radians(1.0) * prime_vertical * math.cos(phi)


def ellipse_polygon(estimate: Estimate, shape: Ellipse, vertices: int = 64) -> list[list[float]]:
    """Closed GeoJSON ring ``[[lon, lat], ...]`` (counter-clockwise, RFC 7946) of an ellipse."""
    m_per_deg_lat, m_per_deg_lon = metres_per_degree(estimate.lat)
    theta = math.radians(shape.orientation_deg)
    major = np.array([math.sin(theta), math.cos(theta)])  # unit vector (east, north)
    minor = np.array([math.cos(theta), -math.sin(theta)])
    t = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    offsets = np.outer(np.cos(t) * shape.semi_major_m, major) + np.outer(
        np.sin(t) * shape.semi_minor_m, minor
    )
    # Parametrization above runs clockwise on a map (major then minor rotated -90°); reverse it.
    offsets = offsets[::-1]
    lons = estimate.lon + offsets[:, 0] / m_per_deg_lon
    lats = estimate.lat + offsets[:, 1] / m_per_deg_lat
    ring: list[list[float]] = np.round(np.column_stack([lons, lats]), 7).tolist()
    ring.append(ring[0])
    return ring


def describe(
    estimate: Estimate,
    levels: Sequence[float] = DEFAULT_LEVELS,
    radius_scales: Mapping[float, float] | None = None,
) -> dict[str, Any]:
    """The JSON result of a located capture: position, sigmas and one ellipse per level (its
    radii times the level's ``radius_scales`` entry, if any)."""
    ellipses = {}
    for level in levels:
        shape = ellipse(estimate, level, (radius_scales or {}).get(level, 1.0))
        ellipses[f"{round(level * 100)}"] = {
            **shape.to_json(),
            "polygon": {"type": "Polygon", "coordinates": [ellipse_polygon(estimate, shape)]},
        }
    return {
        "lat": estimate.lat,
        "lon": estimate.lon,
        "sigma_x_m": estimate.sigma_east_m,
        "sigma_y_m": estimate.sigma_north_m,
        "rho": estimate.rho,
        "ellipse_orientation_convention": "degrees clockwise from true north, semi-major axis",
        "ellipses": ellipses,
    }


def offset_m(estimate: Estimate, lat: float, lon: float) -> tuple[float, float]:
    """(east, north) metres from the estimate to a point, in the estimate's local frame."""
    m_per_deg_lat, m_per_deg_lon = metres_per_degree(estimate.lat)
    return (lon - estimate.lon) * m_per_deg_lon, (lat - estimate.lat) * m_per_deg_lat


def mahalanobis_squared(estimate: Estimate, lat: float, lon: float) -> float:
    """Squared Mahalanobis distance of a point under the estimate's Gaussian (χ² with 2 dof)."""
    d = np.array(offset_m(estimate, lat, lon))
    return float(d @ np.linalg.solve(estimate.covariance(), d))


def contains(
    estimate: Estimate, lat: float, lon: float, confidence: float, radius_scale: float = 1.0
) -> bool:
    """Whether a point lies inside the estimate's ellipse at ``confidence`` (radii times
    ``radius_scale``)."""
    limit = scale_for_confidence(confidence) * radius_scale
    return mahalanobis_squared(estimate, lat, lon) <= limit**2


def inside_drawn_ellipse(result: dict[str, Any], lat: float, lon: float, label: str) -> bool:
    """Whether a point lies inside the ellipse a result draws at ``label`` (``"68"``, ``"95"``),
    at that ellipse's own ``scale_k`` (a model calibrated level by level draws it apart from
    the sigmas)."""
    k = float(result["ellipses"][label]["scale_k"])
    return mahalanobis_squared(estimate_from_result(result), lat, lon) <= k * k


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * 6_371_008.8 * math.asin(math.sqrt(h))


def estimate_from_result(result: dict[str, Any]) -> Estimate:
    """The :class:`Estimate` behind a job result produced by :func:`describe`."""
    return Estimate(
        float(result["lat"]),
        float(result["lon"]),
        float(result["sigma_x_m"]),
        float(result["sigma_y_m"]),
        float(result.get("rho", 0.0)),
    )


def feature_collection(
    result: dict[str, Any], receivers: Sequence[tuple[str, float, float]] = ()
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection a web map draws as is: the estimate, its ellipses, receivers.

    Args:
        result: a job result made by :func:`describe`.
        receivers: ``(id, lat, lon)`` of the receivers to show.
    """
    features: list[dict[str, Any]] = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [result["lon"], result["lat"]]},
            "properties": {
                "kind": "estimate",
                "sigma_east_m": result["sigma_x_m"],
                "sigma_north_m": result["sigma_y_m"],
                "rho": result.get("rho", 0.0),
            },
        }
    ]
    for level, shape in sorted(result["ellipses"].items(), key=lambda item: -float(item[0])):
        features.append(
            {
                "type": "Feature",
                "geometry": shape["polygon"],
                "properties": {
                    "kind": "ellipse",
                    "confidence": shape["confidence"],
                    "semi_major_m": shape["semi_major_m"],
                    "semi_minor_m": shape["semi_minor_m"],
                    "orientation_deg": shape["orientation_deg"],
                    "label": f"{level}%",
                },
            }
        )
    for receiver_id, lat, lon in receivers:
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {"kind": "receiver", "id": receiver_id},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def tdoa_feature_collection(result: dict[str, Any]) -> dict[str, Any]:
    """A TDoA result as GeoJSON: estimate (with ``sigma_scale``, ``among_receivers``,
    ``chosen_by``, ``cautions``), ellipses and receivers (from the result itself; one left out has
    ``excluded`` and its ``reason``), any alternative crossing (``alternative``, ``weight``,
    ``among_receivers``) and the likelihood's contours."""
    stations = [(r["id"], r["lat"], r["lon"]) for r in result["receivers"]]
    collection = feature_collection(result, stations)
    for other in result.get("alternatives", []):
        alternative = feature_collection(other)["features"]
        for feature in alternative:
            feature["properties"] = {
                **feature["properties"],
                "alternative": True,
                "weight": other["weight"],
            }
            if feature["properties"]["kind"] == "estimate" and "among_receivers" in other:
                feature["properties"]["among_receivers"] = other["among_receivers"]
        collection["features"] += alternative
    left_out = {item["id"]: item["reason"] for item in result.get("excluded", [])}
    for feature in collection["features"]:
        name = feature["properties"].get("id")
        if feature["properties"]["kind"] == "estimate" and "sigma_scale" in result:
            feature["properties"]["sigma_scale"] = result["sigma_scale"]
            if not feature["properties"].get("alternative"):
                said = ("among_receivers", "chosen_by", "cautions")
                feature["properties"].update({k: result[k] for k in said if k in result})
        if feature["properties"]["kind"] == "receiver" and name in left_out:
            feature["properties"].update(excluded=True, reason=left_out[name])
    collection["features"] += result.get("likelihood_contours", [])
    return collection
