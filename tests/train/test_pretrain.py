"""``pretrain`` end to end on the small demo corpus with a tiny Conformer: export, card, resume."""

from __future__ import annotations

import json

import pytest
import torch

from raysearch_adapters.commands.main import main
from raysearch_adapters.config import DEMO_CONFIG, load_config
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.models.conformer import load_checkpoint_model
from raysearch_adapters.schedule import warmup_cosine
from raysearch_adapters.train.evaluate import evaluate

TINY = ["model.conformer.d_model=16", "model.conformer.num_layers=2", "model.conformer.num_heads=2",
        "model.conformer.ffn_dim=32", "model.conformer.subsampling_channels=4", "model.conformer.vocab_size=40",
        "pretrain.warmup_steps=2", "pretrain.max_batch_seconds=30"]


def _args(small_demo, tmp_path, *extra):
    d = f"data.demo_dir={small_demo}"
    return ["pretrain", d, f"data.cache_dir={tmp_path / 'cache'}", f"pretrain.out_dir={tmp_path / 'out'}",
            *TINY, *extra]


def test_pretrain_exports_model_and_card_then_resumes(small_demo, tmp_path, capsys):
    torch.set_num_threads(1)
    assert main(_args(small_demo, tmp_path, "pretrain.epochs=1")) == 0
    out = tmp_path / "out"
    model = load_checkpoint_model(out / "model.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 on disk, fp32 in memory
    card = json.loads(model.meta["card"])
    assert set(card["wer"]) == {"original_dev", "original_test", "new_dev", "new_test"}
    assert card["epochs_run"] == 1 and len(card["history"]) == 1
    assert "raysearch-adapters pretrain" in card["command"]
    text = (out / "MODEL_CARD.md").read_text()
    assert "| original test |" in text and "| new test |" in text
    # the card describes the shipped (fp16-rounded) file itself
    cfg = load_config([DEMO_CONFIG], [f"data.demo_dir={small_demo}", f"data.cache_dir={tmp_path / 'cache'}"])
    for split in ("original_dev", "new_dev"):
        fs = load_feature_set(cfg.data, model, getattr(cfg.data, split), progress=False)
        assert evaluate(model, fs)["cer"] == pytest.approx(card["cer"][split], abs=0.005)

    # --resume continues from last.pt: one more epoch, history kept
    assert main([*_args(small_demo, tmp_path, "pretrain.epochs=2"), "--resume"]) == 0
    card = json.loads(load_checkpoint_model(out / "model.pt").meta["card"])
    assert [h["epoch"] for h in card["history"]] == [1, 2]
    assert "model:" in capsys.readouterr().out


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(50, 10, 0.5) == pytest.approx(0.505)
    assert warmup_cosine(99, 10, 1.0) == pytest.approx(0.01)
    assert warmup_cosine(99, 10, 3.0) == pytest.approx(0.01)  # past the budget: stays at the floor
