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
    assert record["peft"] == {"written": False, "reason": "no PEFT folder: peft wraps Hugging Face transformers "
                              "models; model.name=conformer_ctc is not one (the merged model and the project's "
                              "adapter file hold the winner)"}
    assert record["peft"]["reason"] in printed.splitlines() and "ctranslate2" not in record
    assert not (out / "export" / "peft_adapter").exists()


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
    assert (f"no PEFT folder: peft has no {adapter.type} adapter type (a LayerNorm -> Linear -> activation -> Linear "
            "branch); the project's adapter file holds it") in printed.splitlines()
    assert not (out / "export" / "peft_adapter").exists()
    record = json.loads((out / "export" / "export.json").read_text())
    assert record["merged"] is False and "cannot be merged" in record["reason"]
    assert record["peft"]["written"] is False and "peft has no" in record["peft"]["reason"]
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


def _lora_winner(results_for, tmp_path, name, *extra: str, dropout: float = 0.0):
    """A results folder whose winner is a LoRA (random non-zero A and B) on every target of the tiny model of
    Hugging Face backbone ``name``."""
    save, overrides, blocks = HF_BACKBONES[name]
    folder = save(tmp_path / "base")
    return results_for(AdapterConfig(type="lora", rank=2, alpha=4.0, targets="all", blocks=blocks, dropout=dropout),
                       f"model.checkpoint={folder}", f"data.cache_dir={tmp_path / 'cache'}", *overrides, *extra)


@pytest.mark.parametrize("name", sorted(HF_BACKBONES))
def test_a_lora_winner_of_a_hugging_face_backbone_is_a_peft_folder_that_reproduces_the_unmerged_adapter(
        results_for, tmp_path, name, monkeypatch):
    import transformers
    import yaml
    from peft import PeftModel
    from safetensors.torch import load_file

    out = _lora_winner(results_for, tmp_path, name, dropout=0.1)
    # the search's model.checkpoint as a user writes it, under ~: the PEFT folder names the base as from_pretrained
    # takes it (transformers does not expand ~)
    monkeypatch.setenv("HOME", str(tmp_path))
    stored = yaml.safe_load((out / CONFIG_FILE).read_text())
    stored["model"]["checkpoint"] = "~/base"
    (out / CONFIG_FILE).write_text(yaml.safe_dump(stored))
    record = export(out)
    peft = record["peft"]
    folder = out / "export" / "peft_adapter"
    assert peft["written"] is True and peft["folder"] == str(folder) and peft["reproduces_unmerged"] is True
    for domain in ("new", "original"):  # through peft's layers: the unmerged adapter's transcripts, to the bit
        r = peft["dev"]["fp32"][domain]
        assert r["peft_wer"] == r["unmerged_wer"] == record["dev"]["fp32"][domain]["unmerged_wer"]
        assert r["changed_hypotheses"] == 0 and r["max_abs_output_diff"] <= 1e-5 and r["utterances"] > 0
    cfg = load_config([out / CONFIG_FILE])
    adapted = load_base_model(cfg.model)
    handle, _, _ = load_adapter(out / BEST_ADAPTER_FILE, adapted)
    adapted.eval()  # the adapters too: no rank dropout
    paths = [t.removeprefix("hf.") for t in handle.targeted]  # module paths inside the transformers model
    assert sorted(peft["targeted"]) == sorted(paths)
    # peft's own file format: its config names the targets, rank, alpha and dropout; its weights peft's key names
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4.0
    assert config["lora_dropout"] == 0.1 and sorted(config["target_modules"]) == sorted(paths)
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert peft["load"].endswith(f".from_pretrained('{tmp_path / 'base'}'), '{folder}')")
    weights = load_file(folder / "adapter_model.safetensors")
    assert sorted(weights) == sorted(f"base_model.model.{p}.{part}.weight"
                                     for p in paths for part in ("lora_A", "lora_B"))
    assert all(weights[f"base_model.model.{p}.lora_B.weight"].abs().max() > 0 for p in paths)  # B = 0 hides nothing
    # plain transformers + peft, as a user loads it, computes the project's adapted model's logits
    auto = transformers.AutoModelForCTC if name == "hf_ctc" else transformers.WhisperForConditionalGeneration
    with_peft = PeftModel.from_pretrained(auto.from_pretrained(config["base_model_name_or_path"]), str(folder)).eval()
    plain = auto.from_pretrained(tmp_path / "base").eval()
    g = torch.Generator().manual_seed(1)
    if name == "hf_ctc":
        inputs = {"input_values": torch.randn(2, 8000, generator=g)}
    else:
        inputs = {"input_features": torch.randn(2, 80, 3000, generator=g),
                  "decoder_input_ids": torch.tensor([adapted.prompt + [5, 9, 11]] * 2)}
    with torch.no_grad():
        expected = adapted.hf(**inputs).logits
        assert (with_peft(**inputs).logits - expected).abs().max() <= 1e-5
        assert (plain(**inputs).logits - expected).abs().max() > 1e-3  # the adapter changes them


