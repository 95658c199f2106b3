"""Heimdall inference worker: turns synchronized 3-receiver IQ captures into positions with
calibrated uncertainty ellipses."""

__version__ = "0.1.0"
