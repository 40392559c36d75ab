"""The torchaudio wav2vec2 backend against torchaudio's own Wav2Vec2Model (tiny, random weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchaudio.models import wav2vec2_model

from builders import WAV2VEC2_LABELS, padded_waves, random_inputs, tiny_wav2vec2
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.ctc import greedy_ctc_decode
from raysearch_adapters.models.wav2vec2 import Wav2Vec2CTC, asr_bundle_names


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _reference(model: Wav2Vec2CTC):
    """torchaudio's Wav2Vec2Model with the same weights (the state-dict keys are the same)."""
    ref = wav2vec2_model(**model.params)
    ref.load_state_dict(model.state_dict())
    return ref.eval()


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
@torch.no_grad()
def test_matches_torchaudio_per_utterance(mode):
    model = tiny_wav2vec2(extractor_mode=mode)
    ref = _reference(model)
    waves, lengths = padded_waves()
    feats, feat_lengths = model.featurizer()(waves, lengths)
    log_probs, out_lengths = model(feats, feat_lengths)
    assert torch.equal(out_lengths, feat_lengths)
    for i in range(2):
        n = int(lengths[i])
        expected, ref_len = ref(waves[i:i + 1, :n])
        t = int(out_lengths[i])
        assert t == expected.shape[1]
        torch.testing.assert_close(log_probs[i, :t], F.log_softmax(expected[0], dim=-1), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_matches_torchaudio_on_a_padded_batch():
    # With per-frame LayerNorm in the extractor, torchaudio's batched forward is padding-safe,
    # so the whole padded batch (attention mask included) must agree.
    model = tiny_wav2vec2(extractor_mode="layer_norm")
    ref = _reference(model)
    waves, lengths = padded_waves()
    log_probs, out_lengths = model(*model.featurizer()(waves, lengths))
    expected, ref_lengths = ref(waves, lengths)
    assert torch.equal(out_lengths, ref_lengths)
    for i, t in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(log_probs[i, :t], F.log_softmax(expected[i, :t], dim=-1), atol=1e-5, rtol=1e-5)


def test_featurizer_output_does_not_depend_on_the_batch():
    model = tiny_wav2vec2(extractor_mode="group_norm")
    fz = model.featurizer()
    waves, lengths = padded_waves()
    batch, batch_lengths = fz(waves, lengths)
    alone, alone_len = fz(waves[1:, :2600], lengths[1:])
    assert batch.shape[-1] == model.input_dim == 8
    assert int(batch_lengths[1]) == int(alone_len[0])
    torch.testing.assert_close(batch[1, :int(alone_len[0])], alone[0], atol=0, rtol=0)
    assert not batch.requires_grad  # frozen: the cache never keeps a graph


@torch.no_grad()
def test_normalize_waveform_makes_features_gain_invariant():
    model = tiny_wav2vec2(extractor_mode="layer_norm", normalize_waveform=True)
    waves, lengths = padded_waves()
    a, _ = model.featurizer()(waves, lengths)
    b, _ = model.featurizer()(3 * waves + 0.5 * (waves != 0), lengths)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    plain = tiny_wav2vec2(extractor_mode="layer_norm")
    c, _ = plain.featurizer()(3 * waves, lengths)
    assert not torch.allclose(a, c, atol=1e-3)


@torch.no_grad()
def test_prefix_split_matches_forward():
    model = tiny_wav2vec2(num_layers=3)
    x, lengths = random_inputs(model, frames=20)
    full, full_len = model(x, lengths)
    for k in range(4):
        hidden, h_len = model.encode_prefix(x, lengths, k)
        assert hidden.shape == (2, 20, 16)
        out, out_len = model.forward_from(hidden, h_len, k)
        assert torch.equal(out, full) and torch.equal(out_len, full_len)


def test_blocks_positions_and_widths():
    model = tiny_wav2vec2(num_layers=3, embed_dim=16)
    blocks = model.adaptable_blocks()
    assert [b.name for b in blocks] == [f"encoder.transformer.layers.{i}" for i in range(3)]
    assert all(b.width == 16 for b in blocks)
    assert blocks[1].positions == {"post": "encoder.transformer.layers.1",
                                   "mha": "encoder.transformer.layers.1.attention",
                                   "ffn": "encoder.transformer.layers.1.feed_forward"}
    x = torch.randn(1, 5, 16)
    attn_out = model.get_submodule(blocks[0].positions["mha"])(x)
    assert isinstance(attn_out, tuple) and attn_out[0].shape == x.shape  # the adapter goes on item 0
    assert model.get_submodule(blocks[0].positions["ffn"])(x).shape == x.shape


def test_tokenizer_blank_is_label_zero():
    model = tiny_wav2vec2()
    assert model.labels[0] == "-" and model.tokenizer.vocab_size == len(WAV2VEC2_LABELS) - 1
    ids = model.tokenizer.encode("it's a test")
    assert "".join(model.labels[i + 1] for i in ids) == "IT'S|A|TEST"  # output i + 1 is token i
    assert model.tokenizer.decode(ids) == "it's a test"
    # A CTC path through the model's outputs decodes back through the same tokenizer.
    path = torch.full((1, 12, len(model.labels)), -10.0)
    for t, label in enumerate(["H", "H", "-", "I", "|", "|", "-", "H", "O", "-", "O", "-"]):
        path[0, t, model.labels.index(label)] = 0.0
    decoded = greedy_ctc_decode(path, torch.tensor([12]))[0]
    assert model.tokenizer.decode(decoded) == "hi hoo"


def test_config_dict_rebuilds_the_same_model():
    model = tiny_wav2vec2(extractor_mode="layer_norm", normalize_waveform=True)
    again = Wav2Vec2CTC.from_config_dict(model.config_dict())
    again.load_state_dict(model.state_dict())
    again.eval()
    assert again.config_dict() == model.config_dict()
    assert again.sample_rate == model.sample_rate == 16000
    x, lengths = random_inputs(model)
    with torch.no_grad():
        assert torch.equal(again(x, lengths)[0], model(x, lengths)[0])


def test_featurizer_key_tracks_extractor_weights_only():
    model = tiny_wav2vec2()
    key = model.featurizer_key()
    assert key == tiny_wav2vec2().featurizer_key()
    with torch.no_grad():
        model.encoder.transformer.layers[0].feed_forward.output_dense.weight.add_(1.0)
    assert model.featurizer_key() == key  # the transformer is not part of the featurizer
    with torch.no_grad():
        next(model.feature_extractor.parameters()).add_(1e-4)
    assert model.featurizer_key() != key


def test_unknown_bundle_lists_the_asr_bundles():
    names = asr_bundle_names()
    assert "WAV2VEC2_ASR_BASE_960H" in names and "HUBERT_ASR_LARGE" in names
    assert "WAV2VEC2_BASE" not in names  # no CTC head
    with pytest.raises(UserError, match=r"model.checkpoint: got 'WAV2VEC2_BASE'; available .*WAV2VEC2_ASR_BASE_960H"):
        Wav2Vec2CTC.from_bundle("WAV2VEC2_BASE")


def test_from_bundle_builds_the_bundle_architecture(monkeypatch):
    # The real weights download on first use; here the bundle's own get_model runs on random
    # weights of the right shapes, so everything but the download is the real path.
    from torchaudio.pipelines import WAV2VEC2_ASR_BASE_10M as bundle

    monkeypatch.setattr(type(bundle), "_get_state_dict",
                        lambda self, dl_kwargs: wav2vec2_model(**self._params).state_dict())
    model = Wav2Vec2CTC.from_bundle("WAV2VEC2_ASR_BASE_10M")
    assert not model.training
    assert model.sample_rate == 16000 and model.input_dim == 512
    assert len(model.adaptable_blocks()) == 12 and model.adaptable_blocks()[0].width == 768
    assert tuple(model.labels) == bundle.get_labels() and model.tokenizer.vocab_size == 28
    assert model.config_dict()["bundle"] == "WAV2VEC2_ASR_BASE_10M"
    assert model.featurizer_key()["bundle"] == "WAV2VEC2_ASR_BASE_10M"
