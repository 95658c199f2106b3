"""The ``heimdall-inference`` command line: the commands (``main``), the start-up procedure they
share (``bootstrap``), the demo and the helpers that start and stop service processes."""
