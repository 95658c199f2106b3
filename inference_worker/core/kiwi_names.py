"""The names kiwirecorder gives its recordings: when it started, the tuned frequency and the
station (``20200813T065220Z_77500_HB9ODP_iq.wav``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_FILENAME = re.compile(
    r"(?P<start>\d{8}T\d{6}Z)_(?P<frequency>\d{1,12})(?:_(?P<station>[^/\\]+?))?_iq",
    re.IGNORECASE | re.ASCII,  # ASCII digits only; a frequency of up to 12 digits of Hz
)


@dataclass(frozen=True)
class KiwiFileName:
    start: datetime
    frequency_hz: int
    station: str | None
    """The ``--station`` part (it may hold underscores); None where the recorder was given
    none."""


def parse_file_name(name: str) -> KiwiFileName | None:
    """What a kiwirecorder file name says (``20200813T065220Z_77500_HB9ODP_iq.wav``, or
    ``20200813T065220Z_77500_iq.wav`` recorded without ``--station``), if it has that form: a
    stamp that is no time (``20201345T000000Z``) is not kiwirecorder's."""
    found = _FILENAME.search(name)
    if found is None:
        return None
    try:
        start = datetime.strptime(found["start"].upper(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return KiwiFileName(start, int(found["frequency"]), found["station"])
