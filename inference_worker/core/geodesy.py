"""Distances on the Earth for time differences of arrival: great circles on a sphere (fast, for
wide grids) and geodesics on the WGS84 ellipsoid (pyproj), which differ by up to ~0.5 % of a
path: a microsecond of travel time every 300 m; and whether a place lies among receivers."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pyproj
import scipy.spatial

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
    return haversine_path_m(np.sin(np.asarray(ground_m) / EARTH_RADIUS_M / 2) ** 2, layer_height_m)


def haversine_path_m(
    haversines: np.ndarray, layer_height_m: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`path_m` between points whose angle apart has the :func:`haversine`
    ``haversines``: the great circle's length along the ground; by a skywave hop, from the
    cosine of half the angle, ``sqrt(1 - haversine)``, so no arcsine nor cosine is taken (a
    skywave search computes paths at every layer height on one grid of haversines). ``out``:
    an array of the haversines' shape (not the haversines themselves) to write the paths into;
    every step is taken in place (a job's search evaluates hundreds of grids)."""
    h = np.asarray(haversines)
    if out is not None and np.may_share_memory(out, h):
        raise ValueError("the paths cannot be written over their own haversines")
    path = np.empty(h.shape) if out is None else out
    if layer_height_m == 0:
        np.sqrt(h, out=path)
        np.arcsin(path, out=path)
        path *= 2 * EARTH_RADIUS_M
        return path[()] if out is None else path  # a scalar's path is a scalar
    radius, top = EARTH_RADIUS_M, EARTH_RADIUS_M + layer_height_m
    # The slant's square R² + T² - 2 R T cos, written (T - R)² + 2 R T (1 - cos) with
    # 1 - cos = h / (1 + cos): no difference of near-equal numbers for short paths.
    np.subtract(1, h, out=path)
    np.sqrt(path, out=path)
    path += 1
    np.divide(2 * radius * top * h, path, out=path)
    path += layer_height_m**2
    np.sqrt(path, out=path)
    path *= 2
    return path[()] if out is None else path


def great_circle_m(lat1: float, lon1: float, lat2: np.ndarray | float, lon2: np.ndarray | float):
    """Great-circle distance in metres (haversine on a sphere of the Earth's mean radius)."""
    return haversine_path_m(haversine(lat1, lon1, lat2, lon2))


def haversine(lat1: float, lon1: float, lat2: np.ndarray | float, lon2: np.ndarray | float):
    """The haversine of the angle between two points seen from the Earth's centre (the square
    of the sine of half of it), in [0, 1]; ``lat2``, ``lon2`` broadcast, so each latitude's and
    longitude's sines are taken once for a grid of them."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - lon1)
    h = math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    grid = h if isinstance(h, np.ndarray) else None  # a grid's steps taken in place
    return np.clip(np.add(np.sin(dp / 2) ** 2, h, out=grid), 0.0, 1.0, out=grid)


def among(stations: Sequence[Receiver], lat: float, lon: float) -> bool:
    """Whether a point lies among the receivers: inside their convex hull, drawn with great
    circles for edges (a gnomonic projection about their centre makes great circles straight).
    Of three receivers' two crossings, at most one is among them when the emitter is."""
    centre, east, north, hull = _hull(tuple((s.lat, s.lon) for s in stations))
    point = _unit(lat, lon)
    if point @ centre <= 0 or hull is None:  # the far side of the Earth, or no inside
        return False
    return bool(hull.find_simplex([point @ east, point @ north] / (point @ centre)) >= 0)


@functools.lru_cache(maxsize=8)
def _hull(
    corners: tuple[tuple[float, float], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, scipy.spatial.Delaunay | None]:
    """The receivers' gnomonic projection (its centre, east and north) and their hull in it;
    None for receivers on one great circle or at one site. Kept: every place a job finds is
    judged among the same receivers."""
    units = np.array([_unit(lat, lon) for lat, lon in corners])
    centre = units.sum(axis=0)
    centre /= np.linalg.norm(centre)
    east = np.cross([0.0, 0.0, 1.0], centre)
    east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-9 else np.array([1.0, 0, 0])
    north = np.cross(centre, east)
    plane = np.array([[v @ east, v @ north] / (v @ centre) for v in units])
    try:
        return centre, east, north, scipy.spatial.Delaunay(plane)
    except scipy.spatial.QhullError:
        return centre, east, north, None


def _unit(lat: float, lon: float) -> np.ndarray:
    phi, lam = math.radians(lat), math.radians(lon)
    return np.array([math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)])
