"""The ``tdoa`` command: locate by time differences of arrival from KiwiSDR IQ WAV files.

``submit`` sends a set of recordings with a positions file to the shim (or straight onto the
queue) and prints the result; ``demo`` (in :mod:`~inference_worker.cli.tdoa_demo`) writes
synthetic sets, locates them through the service and prints each estimate's error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_worker.cli.arguments import count, fail, number
from inference_worker.core.capture import parse_json
from inference_worker.core.ellipse import tdoa_feature_collection
from inference_worker.core.kiwi_names import parse_file_name
from inference_worker.core.tdoa_kinds import EXPECTATIONS, PROPAGATIONS
from inference_worker.settings import Settings


def add_parser(sub: Any) -> None:
    tdoa = sub.add_parser(
        "tdoa",
        help="locate by time differences of arrival: submit KiwiSDR IQ WAV files, or the demo",
        description="submit FILE.wav... --receivers POSITIONS.json [--frequency-mhz F] "
        "[--expect-emitter among_receivers] [--propagation skywave] | "
        "demo [--sets N] [--out DIR] [--expect-emitter among_receivers] "
        "[--propagation skywave]. The positions file is "
        'a JSON list of {"id", "lat", "lon"} in the order of the files (matched by id where '
        "the ids are the stations the file names carry), or an object "
        '{"STATION": {"lat", "lon"}} matched to kiwirecorder file names '
        "(DATE_FREQUENCY_STATION_iq.wav; a file without a station by its name less .wav).",
    )
    tdoa.add_argument("action", choices=["submit", "demo"])
    tdoa.add_argument("files", nargs="*", help="with submit: one KiwiSDR IQ WAV file per receiver")
    tdoa.add_argument("--receivers", type=Path, help="with submit: the positions file")
    tdoa.add_argument(
        "--frequency-mhz", type=float, help="tuned frequency (default: from the file names)"
    )
    tdoa.add_argument(
        "--expect-emitter",
        choices=list(EXPECTATIONS),
        default="anywhere",
        help="where the emitter is expected; among_receivers makes the place among them the "
        "estimate when the delays leave two (default: anywhere, the likelihood decides)",
    )
    tdoa.add_argument(
        "--propagation",
        choices=list(PROPAGATIONS),
        default="ground",
        help="how the signal reached the receivers; skywave locates with paths by one hop off "
        "an ionospheric layer of unknown height, as at HF beyond ~100 km (with demo: the sets "
        "are heard that way, at 10 MHz; default: ground)",
    )
    tdoa.add_argument("--job-id")
    tdoa.add_argument("--url", help="shim URL (default from settings)")
    tdoa.add_argument(
        "--via",
        choices=["http", "queue"],
        default="http",
        help="with submit: the shim, or straight onto RabbitMQ with the producer client",
    )
    tdoa.add_argument("--no-wait", action="store_true", help="print the job id and return")
    tdoa.add_argument(
        "--timeout", type=number(0.0, above=True), default=120.0, help="seconds to wait (120)"
    )
    tdoa.add_argument("--json", action="store_true", help="print the whole job as JSON")
    tdoa.add_argument("--geojson", type=Path, help="write the result as GeoJSON here")
    tdoa.add_argument("--map", type=Path, help="write the likelihood map (PNG) here")
    tdoa.add_argument("--sets", type=count(1), default=4, help="with demo: how many sets")
    tdoa.add_argument("--seed", type=int, help="with demo: first set's seed")
    tdoa.add_argument("--out", type=Path, default=Path("tdoa-demo"), help="with demo: folder")
    tdoa.set_defaults(func=cmd_tdoa)


def cmd_tdoa(settings: Settings, args: argparse.Namespace) -> None:
    if args.action == "demo":
        from inference_worker.cli.tdoa_demo import run_demo

        raise SystemExit(
            run_demo(
                settings, args.sets, args.seed, args.out, args.expect_emitter, args.propagation
            )
        )
    if len(args.files) < 3 or args.receivers is None:
        fail("tdoa submit needs 3 or more WAV files and --receivers POSITIONS.json")
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            fail(f"no such file: {path}" if not path.exists() else f"not a file: {path}")
    try:
        positions = parse_json(args.receivers.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read the positions file {args.receivers}: {exc}")
    receivers = match_positions(positions, [p.name for p in paths])
    frequency = args.frequency_mhz or frequency_from_names([p.name for p in paths])
    files = []
    for path in paths:
        try:
            files.append((path.name, path.read_bytes()))
        except OSError as exc:
            fail(f"cannot read {path}: {exc}")
    with ExitStack() as stack:
        route = _queue(settings, stack) if args.via == "queue" else _shim(settings, args)
        fields = {
            "receivers": receivers,
            "frequency_mhz": frequency,
            "job_id": args.job_id,
            "expect_emitter": args.expect_emitter,
            "propagation": args.propagation,
        }
        job_id = route.submit(files, fields)
        print(f"job {job_id} accepted", file=sys.stderr)
        if args.no_wait:
            print(job_id)
            return
        view = route.wait(job_id, args.timeout)
        if args.json:
            print(json.dumps(view, indent=2))
        else:
            print_result(view)
        if view["status"] != "succeeded":
            raise SystemExit(1)
        if args.geojson:
            args.geojson.write_text(json.dumps(tdoa_feature_collection(view["result"])))
            print(f"GeoJSON written to {args.geojson}", file=sys.stderr)
        if args.map:
            picture = route.picture(job_id)
            if picture is None:
                fail(f"the likelihood map of job {job_id} has expired")
            args.map.write_bytes(picture)
            print(f"likelihood map written to {args.map}", file=sys.stderr)


@dataclass(frozen=True)
class Route:
    """Where a set goes: the shim over HTTP, or the queue with the producer client."""

    submit: Callable[[list[tuple[str, bytes]], dict[str, Any]], str]
    """Files (name, bytes) and the fields ``receivers``, ``frequency_mhz``, ``job_id``,
    ``expect_emitter`` → job id."""
    wait: Callable[[str, float], dict[str, Any]]
    picture: Callable[[str], bytes | None]


def _shim(settings: Settings, args: argparse.Namespace) -> Route:
    from api_shim.client import ShimError
    from inference_worker.cli.bootstrap import shim_client

    client = shim_client(settings, args.url)

    def submit(files: list[tuple[str, bytes]], fields: dict[str, Any]) -> str:
        try:  # an unreachable shim is reported by the command line's entry point
            accepted = client.submit_tdoa(files, **fields)
        except ShimError as exc:
            fail(f"refused: {exc}")
        return str(accepted["job_id"])

    def picture(job_id: str) -> bytes | None:
        try:
            return client.job_map(job_id)
        except ShimError as exc:
            if exc.status == 404:
                return None
            fail(f"the likelihood map: {exc}")

    return Route(submit, lambda job_id, s: client.wait(job_id, timeout_s=s), picture)


def _queue(settings: Settings, stack: ExitStack) -> Route:
    from inference_worker.core.capture import CaptureError
    from tasks.intake import JobConflict, ServiceUnavailable
    from tasks.producer import CaptureProducer

    producer = stack.enter_context(CaptureProducer(settings=settings))

    def submit(files: list[tuple[str, bytes]], fields: dict[str, Any]) -> str:
        try:
            return producer.submit_tdoa(files, **fields)
        except (CaptureError, JobConflict, ServiceUnavailable) as exc:
            fail(f"refused: {exc}")

    return Route(
        submit, lambda job_id, s: producer.wait(job_id, timeout_s=s), producer.store.get_map
    )


def match_positions(positions: Any, names: list[str]) -> list[dict[str, Any]]:
    """The ``receivers`` field for files ``names``: an object is matched by the station in each
    kiwirecorder file name (or the file's stem), regardless of case; a list is taken in file
    order, unless its ids are the stations the file names carry, listed in another order:
    then it is matched by them too (the shim refuses a file sent for another's position)."""
    stations = [_station_of(name) for name in names]
    if isinstance(positions, list):
        if len(positions) != len(names):
            fail(f"the positions file lists {len(positions)} receivers for {len(names)} files")
        by_id = {
            str(item["id"]).casefold(): item
            for item in positions
            if isinstance(item, dict) and "id" in item
        }
        if len(by_id) == len(names) and set(by_id) == {s.casefold() for s in stations}:
            return [by_id[station.casefold()] for station in stations]
        return positions
    if not isinstance(positions, dict):
        fail("the positions file must hold a JSON list or object")
    folded = {str(key).casefold(): key for key in positions}
    receivers = []
    for name, station in zip(names, stations, strict=True):
        key = station if station in positions else folded.get(station.casefold())
        if key is None:
            fail(
                f"the positions file has no receiver {station!r} (for {name}); it has "
                f"{', '.join(repr(str(k)) for k in positions) or 'none'}"
            )
        place = positions[key]
        if isinstance(place, list | tuple) and len(place) >= 2:
            place = {"lat": place[0], "lon": place[1]}
        if not isinstance(place, dict):
            fail(f'the position of {key!r} must be {{"lat": …, "lon": …}} or [lat, lon]')
        receivers.append({"id": str(key), **place})
    return receivers


def _station_of(name: str) -> str:
    """The station a kiwirecorder file name carries, or the file's name without ``.wav``."""
    parsed = parse_file_name(name)
    return parsed.station if parsed and parsed.station else Path(name).stem


def frequency_from_names(names: list[str]) -> float:
    frequencies = {p.frequency_hz for n in names if (p := parse_file_name(n))}
    if len(frequencies) != 1:
        fail("give --frequency-mhz (the file names do not name one tuned frequency)")
    return frequencies.pop() / 1e6


def among(place: dict[str, Any]) -> str:
    """What marks a place inside the receivers' hull, where an emitter among them lies (of two
    crossings, at most one lies there)."""
    return ", among the receivers" if place.get("among_receivers") else ""


STALE_FIX_S = 60
"""A GPS solution this old (seconds) or older is pointed out: its time was the receiver's own."""
OFF_FREQUENCY_HZ = 0.3
"""A receiver whose signal arrived this far (Hz) or further off the others' is pointed out."""


def print_result(view: dict[str, Any]) -> None:
    if view["status"] != "succeeded":
        print(f"job {view['job_id']} {view['status']}: {view.get('error')}")
        return
    result = view["result"]
    e68, e95 = result["ellipses"]["68"], result["ellipses"]["95"]
    chosen = (
        ", taken as the emitter was expected there"
        if result.get("chosen_by") == "among_receivers"
        else ""
    )
    print(
        f"position      {result['lat']:.5f}, {result['lon']:.5f}"
        + (
            f" (weight {result['weight']:.2f}{among(result)}{chosen}; also possible below)"
            if result["alternatives"]
            else ""
        )
    )
    print(
        f"68% ellipse   {e68['semi_major_m']:,.0f} x {e68['semi_minor_m']:,.0f} m; "
        f"95%: {e95['semi_major_m']:,.0f} x {e95['semi_minor_m']:,.0f} m"
    )
    print(f"common span   {result['overlap_s']:.1f} s; fit chi2 {result['fit_chi2']:.2f}")
    if result.get("propagation") == "skywave":
        print(
            f"skywave       one hop off a layer {result['layer_height_km']:g} km high "
            f"(± {result['layer_height_sd_km'] or 0:g} km over the heights tried)"
        )
    bound = result.get("fit_chi2_bound")
    if bound is not None and result["fit_chi2"] > bound:
        scale = result.get("sigma_scale", 1.0)
        print(
            f"  beyond {bound:.1f}: the delays agree with no one position (a receiver's time or "
            "position, or the propagation, is not what the method assumes); "
            + (
                f"their uncertainties were widened ×{scale:.1f} to fit, the ellipses with them"
                if scale > 1
                else "the ellipses are too small"
            )
        )
    for left_out in result.get("excluded", []):
        print(f"left out      {left_out['id']}: {left_out['reason']}")
    for caution in result.get("cautions", []):
        where = f" ({', '.join(caution['receivers'])})" if caution.get("receivers") else ""
        print(f"caution       {caution['code']}{where}: {caution['detail']}")
    for receiver in result.get("receivers", []):
        if receiver.get("gps_fix_age_s", 0) >= STALE_FIX_S:
            print(
                f"stale GPS     {receiver['id']}: its GPS solution was up to "
                f"{receiver['gps_fix_age_s']} s old; its time was carried by its own clock "
                "meanwhile (its stamps counted, and its time's uncertainty grew, by that age)"
            )
        if receiver.get("lost_s", 0.0) >= 0.1:
            print(
                f"blocks lost   {receiver['id']}: {receiver['lost_s']:.1f} s of its recording "
                "never arrived (the stream stalled); no window was cut there"
            )
        if abs(receiver.get("frequency_offset_hz") or 0.0) >= OFF_FREQUENCY_HZ:
            print(
                f"frequency     {receiver['id']}: heard {receiver['frequency_offset_hz']:+.2f} Hz "
                "off the others (its clock after a GPS lapse, or Doppler); its windows were "
                "turned back by that before correlating"
            )
    for pair in result["pairs"]:
        a, b = pair["receivers"]
        print(
            f"  {a:>10} - {b:<10} {pair['delay_us']:12.2f} us ± {pair['sigma_us']:.2f} "
            f"({pair['windows_used']}/{pair['windows_total']} windows)"
        )
    for other in result["alternatives"]:
        reach = other.get("ellipses", {}).get("95", {}).get("semi_major_m")
        print(
            f"also possible {other['lat']:.5f}, {other['lon']:.5f} "
            f"(weight {other['weight']:.2f}{among(other)}"
            + (f", its 95% ellipse reaching {reach / 1e3:,.1f} km" if reach is not None else "")
            + "): add a receiver to decide"
        )
