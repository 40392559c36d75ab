"""The CONFIG|key=value items every config-taking subcommand accepts."""

from __future__ import annotations

from typing import Sequence

from raysearch_adapters.config import DEMO_CONFIG, Config, load_config


def is_config_item(word: str) -> bool:
    """A config file or a key=value override (not a manifest path)."""
    # A key=value override's key never holds a '/', a manifest path may (data/lang=en/dev.json).
    return word.lower().endswith((".yaml", ".yml")) or ("=" in word and "/" not in word.split("=", 1)[0])


def split_config(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(config files, key=value overrides) of the positional CONFIG|key=value items."""
    paths = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    return paths, overrides


def load_from_args(items: Sequence[str]) -> Config:
    """Config from positional CONFIG files and key=value overrides; without a config file, the embedded demo's
    (``DEMO_CONFIG``) with the overrides."""
    paths, overrides = split_config(items)
    return load_config(paths or [DEMO_CONFIG], overrides)
