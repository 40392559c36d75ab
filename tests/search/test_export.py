"""``raysearch-adapters export``: a LoRA winner merged and checked on both dev sets, other types refused with the
adapter-only file, a folder without a winner refused. Results folders are built here as a search leaves them."""

from __future__ import annotations

import json

import pytest
import torch

from builders import save_tiny_hf_ctc, save_tiny_whisper, tiny_search_overrides
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.commands.main import main
from raysearch_adapters.config import AdapterConfig, load_config, to_yaml
from raysearch_adapters.errors import UserError
from raysearch_adapters.export.merged import export
from raysearch_adapters.models.conformer import load_checkpoint_model
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results.layout import BEST_ADAPTER_FILE, CONFIG_FILE, SUMMARY_FILE

LORA = AdapterConfig(type="lora", rank=2, alpha=4.0, targets="all", blocks="top:1")


@pytest.fixture
def results_for(search_data, tmp_path):
    """``(adapter config, *overrides) -> results folder`` holding config.yaml, summary.json and best_adapter.pt
    (random non-zero adapter weights on the tiny base model)."""
    def make(adapter: AdapterConfig, *extra: str, winner: bool = True):
        cfg = load_config([], tiny_search_overrides(*search_data, tmp_path, "s", *extra))
        out = tmp_path / "s"
        out.mkdir()
        (out / CONFIG_FILE).write_text(to_yaml(cfg))
        summary = {"winner": {"trial_id": "t1", "dev": {"new": 50.0, "original": 20.0}} if winner else None,
                   "no_feasible_trial": None if winner else {"trial_id": "t1"}, "interrupted": False}
        (out / SUMMARY_FILE).write_text(json.dumps(summary))
        model = load_base_model(cfg.model)
        fingerprint = base_fingerprint(model)
        handle = inject_adapters(model, adapter)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in handle.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        if winner:
            save_adapter(out / BEST_ADAPTER_FILE, handle, adapter, fingerprint, extra={"hp": {"specaugment": False}})
        return out
    return make


