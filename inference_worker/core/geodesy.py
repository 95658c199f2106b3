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


def ellipsoid_offsets(stations: Sequence[Receiver], lat: float, lon: float) -> list[float]:
    """Seconds the WGS84 geodesic from each station to (lat, lon) takes beyond the sphere's
    great circle: up to about 0.5 % of the distance (a microsecond every 300 m), and so slowly
    varying that the value at a grid's centre holds across a refined grid."""
    return [
        (geodesic_m(s.lat, s.lon, lat, lon) - float(great_circle_m(s.lat, s.lon, lat, lon)))
        / SPEED_OF_LIGHT_M_S
        for s in stations
    ]


def great_circle_m(lat1: float, lon1: float, lat2: np.ndarray | float, lon2: np.ndarray | float):
    """Great-circle distance in metres (haversine on a sphere of the Earth's mean radius)."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - lon1)
    h = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
