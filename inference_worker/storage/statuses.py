"""The statuses a job goes through: queued -> running -> succeeded | failed."""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINAL_STATUSES = (SUCCEEDED, FAILED)
"""A job in one of these never changes again: one job id, one recorded outcome."""