def test_a_lora_winner_is_merged_written_in_the_project_format_and_checked_on_both_dev_sets(results_for, capsys):
    out = results_for(LORA)
    assert main(["export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "merged the lora winner (trial t1) into the base weights" in printed and "fp32" in printed
    record = json.loads((out / "export" / "export.json").read_text())
    assert record["merged"] is True and record["type"] == "lora" and record["measured_from_block"] == 1
    assert record["precisions"] == ["fp32"]  # CPU, train.precision auto: the search measured fp32
    for domain in ("new", "original"):
        r = record["dev"]["fp32"][domain]
        assert r["max_abs_output_diff"] <= 1e-5 and r["changed_hypotheses"] == 0 and r["wer_difference"] == 0.0
        assert r["utterances"] > 0
    # the checkpoint is a plain base model with the update in its weights: it computes the adapted outputs
    merged = load_checkpoint_model(out / "export" / "model.pt")
    cfg = load_config([out / CONFIG_FILE])
    adapted = load_base_model(cfg.model)
    load_adapter(out / BEST_ADAPTER_FILE, adapted)
    x = torch.randn(2, 40, 16)
    lengths = torch.tensor([40, 30])
    with torch.no_grad():
        assert (merged(x, lengths)[0] - adapted(x, lengths)[0]).abs().max() <= 1e-5
    assert merged.state_dict().keys() == load_base_model(cfg.model).state_dict().keys()


# Each Hugging Face backbone: how its tiny model is saved, its model section, where its LoRA winner sits.
HF_BACKBONES = {"hf_ctc": (save_tiny_hf_ctc, ["model.name=hf_ctc"], "top:1"),
                "whisper": (save_tiny_whisper, ["model.name=whisper", "model.whisper.max_new_tokens=6"], "decoder:all")}


@pytest.mark.parametrize("name", sorted(HF_BACKBONES))
def test_a_lora_winner_of_a_hugging_face_backbone_is_a_transformers_folder_checked_on_both_dev_sets(
        results_for, tmp_path, name):
    import transformers

    save, overrides, blocks = HF_BACKBONES[name]
    folder = save(tmp_path / "base")
    # its own feature cache: the session's holds the prefix caches test_search_e2e counts
    out = results_for(AdapterConfig(type="lora", rank=2, alpha=4.0, targets="all", blocks=blocks),
                      f"model.checkpoint={folder}", f"data.cache_dir={tmp_path / 'cache'}", *overrides)
    record = export(out)
    assert record["merged"] is True and record["files"]["model"] == str(out / "export" / "hf_model")
    for domain in ("new", "original"):
        r = record["dev"]["fp32"][domain]
        assert r["max_abs_output_diff"] <= 1e-4 and r["changed_hypotheses"] == 0 and r["utterances"] > 0
    # an ordinary Hugging Face folder: transformers loads the model, its tokenizer and its feature extractor
    exported = out / "export" / "hf_model"
    auto = transformers.AutoModelForCTC if name == "hf_ctc" else transformers.WhisperForConditionalGeneration
    plain = auto.from_pretrained(exported)
    transformers.AutoTokenizer.from_pretrained(exported)
    transformers.AutoFeatureExtractor.from_pretrained(exported)
    base = load_base_model(load_config([out / CONFIG_FILE]).model).hf.state_dict()
    merged = plain.state_dict()
    assert merged.keys() == base.keys() and any(not torch.equal(merged[k], base[k]) for k in base)  # LoRA inside
    reloaded = load_base_model(load_config([out / CONFIG_FILE], [f"model.checkpoint={exported}"]).model)
    assert all(torch.equal(v, merged[k]) for k, v in reloaded.hf.state_dict().items())
    assert record["load"].startswith("transformers: ")


def test_a_search_in_bf16_is_checked_in_fp32_and_bf16(results_for, tmp_path):
    record = export(results_for(LORA, "train.precision=bf16"), tmp_path / "elsewhere")
    assert record["precisions"] == ["fp32", "bf16"] and set(record["dev"]["bf16"]) == {"new", "original"}
    assert (tmp_path / "elsewhere" / "model.pt").is_file() and (tmp_path / "elsewhere" / "export.json").is_file()
    assert all(r["max_abs_output_diff"] < 1.0 for r in record["dev"]["bf16"].values())


@pytest.mark.parametrize("adapter", [AdapterConfig(dim=4), AdapterConfig(type="parallel", dim=4, positions=["ffn"])],
                         ids=["bottleneck", "parallel"])
def test_a_type_that_cannot_merge_is_refused_with_the_adapter_only_file_and_how_to_load_it(results_for, adapter,
                                                                                            capsys):
    out = results_for(adapter)
    assert main(["export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"adapter type '{adapter.type}' cannot be merged into the base weights: its branch is "
                              "non-linear")
    assert f"wrote the adapter-only file instead: {out / 'export' / 'adapter.pt'}" in printed
    assert "load it: raysearch-adapters evaluate --model" in printed
    assert not (out / "export" / "model.pt").exists()
    record = json.loads((out / "export" / "export.json").read_text())
    assert record["merged"] is False and "cannot be merged" in record["reason"]
    cfg = load_config([out / CONFIG_FILE])
    handle, loaded, _ = load_adapter(out / "export" / "adapter.pt", load_base_model(cfg.model))
    assert loaded == adapter


def test_a_folder_without_a_winner_is_one_clear_error(results_for, tmp_path, capsys):
    out = results_for(LORA, winner=False)
    assert main(["export", str(out)]) == 2
    assert capsys.readouterr().err == (f"raysearch-adapters export: error: {out / SUMMARY_FILE}: winner is null: no "
                                       "trial was feasible; there is no best_adapter.pt to export\n")
    with pytest.raises(UserError, match=rf"{tmp_path / 'empty' / SUMMARY_FILE}: not found; export takes the results "
                                        "folder of a finished search"):
        (tmp_path / "empty").mkdir()
        export(tmp_path / "empty")
    with pytest.raises(UserError, match="not a folder"):
        export(tmp_path / "missing")