def test_a_lora_winner_of_whisper_is_a_ctranslate2_model_transcribing_as_the_merged_model(results_for, tmp_path):
    import ctranslate2
    import numpy as np
    import transformers

    from raysearch_adapters.data.audio import load_audio
    from raysearch_adapters.data.manifest import read_manifest

    out = _lora_winner(results_for, tmp_path, "whisper")
    record = export(out)
    ct2 = record["ctranslate2"]
    folder = out / "export" / "ct2_model"
    assert ct2["written"] is True and ct2["folder"] == str(folder) and ct2["quantization"] == "float32"
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {f.name for f in folder.iterdir()}
    assert ct2["beam_size"] == 1 and ct2["max_decoded_tokens"] == 6  # model.whisper.max_new_tokens=6
    assert ct2["worse_than_merged"] is False and ct2["warnings"] == [] and ct2["worse_by_limit"] == 0.5
    for domain in ("new", "original"):
        r = ct2["dev"][domain]
        assert r["ct2_wer"] == r["merged_wer"] == record["dev"]["fp32"][domain]["merged_wer"]
        assert r["wer_difference"] == 0.0 and r["changed_hypotheses"] == 0 and r["utterances"] > 0
        assert isinstance(r["looping"], list) and isinstance(r["merged_looping"], int)
    # CT2's greedy transcripts are transformers' greedy transcripts of the merged folder (generate, beam 1)
    cfg = load_config([out / CONFIG_FILE])
    merged = out / "export" / "hf_model"
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(merged).eval()
    processor = transformers.WhisperProcessor.from_pretrained(merged)
    utterances = read_manifest(cfg.data.new_dev)[:3]
    waves = [load_audio(u.audio_filepath, 16000, u.offset, u.duration).numpy() for u in utterances]
    features = processor.feature_extractor(waves, sampling_rate=16000, return_tensors="np").input_features
    with torch.no_grad():
        ids = hf.generate(torch.from_numpy(features), max_new_tokens=6, num_beams=1, do_sample=False)
    expected = processor.batch_decode(ids, skip_special_tokens=True)
    model = ctranslate2.models.Whisper(str(folder))
    prompt = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), [prompt] * 3,
                             beam_size=1, max_length=12)
    assert [processor.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results] == expected
    assert any(e.strip() for e in expected)


def test_a_whisper_winner_with_a_dataset_dev_set_is_checked_in_ctranslate2_on_it(results_for, search_data,
                                                                                 tmp_path):
    """A dev set given as a Hugging Face dataset with its own transcript column: CTranslate2 transcribes the
    utterances the search measured, read with the search's data.text_column."""
    datasets = pytest.importorskip("datasets")
    from raysearch_adapters.data.manifest import read_manifest

    utts = read_manifest(search_data[0] / "new" / "dev.json", check_audio=False)
    saved = tmp_path / "new_dev"
    datasets.Dataset.from_dict({"audio": [u.audio_filepath for u in utts], "sentence": [u.text for u in utts]}) \
        .cast_column("audio", datasets.Audio()).save_to_disk(str(saved))
    out = _lora_winner(results_for, tmp_path, "whisper", f"data.new_dev={saved}", "data.text_column=sentence")
    record = export(out)
    r = record["ctranslate2"]["dev"]["new"]
    assert r["utterances"] == len(utts) and r["ct2_wer"] == r["merged_wer"] == record["dev"]["fp32"]["new"]["merged_wer"]


