"""Distances on the Earth for time differences of arrival: great circles on a sphere (fast, for
wide grids) and geodesics on the WGS84 ellipsoid (pyproj), which differ by up to ~0.5 % of a
path: a microsecond of travel time every 300 m."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyproj

from inference_worker.core.contract import Receiver

SPEED_OF_LIGHT_M_S = 299_792_458.0
EARTH_RADIUS_M = 6_371_008.8

_WGS84 = pyproj.Geod(ellps="WGS84")


def geodesic_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres along the WGS84 ellipsoid (GeographicLib's geodesic)."""
    return float(_WGS84.inv(lon1, lat1, lon2, lat2)[2])


def ellipsoid_offsets(
    stations: Sequence[Receiver], lat: float, lon: float, layer_height_m: float = 0.0
) -> list[float]:
    """Seconds the path along the WGS84 geodesic from each station to (lat, lon) takes beyond
    the path along the sphere's great circle (:func:`path_m` of each): up to about 0.5 % of the
    distance (a microsecond every 300 m), and so slowly varying that the value at a grid's
    centre holds across a refined grid."""
    return [
        float(
            path_m(geodesic_m(s.lat, s.lon, lat, lon), layer_height_m)
            - path_m(great_circle_m(s.lat, s.lon, lat, lon), layer_height_m)
        )
        / SPEED_OF_LIGHT_M_S
        for s in stations
    ]


def path_m(ground_m: np.ndarray | float, layer_height_m: float = 0.0) -> np.ndarray | float:
    """How far a signal travels between two points ``ground_m`` apart along the ground: that
    distance along the ground (``layer_height_m`` 0: ground wave), or by one hop off a layer
    ``layer_height_m`` high (skywave: up to the layer half-way, reflected, down again, over a
    sphere of the Earth's mean radius)."""
    if layer_height_m == 0:
        return ground_m
    radius, top = EARTH_RADIUS_M, EARTH_RADIUS_M + layer_height_m
    half = np.asarray(ground_m) / radius / 2
    return 2 * np.sqrt(radius**2 + top**2 - 2 * radius * top * np.cos(half))


def great_circle_m(lat1: float, lon1: float, lat2: np.ndarray | float, lon2: np.ndarray | float):
    """Great-circle distance in metres (haversine on a sphere of the Earth's mean radius)."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - lon1)
    h = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
