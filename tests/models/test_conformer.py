"""The built-in Conformer-CTC, checkpoints, the registry, tokenizers, decoding and WER."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from builders import tiny_conformer
from raysearch_adapters.config import ModelConfig, load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.metrics import char_error_rate, error_counts, word_error_rate
from raysearch_adapters.models.checkpoint import CheckpointError, load_state_strict, save_checkpoint
from raysearch_adapters.models.conformer import load_checkpoint_model
from raysearch_adapters.models.ctc import greedy_ctc_decode
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.models.tokenizer import SentencePieceTokenizer, TokenizerError, tokenizer_from_dict


def test_forward_shapes_and_lengths():
    model = tiny_conformer()
    x = torch.randn(3, 101, 16)
    lengths = torch.tensor([101, 57, 8])
    log_probs, out_lengths = model(x, lengths)
    # 4x subsampling with two (kernel 3, stride 2, padding 1) convolutions: ceil(ceil(n/2)/2)
    assert out_lengths.tolist() == [26, 15, 2]
    assert log_probs.shape == (3, 26, model.tokenizer.vocab_size + 1)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 26), atol=1e-4)


def test_padding_does_not_change_outputs():
    model = tiny_conformer()
    x = torch.randn(1, 60, 16)
    alone, n = model(x, torch.tensor([60]))
    padded, _ = model(torch.cat([x, torch.randn(1, 40, 16)], dim=1), torch.tensor([60]))
    assert torch.allclose(alone, padded[:, : n.item()], atol=1e-5)


@pytest.mark.parametrize("factor", [4, 8])
@torch.no_grad()
def test_padded_batch_matches_each_utterance_alone(factor):
    # Odd lengths: the last valid frame of a stride-2 stage then sees the frame past the end,
    # which must look like the zero padding an utterance alone gets (not ReLU(bias) or noise).
    model = tiny_conformer(num_layers=2)
    model.encoder.subsampling = type(model.encoder.subsampling)(16, 4, 16, factor)
    lengths = torch.tensor([101, 57, 23, 8])
    x = torch.randn(4, 101, 16)  # random padding, not zeros
    batch, out_lengths = model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_len = model(x[i:i + 1, :n], lengths[i:i + 1])
        assert int(alone_len) == int(out_lengths[i])
        torch.testing.assert_close(batch[i, : int(alone_len)], alone[0], atol=1e-5, rtol=0)


def test_prefix_split_equals_a_forward_written_out_by_hand():
    """The reference spells the model out module by module, not through encode_prefix/forward_from,
    so a split that skipped, repeated or reordered a block (k = 0 included) fails."""
    from raysearch_adapters.models.conformer import padding_mask

    model = tiny_conformer(num_layers=3)
    x, lengths = torch.randn(2, 80, 16), torch.tensor([80, 50])
    h, out_lengths = model.encoder.subsampling(x, lengths)
    mask = padding_mask(out_lengths, h.shape[1])
    for layer in model.encoder.layers:
        h = layer(h, mask)
    reference = model.head(h).float().log_softmax(dim=-1)
    assert torch.equal(model(x, lengths)[0], reference)
    for k in range(4):
        hidden, hl = model.encode_prefix(x, lengths, k)
        split, split_lengths = model.forward_from(hidden, hl, k)
        assert torch.equal(split, reference) and torch.equal(split_lengths, out_lengths)


def test_greedy_decode_and_wer_known_case():
    # frames: blank a a blank a b b blank -> "a a b" (repeats merge, a blank separates two a's)
    ids = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().log()
    assert greedy_ctc_decode(log_probs, torch.tensor([8])) == [[0, 0, 1]]
    assert greedy_ctc_decode(log_probs, torch.tensor([4])) == [[0]]
    refs, hyps = ["the cat sat", "on the mat"], ["the cat sat down", "on mat"]
    assert error_counts(refs, hyps) == (2, 6)
    assert word_error_rate(refs, hyps) == pytest.approx(100 * 2 / 6)
    assert char_error_rate(["abc"], ["abd"]) == pytest.approx(100 / 3)


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    model = tiny_conformer(seed=1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"note": "x"})
    loaded = load_checkpoint_model(path)
    x, lengths = torch.randn(2, 40, 16), torch.tensor([40, 33])
    assert torch.equal(model(x, lengths)[0], loaded(x, lengths)[0])
    assert loaded.meta == {"note": "x"}
    assert loaded.tokenizer.to_dict() == model.tokenizer.to_dict()
    via_registry = load_base_model(ModelConfig(checkpoint=str(path)))
    assert not any(p.requires_grad for p in via_registry.parameters())  # the base comes frozen
    # (with autograd on, nn.MultiheadAttention's fused path depends on requires_grad: compare without it)
    with torch.no_grad():
        assert torch.equal(model(x, lengths)[0], via_registry(x, lengths)[0])


def test_fp16_checkpoint_is_half_size_and_close(tmp_path):
    model = tiny_conformer(seed=2, d_model=32)
    save_checkpoint(tmp_path / "full.pt", model)
    save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.7 * (tmp_path / "full.pt").stat().st_size
    x, lengths = torch.randn(1, 40, 16), torch.tensor([40])
    assert torch.allclose(model(x, lengths)[0], load_checkpoint_model(tmp_path / "half.pt")(x, lengths)[0],
                          atol=5e-2)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    small, wide = tiny_conformer(d_model=16), tiny_conformer(d_model=24)
    with pytest.raises(CheckpointError, match=r"shape mismatch: encoder\.subsampling\.out\.weight"):
        load_state_strict(small, wide.state_dict(), "w.pt")
    state = dict(small.state_dict())
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"w\.pt: .*missing: head\.bias; unexpected: extra\.weight"):
        load_state_strict(small, state, "w.pt")


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a loadable checkpoint"):
        load_checkpoint_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: format None"):
        load_checkpoint_model(tmp_path / "other.pt")


def test_unknown_model_name_lists_available():
    with pytest.raises(UserError, match="model.name: got 'nemo_rnnt'; allowed: conformer_ctc, wav2vec2, hf_ctc, whisper, nemo$"):
        load_config(overrides=["model.name=nemo_rnnt"])
    with pytest.raises(UserError, match="available: conformer_ctc, wav2vec2, hf_ctc, whisper, nemo$"):
        load_base_model(dataclasses.replace(ModelConfig(), name="nemo_rnnt"))


def test_sentencepiece_round_trip_and_unencodable_chars():
    texts = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot for a fox"] * 20
    tok = SentencePieceTokenizer.train(texts, vocab_size=40)
    again = tokenizer_from_dict(tok.to_dict())
    assert again.decode(again.encode("the cat ran")) == "the cat ran"
    assert tok.encode("the dog") == again.encode("the dog")
    with pytest.raises(TokenizerError, match=r"m\.json: .*'!' on lines 2; 'é' on lines 1, 3"):
        tok.check_texts(["the café", "hot!", "é"], "m.json")


def test_missing_demo_model_says_how_to_make_one(monkeypatch, tmp_path):
    from raysearch_adapters.models import conformer

    monkeypatch.setattr(conformer, "DEMO_MODEL", tmp_path / "demo_model.pt")
    with pytest.raises(UserError, match=r"model.checkpoint=demo: .*raysearch-adapters pretrain.*model.checkpoint=PATH"):
        load_base_model(ModelConfig(checkpoint="demo"))