def test_a_ctranslate2_model_that_transcribes_worse_than_the_merged_model_is_reported_loudly(results_for, tmp_path,
                                                                                              monkeypatch, capsys):
    from raysearch_adapters.export import ct2

    out = _lora_winner(results_for, tmp_path, "whisper")
    # a conversion gone wrong: every transcript the same few words over and over
    monkeypatch.setattr(ct2, "transcribe",
                        lambda folder, model, utterances, device: ["zero one " * 20] * len(utterances))
    assert main(["export", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "export" / "export.json").read_text())["ctranslate2"]
    assert record["worse_than_merged"] is True and len(record["warnings"]) == 2
    for domain in ("new", "original"):
        r = record["dev"][domain]
        assert r["wer_difference"] > 0.5 and len(r["looping"]) == r["utterances"]  # all loop (zlib ratio > 2.4)
        assert (f"WARNING: the CTranslate2 model (float32) transcribes dev set {domain} worse than the merged model: "
                f"WER {r['ct2_wer']:.2f} vs {r['merged_wer']:.2f}") in printed


def test_the_ctranslate2_report_fires_past_half_a_wer_point():
    from raysearch_adapters.export.ct2 import warnings

    dev = {"new": {"ct2_wer": 20.6, "merged_wer": 20.0, "wer_difference": 0.6000000000000014},
           "original": {"ct2_wer": 10.5, "merged_wer": 10.0, "wer_difference": 0.5}}
    assert warnings(dev, "int8") == [
        "WARNING: the CTranslate2 model (int8) transcribes dev set new worse than the merged model: WER 20.60 vs 20.00 "
        "(+0.60 points, more than 0.5); do not ship it unchecked: try another --ct2-quantization, or ship hf_model/"]
    assert warnings({"new": dict(dev["new"], wer_difference=-3.0)}, "int8") == []


def test_ctranslate2_generate_decodes_the_project_s_number_of_tokens():
    from raysearch_adapters.export.ct2 import max_length

    # CTranslate2's Whisper decodes min(max_length / 2, max_length - (prompt - 1)) tokens
    for decoded, prompt in [(6, 2), (6, 4), (1, 4), (128, 4), (3, 1)]:
        n = max_length(decoded, prompt)
        assert min(n // 2, n - (prompt - 1)) == decoded


def test_an_unknown_ct2_quantization_is_refused(results_for):
    out = results_for(LORA)
    with pytest.raises(SystemExit):
        main(["export", str(out), "--ct2-quantization", "int4"])
    with pytest.raises(UserError, match="--ct2-quantization: got 'int4'; allowed: float32, int8, float16"):
        export(out, ct2_quantization="int4")


def test_a_lora_winner_whose_weights_a_module_reads_itself_gets_no_peft_folder_and_says_why():
    from builders import tiny_hf_ctc
    from raysearch_adapters.export.peft_lora import why_not_peft

    model = tiny_hf_ctc(model_type="wavlm", num_layers=2)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, alpha=4.0, targets="q,ffn_in", blocks="top:1"))
    assert why_not_peft(model, handle) == (
        "no PEFT folder: the LoRA of hf.wavlm.encoder.layers.1.attention updates weights its module reads itself "
        "(not through an nn.Linear call), which peft's LoRA layer would bypass; the merged model holds the winner")


def test_outputs_are_compared_on_their_scores_where_both_transcripts_have_positions():
    from raysearch_adapters.export.merged import _compare
    from raysearch_adapters.models.whisper import Whisper

    # Whisper's teacher rows: [greedy token, top-2 ids, top-2 logits]; two near-equal tokens trade places
    a = torch.tensor([[7.0, 3.0, 2900.0, 5.00, 4.99], [9.0, 9.0, 1.0, 6.0, 1.0]])
    b = torch.tensor([[7.0, 2900.0, 3.0, 5.01, 5.00], [9.0, 9.0, 1.0, 6.0, 1.0], [4.0, 4.0, 8.0, 3.0, 2.0]])
    scores = Whisper.output_scores(None, a)
    assert torch.equal(scores, a[:, 3:])
    unmerged = {"new": {"wer": 10.0, "hypotheses": ["x"], "outputs": [Whisper.output_scores(None, a)]}}
    other = {"new": {"wer": 10.0, "hypotheses": ["x"], "outputs": [Whisper.output_scores(None, b)]}}
    # the logits' largest difference over the 2 positions both have (0.01), not the ids' (2,897) nor a shape error
    assert _compare(unmerged, other)["new"]["max_abs_output_diff"] == pytest.approx(0.01, abs=1e-6)
