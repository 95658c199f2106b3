"""The commands for jobs: submit a capture from a file, show a job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference_worker.cli.bootstrap import shim_client
from inference_worker.settings import Settings


def read_capture(args: argparse.Namespace) -> Any:
    import numpy as np

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.raw:
        size = np.dtype("<c8").itemsize
        if len(data) % size:  # np.fromfile dropped the rest without a word
            print(
                f"error: {path} holds {len(data)} bytes, not a whole number of complex64 values "
                f"({size} bytes each)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        raw = np.frombuffer(data, dtype="<c8")
        if raw.size % 3:
            print(f"error: {path} holds {raw.size} complex64 values, not 3 x n", file=sys.stderr)
            raise SystemExit(2)
        return raw.reshape(3, -1)
    from inference_worker.core.capture import CaptureError, decode_npy

    try:
        return decode_npy(data)  # the shim's own reader: the same errors
    except CaptureError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_job(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2))
        return
    print(f"job {view['job_id']}: {view['status']}")
    if view["status"] == "succeeded" and view["result"].get("method") == "tdoa":
        from inference_worker.cli.tdoa import print_result  # pairs, span, alternatives

        print_result(view)
    elif view["status"] == "succeeded":
        result = view["result"]
        e68, e95 = result["ellipses"]["68"], result["ellipses"]["95"]
        print(
            f"  position {result['lat']:.5f}, {result['lon']:.5f}  (model {view['model_version']}, "
            f"cache hit: {str(view['cache_hit']).lower()})"
        )
        for label, shape in (("68%", e68), ("95%", e95)):
            print(
                f"  {label} ellipse: {axes_text(shape['semi_major_m'], shape['semi_minor_m'])}, "
                f"major axis {shape['orientation_deg']:.0f}° from north"
            )
        print_quality(result.get("quality"))
    elif view.get("error"):
        print(f"  error: {view['error']}")


def axes_text(major_m: float, minor_m: float) -> str:
    """An ellipse's semi-axes in km, or in metres when they are under 2 km (TDoA's are often
    a few hundred metres)."""
    if major_m < 2_000:
        return f"{major_m:.0f} x {minor_m:.0f} m"
    return f"{major_m / 1e3:.1f} x {minor_m / 1e3:.1f} km"


def print_quality(quality: dict[str, Any] | None) -> None:
    """The result's verdict on its capture: a position from outside the model's domain is
    printed with the reasons not to trust it, and any caution after it."""
    if not quality:
        return
    if quality.get("in_domain") is False:
        print("  outside the model's domain: do not trust this position or its ellipses")
    for kind, items in (("reason", quality.get("reasons")), ("caution", quality.get("cautions"))):
        for item in items or []:
            where = f" ({', '.join(item['receivers'])})" if item.get("receivers") else ""
            print(f"  {kind} {item['code']}{where}: {item['detail']}")


def cmd_submit(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.core.capture import CaptureError

    iq = read_capture(args)
    fields = {
        "sample_rate_hz": args.sample_rate,
        "frequency_mhz": args.frequency_mhz,
        "receivers": args.receivers.split(","),
        "job_id": args.job_id,
        "capture_time": args.capture_time,
    }
    if args.via == "queue":
        from tasks.intake import JobConflict, ServiceUnavailable
        from tasks.producer import CaptureProducer

        with CaptureProducer(settings=settings) as producer:
            try:
                job_id = producer.submit(iq, **fields)
            except (CaptureError, JobConflict, ServiceUnavailable) as exc:
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"submitted job {job_id} to queue {settings.queue}")
            if args.no_wait:
                return
            print_job(producer.wait(job_id, timeout_s=args.timeout), args.json)
        return
    from api_shim.client import ShimError

    client = shim_client(settings, args.url)
    try:
        accepted = client.submit_npy(iq, **fields)
    except ShimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    where = accepted.get("status_url")
    print(f"submitted job {accepted['job_id']}" + (f" ({where})" if where else ""))
    if not args.no_wait:
        print_job(client.wait(accepted["job_id"], timeout_s=args.timeout), args.json)


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    from api_shim.client import ShimError

    client = shim_client(settings, args.url)
    try:
        print_job(client.job(args.job_id), args.json)
    except ShimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
