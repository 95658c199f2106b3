"""The ``check`` command: is this deployment set up to keep what it accepts and serve it?"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from inference_worker.serving.deployment_check import AREAS
from inference_worker.settings import Settings

LEVEL_WORDS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


def add_parser(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="check the deployment: stores answer and keep accepted work, schema, queues, "
        "model, workers, api (changes nothing)",
        description="Look at RabbitMQ, Redis, PostgreSQL, the model, the workers and the api "
        "as this host's settings name them, and say what would lose accepted work or keep it from "
        "being served. Exit code 1 when a check fails (with --strict, when one warns too).",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument("--strict", action="store_true", help="a warning fails the check too")
    check.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=AREAS,
        metavar="AREA",
        help="leave an area out, e.g. api on a host that runs workers only (repeatable; one of "
        f"{', '.join(AREAS)})",
    )
    check.set_defaults(func=cmd_check)


def cmd_check(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.serving.deployment_check import check_deployment
    from inference_worker.serving.registry_store import apply_mlflow_defaults

    apply_mlflow_defaults(quick=True)  # a hung MLflow server: one 3 s wait, not three of 10 s
    findings = check_deployment(settings, skip=args.skip)
    counts = {level: sum(f.level == level for f in findings) for level in ("ok", "warn", "fail")}
    failed = counts["fail"] > 0 or (args.strict and counts["warn"] > 0)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        for finding in findings:
            print(f"{LEVEL_WORDS[finding.level]:<5} {finding.area:<10} {finding.message}")
        print(
            f"check: {counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)",
            file=sys.stderr,
        )
    if failed:
        raise SystemExit(1)
