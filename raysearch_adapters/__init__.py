"""raysearch-adapters: search adapter configs for ASR domain adaptation on Ray Tune + Optuna."""

__version__ = "0.1.0"
