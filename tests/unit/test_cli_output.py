"""What the command line prints of a job and of the shim's errors (pure formatting)."""

from __future__ import annotations

from api_shim.client import ShimError
from inference_worker.cli.jobs import print_job


def succeeded(quality: dict | None) -> dict:
    ellipse = {"semi_major_m": 18_400.0, "semi_minor_m": 15_100.0, "orientation_deg": 99.0}
    result = {"lat": 45.1, "lon": 7.5, "ellipses": {"68": ellipse, "95": ellipse}}
    if quality is not None:
        result["quality"] = quality
    return {
        "job_id": "j1",
        "status": "succeeded",
        "model_version": "2.1.0",
        "cache_hit": False,
        "result": result,
    }


def test_a_position_outside_the_domain_is_printed_with_its_reasons_and_cautions(capsys):
    quality = {
        "in_domain": False,
        "reasons": [
            {"code": "clipping", "detail": "up to 53.7 % of samples", "receivers": ["a", "b"]},
            {"code": "power_inconsistent", "detail": "misfit 54.9, limit 13.8"},
        ],
        "cautions": [{"code": "outside_region", "detail": "Bayes factor 2.1"}],
    }
    print_job(succeeded(quality), as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "job j1: succeeded"
    assert "  outside the model's domain: do not trust this position or its ellipses" in lines
    assert "  reason clipping (a, b): up to 53.7 % of samples" in lines
    assert "  reason power_inconsistent: misfit 54.9, limit 13.8" in lines
    assert lines[-1] == "  caution outside_region: Bayes factor 2.1"


def test_a_position_in_the_domain_prints_no_verdict(capsys):
    for quality in (None, {"in_domain": True, "reasons": [], "cautions": []}):
        print_job(succeeded(quality), as_json=False)
        out = capsys.readouterr().out
        assert "95% ellipse: 18.4 x 15.1 km" in out
        assert "domain" not in out and "reason" not in out and "caution" not in out


def test_a_shim_error_reads_as_its_message_code_and_status():
    body = {"error": {"code": "job_not_found", "message": "no job with id 'x'"}}
    assert str(ShimError(404, body)) == "no job with id 'x' (HTTP 404, job_not_found)"
    assert str(ShimError(502, "<html>Bad Gateway</html>")) == "HTTP 502: <html>Bad Gateway</html>"
    assert ShimError(404, body).body == body
