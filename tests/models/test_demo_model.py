"""The shipped demo base model: loads, fits the size budget, carries its card; reproduces the card (slow)."""

from __future__ import annotations

import json

import pytest

from raysearch_adapters.config import DEMO_CONFIG, ModelConfig, load_config
from raysearch_adapters.models.conformer import ASSETS, DEMO_MODEL
from raysearch_adapters.models.registry import load_base_model

SPLITS = ("original_dev", "original_test", "new_dev", "new_test")


def _card(model) -> dict:
    return json.loads(model.meta["card"])


def test_the_shipped_model_loads_fits_in_4_mib_and_carries_its_card():
    assert DEMO_MODEL.stat().st_size <= 4 * 2**20
    model = load_base_model(ModelConfig(checkpoint="demo"))
    card = _card(model)
    assert set(card["wer"]) == set(SPLITS)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(model.adaptable_blocks()) == card["recipe"]["model"]["conformer"]["num_layers"]
    text = (ASSETS / "MODEL_CARD.md").read_text()
    for split in SPLITS:  # the human-readable card shows the figures the file carries
        assert f"| {split.replace('_', ' ')} | {card['wer'][split]:.2f} |" in text
    # a model worth adapting: the new domain is far worse than the original one
    assert card["wer"]["new_test"] >= 40.0 > card["wer"]["original_test"]


@pytest.mark.slow
def test_the_shipped_model_reproduces_its_card_on_the_demo_corpus():
    """Builds the default demo corpus when missing (minutes), then evaluates every split."""
    from raysearch_adapters.data.demo import ensure_demo_corpus
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.evaluate import evaluate

    cfg = load_config([DEMO_CONFIG])
    ensure_demo_corpus(cfg.data.demo_dir)
    model = load_base_model(cfg.model)
    card = _card(model)
    for split in SPLITS:
        fs = load_feature_set(cfg.data, model, getattr(cfg.data, split), progress=False)
        assert evaluate(model, fs)["wer"] == pytest.approx(card["wer"][split], abs=0.01), split
