"""``python -m inference_worker.cli``: the same as ``heimdall-inference``."""

from inference_worker.cli.main import main

main()
