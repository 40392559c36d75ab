"""The Hugging Face CTC backbone against transformers' own models (tiny, random weights, saved and loaded offline)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from builders import HF_CTC_VOCAB, padded_waves, random_inputs, save_tiny_hf_ctc
from raysearch_adapters.config import ModelConfig
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.ctc import greedy_ctc_decode
from raysearch_adapters.models.hf_ctc import HFCTC
from raysearch_adapters.models.registry import load_base_model

# (model type, do_stable_layer_norm, feat_extract_norm): the layer variants of each family
VARIANTS = [("wav2vec2", False, "group"), ("wav2vec2", True, "layer"), ("hubert", False, "group"),
            ("hubert", True, "layer"), ("wavlm", False, "group"), ("wavlm", True, "layer"),
            ("data2vec-audio", False, "layer")]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _ids(variant):
    return f"{variant[0]}-{'stable' if variant[1] else 'post'}-{variant[2]}"


@pytest.fixture(params=VARIANTS, ids=_ids)
def folder(request, tmp_path):
    model_type, stable, norm = request.param
    return save_tiny_hf_ctc(tmp_path / "m", model_type, stable=stable, feat_extract_norm=norm)


@torch.no_grad()
def test_matches_transformers_per_utterance(folder):
    """Featurizer + backbone == the processor + AutoModelForCTC on each utterance alone (blank first)."""
    model = HFCTC.from_pretrained(str(folder))
    ref = transformers.AutoModelForCTC.from_pretrained(folder).eval()
    processor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    waves, lengths = padded_waves()
    feats, feat_lengths = model.featurizer()(waves, lengths)
    log_probs, out_lengths = model(feats, feat_lengths)  # a padded batch
    for i in range(2):
        n = int(lengths[i])
        values = processor(waves[i, :n].numpy(), sampling_rate=16000, return_tensors="pt").input_values
        expected = torch.log_softmax(ref(values).logits[0], dim=-1)[:, model.output_order]
        t = int(out_lengths[i])
        assert t == expected.shape[0]
        torch.testing.assert_close(log_probs[i, :t], expected, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_prefix_split_matches_the_whole_model(folder):
    model = HFCTC.from_pretrained(str(folder))
    x, lengths = random_inputs(model, frames=20)
    full, full_len = model(x, lengths)
    for k in range(3):
        hidden, h_len = model.encode_prefix(x, lengths, k)
        out, out_len = model.forward_from(hidden, h_len, k)
        assert torch.equal(out, full) and torch.equal(out_len, full_len)


def test_blank_is_the_pad_token_wherever_it_sits_and_texts_map_onto_the_vocabulary(tmp_path):
    model = HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "m")))
    assert HF_CTC_VOCAB.index("[PAD]") == len(HF_CTC_VOCAB) - 1  # the blank is the last output of the head
    assert model.blank == len(HF_CTC_VOCAB) - 1 and model.output_order.tolist()[0] == model.blank
    assert model.tokenizer.vocab_size == len(HF_CTC_VOCAB) - 1 and "[UNK]" in model.tokenizer.ignore
    ids = model.tokenizer.encode("it's a test")
    assert "".join(model.labels[i] for i in ids) == "it's|a|test" and model.tokenizer.decode(ids) == "it's a test"
    # A path through the head's own outputs (blank = [PAD]) decodes back through the same tokenizer.
    path = torch.full((1, 9, len(HF_CTC_VOCAB)), -10.0)
    for t, label in enumerate(["h", "h", "[PAD]", "i", "|", "[UNK]", "o", "[PAD]", "o"]):
        path[0, t, HF_CTC_VOCAB.index(label)] = 0.0
    decoded = greedy_ctc_decode(path.index_select(-1, model.output_order), torch.tensor([9]))[0]
    assert model.tokenizer.decode(decoded) == "hi oo"


def test_an_upper_case_vocabulary_takes_the_lower_case_manifest_texts(tmp_path):
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    folder = tmp_path / "m"
    save_tiny_hf_ctc(folder, vocab=["|"] + list("abcdefghijklmnopqrstuvwxyz'") + ["[UNK]", "[PAD]"])
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "word_delimiter_token": "|"}))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": 0, "vocab_size": len(vocab)}))
    (folder / "special_tokens_map.json").unlink(missing_ok=True)
    transformers.AutoModelForCTC.from_config(transformers.AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    model = HFCTC.from_pretrained(str(folder))
    assert model.blank == 0 and model.tokenizer.decode(model.tokenizer.encode("hi there")) == "hi there"
    assert [model.labels[i] for i in model.tokenizer.encode("it's")] == ["I", "T", "'", "S"]
    assert {"<s>", "</s>", "<unk>"} <= set(model.tokenizer.ignore)


def test_a_character_outside_the_vocabulary_names_the_line_and_the_character(tmp_path):
    no_apostrophe = [c for c in HF_CTC_VOCAB if c != "'"]
    model = HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "m", vocab=no_apostrophe)))
    with pytest.raises(UserError, match=r"new.json: characters the tokenizer cannot encode: \"'\" on lines 2"):
        model.tokenizer.check_texts(["a b", "it's", "c"], "new.json")


@torch.no_grad()
def test_featurizer_is_per_utterance_and_applies_do_normalize(tmp_path):
    model = HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "n", do_normalize=True)))
    waves, lengths = padded_waves()
    batch, batch_lengths = model.featurizer()(waves, lengths)
    alone, alone_len = model.featurizer()(waves[1:, :2600], lengths[1:])
    assert int(batch_lengths[1]) == int(alone_len[0])
    assert torch.equal(batch[1, : int(alone_len[0])], alone[0]) and not batch.requires_grad
    # With a per-frame layer-norm extractor only the processor's normalisation removes a gain and an offset.
    shifted = 3 * waves + 0.5 * (waves != 0)
    for do_normalize in (True, False):
        m = HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / f"l{do_normalize}", feat_extract_norm="layer",
                                                       do_normalize=do_normalize)))
        assert m.featurizer_key()["do_normalize"] is do_normalize
        a, b = m.featurizer()(waves, lengths)[0], m.featurizer()(shifted, lengths)[0]
        assert torch.allclose(a, b, atol=1e-4) is do_normalize


def test_blocks_and_positions_are_the_transformers_modules(tmp_path):
    model = HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "m", "hubert", num_layers=3)))
    blocks = model.adaptable_blocks()
    assert [b.name for b in blocks] == [f"hf.hubert.encoder.layers.{i}" for i in range(3)]
    assert {b.stack for b in blocks} == {"encoder"} and all(b.width == 16 for b in blocks)
    assert blocks[2].positions == {"post": "hf.hubert.encoder.layers.2", "mha": "hf.hubert.encoder.layers.2.attention",
                                   "ffn": "hf.hubert.encoder.layers.2.feed_forward"}
    assert type(model.get_submodule(blocks[0].name)).__name__ == "HubertEncoderLayer"


def test_config_loads_it_through_the_registry(tmp_path):
    folder = save_tiny_hf_ctc(tmp_path / "m", "wavlm")
    model = load_base_model(ModelConfig(name="hf_ctc", checkpoint=str(folder)))
    assert isinstance(model, HFCTC) and not model.training and model.config_dict()["model_type"] == "wavlm"
    assert "_name_or_path" not in model.config_dict()["hf_config"]  # a moved folder is the same base


def test_bad_checkpoints_are_one_error_each_naming_the_key(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"model.checkpoint: .*nowhere: no such folder"):
        HFCTC.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"model.checkpoint: .*empty has no config.json: not a folder written by "
                                        r"save_pretrained"):
        HFCTC.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "file.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=r"model.checkpoint: .*file.pt is a file"):
        HFCTC.from_pretrained(str(tmp_path / "file.pt"))
    with pytest.raises(UserError, match=r"model.checkpoint: .*bert.* is a 'bert' model; model.name=hf_ctc takes "
                                        r"wav2vec2, hubert, data2vec-audio, wavlm CTC checkpoints"):
        HFCTC.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "bert", "bert")))
    folder = save_tiny_hf_ctc(tmp_path / "pretrained-only")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Wav2Vec2ForPreTraining"]}))
    with pytest.raises(UserError, match=r"has no CTC head \(architectures: Wav2Vec2ForPreTraining\)"):
        HFCTC.from_pretrained(str(folder))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"^model.checkpoint: hub id 'someone/not-cached-wav2vec2' is not in the local "
                                        r"Hugging Face cache .* could not be downloaded"):
        HFCTC.from_pretrained("someone/not-cached-wav2vec2")
