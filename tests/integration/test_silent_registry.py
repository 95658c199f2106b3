"""A model registry whose PostgreSQL stops answering without closing its connections (paused, a
stalled host) is unavailable after a limit, not waited on without end.

MLflow's connections are its own (no statement limit of the service's), so a registry call that
met such a database held its caller until the database answered again: through a relay that
went silent, ``/health`` and ``/model/info`` of a shim serving from the registry were still
waiting after 70 s. A registry call now gives a statement ``registry_store.REPLY_S``; a health
check, 2 s.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from api_shim.app import create_app
from inference_worker.serving import registry_store
from inference_worker.serving.registry import RegistryUnavailable, open_registry
from tests.integration.registry_helpers import ADMIN, in_registry_mode
from tools.silent_relay import SilentProxy

GAVE_UP = r"does not answer: .*PostgreSQL (answered nothing in 1 s|did not answer)"


@pytest.mark.timeout(90, method="thread")  # libpq waiting in C outlasts a signal
def test_a_silent_registry_database_is_unavailable_after_a_limit(
    settings, engine, registry_database, tmp_path, monkeypatch
):
    url, _ = registry_database
    parsed = sa.make_url(url)
    relay = SilentProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    through = parsed.set(host="127.0.0.1", port=relay.port).render_as_string(False)
    try:
        shim_settings = in_registry_mode(
            settings, through, tmp_path, admin_token=SecretStr(ADMIN), redis_prefix="silentreg:"
        )
        registry = open_registry(shim_settings)
        registry.bootstrap(shim_settings.model_dir)
        monkeypatch.setattr(registry_store, "REPLY_S", 1.0)
        client = create_app(shim_settings).test_client()
        before = client.get("/health").get_json()["checks"]["model"]
        assert before["error"] == "no worker is serving this queue"  # the registry answers
        with relay.silent():
            with pytest.raises(RegistryUnavailable, match=GAVE_UP):  # MLflow's retry: at once
                registry.aliases()
            health = client.get("/health").get_json()
        assert health["status"] == "degraded"  # the stores answer: submissions go on
        assert re.search(GAVE_UP, health["checks"]["model"]["error"]), health
    finally:
        relay.close()
