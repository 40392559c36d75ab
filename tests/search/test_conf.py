"""The shipped YAML configs: demo.yaml is exactly the defaults; the examples load and fit their models."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysearch_adapters.config import load_config
from raysearch_adapters.search.space import check_space

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_demo_yaml_spells_out_the_defaults():
    assert load_config([CONF / "demo.yaml"]) == load_config([])


@pytest.mark.parametrize("name, num_blocks", [("wav2vec2.yaml", 12), ("conformer.yaml", 6)])
def test_examples_load_and_their_spaces_fit_the_model(name, num_blocks):
    cfg = load_config([CONF / name])
    check_space(cfg.search.space, num_blocks)
    assert cfg.search.name != "demo"  # an example never writes into the demo's results
