"""``heimdall-inference tdoa demo``: synthetic KiwiSDR sets written to a folder, located
through the service (a shim and a worker started if none run), each estimate printed with its
error and whether its 95 % region holds the truth, with a map of the region and of the
likelihood for each."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import (
    contains,
    distance_m,
    estimate_from_result,
    metres_per_degree,
)
from inference_worker.core.likelihood_map import render_png
from inference_worker.core.tdoa_search import log_likelihood_grid
from inference_worker.core.time_differences import PairDelay
from inference_worker.settings import Settings

if TYPE_CHECKING:
    from inference_worker.science.kiwi_sets import SyntheticSet


def overview_png(result: dict[str, Any], truth: tuple[float, float] | None = None) -> bytes:
    """A map of the whole region: the likelihood from the result's time differences, the
    receivers, the estimate and any other place that explains the delays, and (in the demo)
    the truth."""
    stations = [Receiver(r["id"], r["lat"], r["lon"]) for r in result["receivers"]]
    index = {s.id: k for k, s in enumerate(stations)}
    pairs = [
        PairDelay(
            index[p["receivers"][0]],
            index[p["receivers"][1]],
            p["delay_us"] * 1e-6,
            p["sigma_us"] * 1e-6,
            p["windows_used"],
            p["windows_total"],
        )
        for p in result["pairs"]
    ]
    places = [result, *result.get("alternatives", [])]
    lats_all = [s.lat for s in stations] + [p["lat"] for p in places]
    lons_all = [s.lon for s in stations] + [p["lon"] for p in places]
    per_lat, per_lon = metres_per_degree(float(np.mean(lats_all)))
    margin = 100e3
    lats = np.linspace(min(lats_all) - margin / per_lat, max(lats_all) + margin / per_lat, 400)
    lons = np.linspace(min(lons_all) - margin / per_lon, max(lons_all) + margin / per_lon, 400)
    # Widen the likelihood so that the region it allows shows at this scale.
    height_m = 1e3 * (result.get("layer_height_km") or 0.0)  # skywave: the layer's paths
    surface = log_likelihood_grid(stations, pairs, lats, lons, layer_height_m=height_m) / 1e4
    points = [(s.lat, s.lon, s.id) for s in stations]
    points.append((result["lat"], result["lon"], "estimate"))
    points += [(p["lat"], p["lon"], f"also possible ({p['weight']:.2f})") for p in places[1:]]
    if truth:
        points.append((truth[0], truth[1], "truth"))
    return render_png(lats, lons, surface, points=points, size=640)


SKYWAVE_FREQUENCY_HZ = 10_000_000
"""The skywave demo's tuned frequency: HF, where one hop off the ionosphere carries."""
LAYER_SPREAD_M = 10e3
"""In the skywave demo, how much higher or lower than the layer each path is reflected."""


def _simulated(rng: np.random.Generator, receivers: int, propagation: str) -> SyntheticSet:
    """One demo set; with skywave, heard by one hop off a layer 250-350 km high (drawn), each
    path's reflection up to ``LAYER_SPREAD_M`` higher or lower, at ``SKYWAVE_FREQUENCY_HZ``."""
    from inference_worker.science.kiwi_sets import synthetic_set

    if propagation == "ground":
        return synthetic_set(rng, receivers=receivers, signal=None)
    return synthetic_set(
        rng,
        receivers=receivers,
        frequency_hz=SKYWAVE_FREQUENCY_HZ,
        layer_height_m=float(rng.uniform(250e3, 350e3)),
        layer_spread_m=LAYER_SPREAD_M,
    )


