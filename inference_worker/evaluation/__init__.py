"""Offline evaluation of localization models: accuracy and calibration metrics, classical
baselines and the Cramér-Rao bound. Pure numpy; used by the tools and their tests."""
