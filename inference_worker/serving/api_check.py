"""The api part of ``heimdall-inference check`` (:mod:`deployment_check`): the api this host's
settings describe, and every other api of the deployment as its heartbeat in Redis names it,
each asked for ``/health``: whether it answers, and how it sees the stores and the model (its
settings may differ from the check's)."""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from inference_worker.serving.store_checks import Finding, Level
from inference_worker.settings import Settings
from inference_worker.urls import base_url

API_TIMEOUT_S = 5.0
"""How long an api has to answer ``/health``, which asks every store and the registry."""


def loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to any address
        return False


def check_api(settings: Settings, *, redis_answers: bool = True) -> list[Finding]:
    """This host's api and the apis beating for this queue, one finding for each address
    (asked together), after one naming where the apis run. The heartbeats are not read when
    Redis has just not answered (its own finding says so; each read would wait it out again)."""
    here = socket.gethostname()
    own = base_url(settings.api_host, settings.api_port, "127.0.0.1")
    beating = _beating_apis(settings) if redis_answers else []
    others: dict[str, str] = {}  # an address another api beats from -> its host
    for api in sorted(beating, key=lambda api: (str(api.get("host")), str(api.get("url")))):
        url, host = str(api.get("url")), str(api.get("host"))
        if host == here and urlsplit(url).port == settings.api_port:
            continue  # the api the settings describe, asked at their address
        others.setdefault(url, host)
    key = a_key(settings)
    asked = [own] + [u for u, host in others.items() if host == here or not _loopback_url(u)]
    with ThreadPoolExecutor(max_workers=min(8, len(asked))) as pool:
        replies = pool.map(lambda url: _health(url, key, settings), asked)
        answers = dict(zip(asked, replies, strict=True))
    findings = []
    if beating:
        hosts = sorted({str(api.get("host")) for api in beating})
        findings.append(
            Finding(
                "api",
                "ok",
                f"{len(beating)} api process(es) on {', '.join(hosts)} serve queue "
                f"{settings.queue!r}",
            )
        )
    own_answer = answers[own]
    if isinstance(own_answer, Finding):
        findings.append(own_answer)
    else:
        elsewhere = sorted({host for host in others.values() if host != here})
        where = "start `heimdall-inference api` on this host, or look where it runs "
        where += "(HEIMDALL_API_HOST and HEIMDALL_API_PORT)"
        if elsewhere:  # this host need not run one
            where = f"the apis run on {', '.join(elsewhere)}"
        findings.append(
            Finding(
                "api",
                "ok" if elsewhere else "warn",
                f"no api answers at {own}/health ({own_answer}): {where}",
            )
        )
    for url, host in others.items():
        if url not in answers:
            findings.append(
                Finding("api", "ok", f"{url} (on {host}) listens on its loopback: not asked")
            )
            continue
        answer = answers[url]
        findings.append(
            answer
            if isinstance(answer, Finding)
            else Finding(
                "api",
                "warn",
                f"{url}/health, where an api on {host} beats from, does not answer this host "
                f"({answer}): a firewall, or a name other hosts do not resolve",
            )
        )
    return findings


def _beating_apis(settings: Settings) -> list[dict[str, Any]]:
    """The heartbeats of the api processes of this queue; none where Redis does not answer or
    refuses to list them (an ACL): the check's ``redis`` area says why."""
    from redis import RedisError

    from inference_worker.storage.redis_store import RedisStore, connect

    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    try:
        return [a for a in store.apis() if a.get("queue") == settings.queue]
    except RedisError:
        return []
    finally:
        store.client.close()


def _loopback_url(url: str) -> bool:
    return loopback(urlsplit(url).hostname or "")


def _health(base: str, key: str | None, settings: Settings) -> Finding | str:
    """What the api at ``base`` answers to ``/health``; why not, where nothing answers."""
    url = f"{base}/health"
    request = urllib.request.Request(url)
    if key:  # the reasons of an unhealthy answer are shown to a caller with a key only
        request.add_header("Authorization", f"Bearer {key}")
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(request, timeout=API_TIMEOUT_S) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return str(getattr(exc, "reason", exc))
    try:
        body = json.loads(raw)
        state = body["status"]
    except (ValueError, KeyError, TypeError):
        return Finding("api", "warn", f"{url} answers {status}, but not as this service's api")
    failing = [
        f"{name}: {check.get('error') or check.get('problems') or 'not ok'}"
        for name, check in (body.get("checks") or {}).items()
        if isinstance(check, dict) and not check.get("ok", True)
    ]
    said = f" ({'; '.join(str(f) for f in failing)})" if failing else ""
    if not said and key is None and settings.api_keys:
        said = " (its reasons are shown to a caller with a key: set HEIMDALL_ADMIN_TOKEN)"
    if state == "ok":
        return Finding("api", "ok", f"{url} answers: ok")
    if state == "starting":
        return Finding("api", "warn", f"{url} answers starting: it waits for its stores to serve")
    level: Level = "fail" if status >= 500 else "warn"
    return Finding("api", level, f"{url} answers {state}{said}")


def a_key(settings: Settings) -> str | None:
    """A key the api takes, from this host's settings: the admin token, or a plain key (the
    check and the demo call an api whose settings may differ from theirs)."""
    if settings.admin_token.get_secret_value():
        return settings.admin_token.get_secret_value()
    return next((k.key.get_secret_value() for k in settings.api_keys if k.key is not None), None)