def run_demo(
    settings: Settings,
    sets: int,
    seed: int | None,
    out: Path,
    expect: str = "anywhere",
    propagation: str = "ground",
) -> int:
    from inference_worker.cli.demo import running_service

    seed = int(time.time()) % 100_000 if seed is None else seed
    try:  # before a worker and a shim are started for it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        print(f"error: cannot write the sets to {out}/: {why}", file=sys.stderr)
        return 2
    heard = " heard by skywave" if propagation == "skywave" else ""
    print(
        f"writing {sets} synthetic sets{heard} to {out}/ (seed {seed}; --seed {seed} repeats them)"
    )
    with ExitStack() as stack:
        client = running_service(settings, stack)
        client.timeout_s = 60
        rows, failed = [], 0
        for k in range(sets):
            recording = _simulated(np.random.default_rng(seed + k), 3 + k % 3, propagation)
            folder = out / f"set-{seed + k}"
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in zip(recording.names, recording.files, strict=True):
                (folder / name).write_bytes(data)
            (folder / "receivers.json").write_text(json.dumps(recording.positions(), indent=1))
            truth = {"lat": recording.emitter[0], "lon": recording.emitter[1]}
            if propagation == "skywave":
                truth["layer_height_km"] = recording.layer_height_m / 1e3
            (folder / "truth.json").write_text(json.dumps(truth))
            accepted = client.submit_tdoa(
                list(zip(recording.names, recording.files, strict=True)),
                receivers=recording.positions(),
                frequency_mhz=recording.frequency_hz / 1e6,
                expect_emitter=expect,
                propagation=propagation,
            )
            rows.append((accepted["job_id"], recording, folder))
        print(
            f"\n{'set':<10} {'rx':>2} {'signal':<9} {'outside':>7} {'estimate (lat, lon)':<21} "
            f"{'error':>8} {'68% ellipse':>17} {'95%':>4} {'time':>7}"
        )
        errors, ambiguous = [], False
        for job_id, recording, folder in rows:
            view = client.wait(job_id, timeout_s=120)
            if view["status"] != "succeeded":
                print(f"{folder.name:<10} {view['status']}: {view['error']}")
                failed += 1
                continue
            result = view["result"]
            error_m = distance_m(result["lat"], result["lon"], *recording.emitter)
            errors.append(error_m)
            ambiguous = ambiguous or bool(result["alternatives"])
            places = [estimate_from_result(result)]
            places += [estimate_from_result(o) for o in result["alternatives"]]
            held = any(contains(p, *recording.emitter, 0.95) for p in places)
            e68 = result["ellipses"]["68"]
            (folder / "likelihood.png").write_bytes(client.job_map(job_id))
            (folder / "map.png").write_bytes(overview_png(result, recording.emitter))
            print(
                f"{folder.name:<10} {len(recording.stations):>2} {recording.signal:<9} "
                f"{recording.outside_km:>5.0f}km {result['lat']:9.5f}, {result['lon']:9.5f} "
                f"{error_m:7.0f}m {e68['semi_major_m']:7.0f} x {e68['semi_minor_m']:5.0f} m "
                f"{'in' if held else 'out':>4} {view['timings']['end_to_end_ms'] / 1e3:6.2f}s"
                + (f" (ambiguous: weight {result['weight']:.2f})" if result["alternatives"] else "")
                + (
                    ", taken among the receivers"
                    if result.get("chosen_by") == "among_receivers"
                    else ""
                )
                + _layer(result, recording)
            )
            for other in result["alternatives"]:
                other_m = distance_m(other["lat"], other["lon"], *recording.emitter)
                print(
                    f"{'':<10} {'':>2} {'also possible:':<17} {other['lat']:9.5f}, "
                    f"{other['lon']:9.5f} {other_m:7.0f}m  weight {other['weight']:.2f}"
                    + (" (among the receivers)" if other.get("among_receivers") else "")
                )
        print(
            "\nerror: distance from the simulated emitter; 95%: whether the truth lies in the 95% "
            "region (the union with any alternative's); outside: how far the emitter is outside "
            "the receivers' region."
            + (
                " failed: the service's answer for a set it cannot locate, with its reason."
                if failed
                else ""
            )
        )
        if propagation == "skywave":
            print(
                "layer: the reflecting layer's height found (the heights tried, weighed by how "
                "well each explains the delays), ± its spread, and the simulated one (each path "
                "reflected up to "
                f"{LAYER_SPREAD_M / 1e3:.0f} km higher or lower)"
            )
        if errors:
            print(f"median error of these sets: {float(np.median(errors)):,.0f} m")
        if ambiguous and expect == "anywhere":
            print(
                "ambiguous: three receivers' hyperbolas can cross twice and the delays cannot say "
                "which crossing is the emitter's (weight: each place's share of the likelihood, "
                "not the chance that it is the emitter's; the estimate is the higher peak, not "
                "always the heavier one); --expect-emitter among_receivers takes the "
                "place among the receivers, right where the emitter lies there (7 in 10 of these "
                "sets; 'outside' shows the others, for which it can take the wrong crossing)"
            )
        print(f"maps: {out}/set-*/map.png (region) and likelihood.png (around the estimate)")
    return 0  # a set the service cannot locate is answered too: failed, saying why


def _layer(result: dict[str, Any], recording: SyntheticSet) -> str:
    """A skywave result's layer height beside the simulated one; nothing for ground waves."""
    if result.get("propagation") != "skywave":
        return ""
    return (
        f", layer {result['layer_height_km']:.0f} ± {result['layer_height_sd_km']:.0f} km "
        f"(simulated {recording.layer_height_m / 1e3:.0f})"
    )
