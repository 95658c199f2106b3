"""Receiver networks: the receivers a model serves, in its channel order, and the region of
interest emitters are expected in, read from a network file (see the README's "A model for your
own receivers")."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

RECEIVERS_FILE = Path(__file__).resolve().parents[1] / "data" / "receivers.json"


@dataclass(frozen=True)
class ReceiverSite:
    id: str
    name: str
    lat: float
    lon: float
    antenna_height_m: float
    gain_offset_db: float


@dataclass(frozen=True)
class Network:
    """A receiver network file: the receivers in the model's channel order and the region of
    interest emitters are expected in (``(south, north, west, east)`` degrees; ``None``: the
    receivers' bounding box grown by the simulator's ``region_margin_m``)."""

    receivers: tuple[ReceiverSite, ...]
    region: tuple[float, float, float, float] | None = None
    name: str = ""


def load_network(path: Path = RECEIVERS_FILE) -> Network:
    """Read a network file (see ``inference_worker/data/receivers.json`` and the README).

    Raises:
        ValueError: the file is not a network of 3 receivers with coordinates, or its region
            is not a box that holds them; the text names the file and what is wrong.
    """
    try:
        # From bytes: json detects UTF-8 (with or without a byte-order mark), -16 and -32.
        data = json.loads(Path(path).read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the network file: {exc}") from None
    entries = data.get("receivers") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) != 3:
        found = len(entries) if isinstance(entries, list) else "no list of"
        raise ValueError(f"{path}: a network has exactly 3 receivers, found {found}")
    try:
        receivers = tuple(
            ReceiverSite(
                id=str(e["id"]),
                name=str(e.get("name", e["id"])),
                lat=float(e["lat"]),
                lon=float(e["lon"]),
                antenna_height_m=float(e.get("antenna_height_m", 10.0)),
                gain_offset_db=float(e.get("gain_offset_db", 0.0)),
            )
            for e in entries
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: every receiver needs an id, lat and lon ({exc!r})") from None
    if len({r.id for r in receivers}) != 3:
        raise ValueError(f"{path}: receiver ids must differ")
    for r in receivers:
        if not (-90.0 <= r.lat <= 90.0 and -180.0 <= r.lon <= 180.0) or r.antenna_height_m <= 0:
            raise ValueError(f"{path}: receiver {r.id!r} has an impossible position or height")
        if not (math.isfinite(r.antenna_height_m) and math.isfinite(r.gain_offset_db)):
            raise ValueError(f"{path}: receiver {r.id!r} has a height or gain that is no number")
    region = None
    if data.get("region") is not None:
        try:
            box = data["region"]
            region = (
                float(box["south"]),
                float(box["north"]),
                float(box["west"]),
                float(box["east"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{path}: region needs south, north, west, east ({exc!r})") from None
        south, north, west, east = region
        if not (-90.0 <= south < north <= 90.0 and -180.0 <= west < east <= 180.0):
            raise ValueError(
                f"{path}: region must have south < north and west < east, within ±90° and ±180°"
            )
        if any(not (south <= r.lat <= north and west <= r.lon <= east) for r in receivers):
            raise ValueError(f"{path}: the region must hold the receivers")
    return Network(receivers, region, str(data.get("name", Path(path).stem)))


def load_receivers(path: Path = RECEIVERS_FILE) -> tuple[ReceiverSite, ...]:
    """The receivers of a network file, in the model's channel order."""
    return load_network(path).receivers
