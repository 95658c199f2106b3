"""The science toolchain: the capture simulator and the offline evaluation (metrics, classical
baselines, the Cramér-Rao bound). Used by the tools, the demo and the tests, never by serving."""
