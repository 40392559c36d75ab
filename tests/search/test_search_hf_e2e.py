"""The whole search with each Hugging Face backbone: a tiny random model saved with save_pretrained, the small
demo corpus, real local Ray, Optuna on SQLite; then `evaluate` with the config's model section."""

from __future__ import annotations

import json

import pytest

from builders import save_tiny_hf_ctc, save_tiny_whisper, tiny_search_overrides
from raysearch_adapters.commands.main import main
from raysearch_adapters.config import load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
from raysearch_adapters.search import run

# What differs per backbone: its model section and a space that fits its blocks.
BACKBONES = {
    "hf_ctc": (save_tiny_hf_ctc, ["model.name=hf_ctc", "search.space.blocks.choices=[all,top:1]"]),
    "whisper": (save_tiny_whisper, ["model.name=whisper", "model.whisper.max_new_tokens=6",
                                    "search.space.blocks.choices=[decoder:all,encoder:top:1+decoder:top:1]"]),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def searched(request, ray_session, search_data, tmp_path_factory):
    """A 2-trial search with each backbone (its replay and distillation switched on in one of them)."""
    name = request.param
    save, overrides = BACKBONES[name]
    root = tmp_path_factory.mktemp(name)
    folder = save(root / "model")
    corpus, _, cache = search_data
    cfg = load_config([], tiny_search_overrides(corpus, folder, cache, root / "results", name, "search.num_trials=2",
                                                "search.space.replay=[0.5]", "search.space.distill_weight=[2.0]",
                                                "search.kappa=100", *overrides))
    return name, cfg, run.run_search(cfg), root / "results" / name


def test_two_trials_end_to_end_with_a_winner_evaluated_on_test(searched):
    name, cfg, summary, out = searched
    rows = read_rows(out / "trials.parquet", TRIALS_SCHEMA)
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"COMPLETE", "PRUNED"}, [r.get("error") for r in rows]
    assert all(r["adapter_params"] > 0 and r["distill_weight"] == 2.0 and r["replay"] == 0.5 for r in rows)
    winner = summary["winner"]
    assert winner is not None and set(winner["test"]) == {"new", "original"}
    assert json.loads((out / "summary.json").read_text())["search"]["model"]["name"] == name
    if name == "whisper":  # decoder placements share the cache of the encoder's output; the other one starts lower
        assert {r["blocks"] for r in rows} <= {"decoder:all", "encoder:top:1+decoder:top:1"}
        assert winner["test_from_block"] in (1, 2)


def test_evaluate_takes_the_model_section_and_reproduces_the_winners_dev_wers(searched, capsys):
    name, cfg, summary, out = searched
    capsys.readouterr()
    code = main(["evaluate", f"model.name={name}", f"model.checkpoint={cfg.model.checkpoint}",
                 f"model.whisper.max_new_tokens={cfg.model.whisper.max_new_tokens}", "--adapter", str(out / "best_adapter.pt"),
                 "--manifest", cfg.data.new_dev, cfg.data.original_dev, f"data.cache_dir={cfg.data.cache_dir}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    wers = {parts[0]: float(parts[3]) for parts in map(str.split, printed.splitlines())
            if parts and parts[0] in (cfg.data.new_dev, cfg.data.original_dev)}
    assert wers[cfg.data.new_dev] == pytest.approx(summary["winner"]["dev"]["new"], abs=0.01)
    assert wers[cfg.data.original_dev] == pytest.approx(summary["winner"]["dev"]["original"], abs=0.01)


def test_a_placement_the_model_cannot_take_fails_before_anything_is_written(ray_session, search_data, tmp_path):
    corpus, _, cache = search_data
    folder = save_tiny_whisper(tmp_path / "model")
    for bad, why in (("search.space.blocks.choices=[all]", r"search.space.blocks.choices\[0\]: adapter.blocks: got "
                                                           r"'all' \(this model has several stacks"),
                     ("search.space.position.choices=[cross_attn]", r"got 'cross_attn'; model whisper has the "
                                                                    r"positions ffn, post in every block "
                                                                    r"'encoder:top:1\+decoder:all' selects \(block 1, "
                                                                    r"encoder hf.model.encoder.layers.1, has no position "
                                                                    r"'cross_attn'\)")):
        cfg = load_config([], tiny_search_overrides(
            corpus, folder, cache, tmp_path / "results", "bad", "model.name=whisper",
            "search.space.blocks.choices=[encoder:top:1+decoder:all]", bad))
        with pytest.raises(UserError, match=why):
            run.run_search(cfg)
        assert not (tmp_path / "results" / "bad").exists()
