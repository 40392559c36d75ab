"""The Whisper backbone against transformers' own Whisper (tiny, random weights, a tiny tokenizer, offline)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from torch.nn.utils.rnn import pad_sequence

from builders import save_tiny_hf_ctc, save_tiny_whisper
from raysearch_adapters.config import DataConfig, ModelConfig, WhisperOptions
from raysearch_adapters.data.cache import load_feature_set, load_features
from raysearch_adapters.data.manifest import ManifestError
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.models.whisper import TEACHER_TOP_K, Whisper

TEXTS = ["five three nine", "the lazy dog"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    return {"en": save_tiny_whisper(root / "en"), "multi": save_tiny_whisper(root / "multi", seed=1, multilingual=True)}


def _waves(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([48000, 30000])
    waves = 0.1 * torch.randn(2, 48000, generator=g)
    waves[1, 30000:] = 0
    return waves, lengths


def _features(model):
    return model.featurizer()(*_waves())


@torch.no_grad()
def test_cached_frames_rebuild_the_extractors_30s_window_exactly(folders):
    model = Whisper.from_pretrained(str(folders["en"]))
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folders["en"])
    waves, lengths = _waves()
    feats, feat_lengths = model.featurizer()(waves, lengths)
    assert feats.shape[-1] == 80 and feat_lengths.tolist() == [303, 190]  # ~100 frames per second + one padding frame
    for i in range(2):
        full = extractor(waves[i, : lengths[i]].numpy(), sampling_rate=16000, return_tensors="pt").input_features
        assert torch.equal(model._window(feats[i:i + 1], feat_lengths[i:i + 1]), full)
        assert torch.equal(model._window(feats, feat_lengths)[i], full[0])  # in a padded batch too


@pytest.mark.parametrize("samples", [1000, 16000, 64123, 479000])
def test_the_window_is_exact_for_any_length_up_to_30s(folders, samples):
    model = Whisper.from_pretrained(str(folders["en"]))
    wave = 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(samples))
    feats, lengths = model.featurizer()(wave, torch.tensor([samples]))
    assert int(lengths[0]) <= samples // 160 + 4  # the utterance's frames and one padding frame, not the window
    full = model.extractor(wave[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    assert torch.equal(model._window(feats, lengths), full)


@pytest.mark.parametrize("which", ["en", "multi"])
@torch.no_grad()
def test_encoder_and_greedy_decoding_match_transformers(folders, which):
    language = "de" if which == "multi" else "en"
    model = Whisper.from_pretrained(str(folders[which]), language=language, max_new_tokens=20)
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(folders[which]).eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folders[which])
    feats, lengths = _features(model)
    hidden, _ = model.encode_prefix(feats, lengths, 0)
    encoded = model._encoded(hidden, 0)
    ours = model.greedy(encoded)
    waves, wave_lengths = _waves()
    for i in range(2):
        full = extractor(waves[i, : wave_lengths[i]].numpy(), sampling_rate=16000, return_tensors="pt").input_features
        assert torch.equal(ref.model.encoder(full).last_hidden_state[0], encoded[i])
        kwargs = {"language": language, "task": "transcribe"} if which == "multi" else {}
        generated = ref.generate(full, max_new_tokens=20, **kwargs)[0].tolist()
        assert generated[: len(ours[i])] == ours[i]


def test_prompts_english_only_and_multilingual(folders):
    en = Whisper.from_pretrained(str(folders["en"]))
    tok = transformers.AutoTokenizer.from_pretrained(folders["en"])
    assert tok.convert_ids_to_tokens(en.prompt) == ["<|startoftranscript|>", "<|notimestamps|>"]
    multi = Whisper.from_pretrained(str(folders["multi"]), language="de")
    assert tok.convert_ids_to_tokens(multi.prompt) == ["<|startoftranscript|>", "<|de|>", "<|transcribe|>",
                                                       "<|notimestamps|>"]
    with pytest.raises(UserError, match=r"model.whisper.language: the tokenizer has no <\|xx\|> token"):
        Whisper.from_pretrained(str(folders["multi"]), language="xx")


@torch.no_grad()
def test_the_loss_is_transformers_teacher_forced_cross_entropy_after_the_prompt(folders):
    model = Whisper.from_pretrained(str(folders["en"]))
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(folders["en"]).eval()
    feats, lengths = _features(model)
    losses = model.losses_from(*model.encode_prefix(feats, lengths, 0), 0, TEXTS)
    tok = transformers.AutoTokenizer.from_pretrained(folders["en"])
    for i, text in enumerate(TEXTS):
        labels = tok.encode(" " + text, add_special_tokens=False) + [model.eot]
        decoder_input = torch.tensor([model.prompt + labels[:-1]])
        full = model._window(feats[i:i + 1], lengths[i:i + 1])
        logits = ref(input_features=full, decoder_input_ids=decoder_input).logits[0, len(model.prompt) - 1:]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        torch.testing.assert_close(losses[i], expected, atol=1e-5, rtol=1e-5)


def test_blocks_are_encoder_then_decoder_and_decoder_placements_share_the_encoder_cache(folders):
    model = Whisper.from_pretrained(str(folders["en"]))
    blocks = model.adaptable_blocks()
    assert [(b.index, b.stack, b.name) for b in blocks] == [
        (0, "encoder", "hf.model.encoder.layers.0"), (1, "encoder", "hf.model.encoder.layers.1"),
        (2, "decoder", "hf.model.decoder.layers.0"), (3, "decoder", "hf.model.decoder.layers.1")]
    assert blocks[0].positions == {"post": "hf.model.encoder.layers.0", "mha": "hf.model.encoder.layers.0.self_attn",
                                   "ffn": "hf.model.encoder.layers.0.fc2"}
    assert blocks[3].positions == {"post": "hf.model.decoder.layers.1",
                                   "self_attn": "hf.model.decoder.layers.1.self_attn",
                                   "cross_attn": "hf.model.decoder.layers.1.encoder_attn",
                                   "ffn": "hf.model.decoder.layers.1.fc2"}
    assert [model.prefix_block(k) for k in range(5)] == [0, 1, 2, 2, 2]


@torch.no_grad()
def test_every_output_from_any_block_equals_the_whole_model(folders):
    model = Whisper.from_pretrained(str(folders["en"]))
    feats, lengths = _features(model)
    whole = model.encode_prefix(feats, lengths, 0)
    expected = (model.losses_from(*whole, 0, TEXTS), model.transcribe_from(*whole, 0), model.teacher_from(*whole, 0))
    for k in (1, 2, 3):
        hidden = model.encode_prefix(feats, lengths, k)
        assert hidden[0].shape == (2, 1500, 16) and hidden[1].tolist() == [1500, 1500]
        assert torch.equal(model.losses_from(*hidden, k, TEXTS), expected[0])
        assert model.transcribe_from(*hidden, k) == expected[1]
        assert all(torch.equal(a, b) for a, b in zip(model.teacher_from(*hidden, k), expected[2]))


@torch.no_grad()
def test_teacher_holds_the_greedy_transcript_and_its_top_k_and_distillation_is_zero_on_the_base(folders):
    model = Whisper.from_pretrained(str(folders["en"]), max_new_tokens=10)
    feats, lengths = _features(model)
    hidden = model.encode_prefix(feats, lengths, 0)
    teacher = model.teacher_from(*hidden, 0)
    greedy = model.greedy(model._encoded(hidden[0], 0))
    for rows, tokens in zip(teacher, greedy):
        assert rows.shape == (len(tokens), 1 + 2 * TEACHER_TOP_K)
        assert rows[:, 0].long().tolist() == tokens
        logits = rows[:, 1 + TEACHER_TOP_K:]
        assert bool((logits[:, :-1] >= logits[:, 1:]).all())  # the top k, best first
    padded, teacher_lengths = pad_sequence(teacher, batch_first=True), torch.tensor([len(t) for t in teacher])
    kd = model.distill_from(*hidden, 0, padded, teacher_lengths)
    assert kd.shape == (2,) and float(kd.abs().max()) < 1e-6  # a padded batch: float rounding only
    fc2 = model.hf.model.decoder.layers[1].fc2.weight
    fc2.add_(torch.randn(fc2.shape, generator=torch.Generator().manual_seed(0)))
    assert float(model.distill_from(*hidden, 0, padded, teacher_lengths).min()) > 1e-4


@pytest.mark.parametrize("ref, hyp", [
    ("five three nine", "539"), ("five three nine", "5, 3, 9."), ("five three nine", "5-3-9"),
    ("zero zero seven", "007"), ("in one thousand nine hundred ninety nine we", "In 1999, we"),
    ("r u b o u t", "R-U-B-O-U-T."), ("erase two one", "Erase 21."), ("well now there's help", "Well, now there's help."),
    ("the twenty first", "The 21st."), ("five dollars off", "$5 off!"), ("hello", "[MUSIC] Hello <|0.00|>"),
])
def test_one_normaliser_makes_whispers_spellings_and_the_manifests_agree(folders, ref, hyp):
    model = Whisper.from_pretrained(str(folders["en"]))
    assert model.wer_text(ref) == model.wer_text(hyp)
    assert model.wer_text("five three nine") == "5 3 9"  # one word per digit, as the manifest counts them


def test_an_utterance_longer_than_the_window_names_the_utterance(folders, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "long.wav", np.zeros(16000 * 31, dtype=np.float32), 16000)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": str(tmp_path / "long.wav"), "duration": 31.0, "text": "a"}))
    model = Whisper.from_pretrained(str(folders["en"]))
    # as a search reads it: data.max_duration is null, so the model's bound (its window) makes it a bad line
    assert model.max_duration == 30.0
    with pytest.raises(ManifestError, match=rf"{manifest}:1: duration 31.000s is over data.max_duration \(30s\)"):
        load_feature_set(DataConfig(cache_dir=str(tmp_path / "cache")), model, str(manifest), progress=False)
    with pytest.raises(UserError, match=r"utterance .*long.wav.*31.0 s of audio; Whisper's window holds 30 s"):
        load_features(manifest, model.featurizer(), model.featurizer_key(), tmp_path / "cache", 16000, progress=False)


def test_loads_through_the_registry_and_refuses_other_models(folders, tmp_path):
    model = load_base_model(ModelConfig(name="whisper", checkpoint=str(folders["multi"]),
                                        whisper=WhisperOptions(language="de", max_new_tokens=7)))
    assert isinstance(model, Whisper) and model.multilingual and model.max_new_tokens == 7 and not model.training
    with pytest.raises(UserError, match=r"model.checkpoint: .* is a 'wav2vec2' model; model.name=whisper takes Whisper"):
        Whisper.from_pretrained(str(save_tiny_hf_ctc(tmp_path / "ctc")))
    from raysearch_adapters.models.hf_ctc import HFCTC

    with pytest.raises(UserError, match=r"is a 'whisper' model; model.name=hf_ctc takes .*model.name=whisper takes "
                                        r"Whisper"):
        HFCTC.from_pretrained(str(folders["en"]))


@pytest.mark.parametrize("n", [1, 2, 3])
@torch.no_grad()
def test_no_repeat_ngram_size_decodes_as_transformers_generate_does(folders, n):
    """The guard against a looping decoder: no n-gram twice in prompt + transcript, token for token what
    transformers' generate(no_repeat_ngram_size=n) decodes; the tiny random model repeats itself without it."""
    plain = Whisper.from_pretrained(str(folders["en"]), max_new_tokens=20)
    guarded = Whisper.from_pretrained(str(folders["en"]), max_new_tokens=20, no_repeat_ngram_size=n)
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(folders["en"]).eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folders["en"])
    feats, lengths = _features(guarded)
    encoded = guarded._encoded(guarded.encode_prefix(feats, lengths, 0)[0], 0)
    ours, unguarded = guarded.greedy(encoded), plain.greedy(encoded)
    assert ours != unguarded  # the guard changed something
    waves, wave_lengths = _waves()
    for i in range(2):
        full = extractor(waves[i, : wave_lengths[i]].numpy(), sampling_rate=16000, return_tensors="pt").input_features
        generated = ref.generate(full, max_new_tokens=20, no_repeat_ngram_size=n)[0].tolist()
        assert generated[: len(ours[i])] == ours[i]
        seq = guarded.prompt + [t for t in ours[i] if t != guarded.eot]
        grams = [tuple(seq[j:j + n]) for j in range(len(seq) - n + 1)]
        assert len(grams) == len(set(grams))


def test_the_decoding_guard_is_a_model_option_checked_by_key():
    from raysearch_adapters.config import ConfigError, load_config

    cfg = load_config([], ["model.name=whisper", "model.checkpoint=x", "model.whisper.no_repeat_ngram_size=3"])
    assert cfg.model.whisper.no_repeat_ngram_size == 3
    assert Whisper.evaluate_args(cfg.model).endswith("model.whisper.no_repeat_ngram_size=3")
    with pytest.raises(ConfigError, match=r"^model\.whisper\.no_repeat_ngram_size: got -1; must be >= 0$"):
        load_config([], ["model.whisper.no_repeat_ngram_size=-1"])


def test_the_guard_keys_the_caches_only_when_on(folders):
    from raysearch_adapters.adapters.state import base_fingerprint

    plain = Whisper.from_pretrained(str(folders["en"]))
    assert "no_repeat_ngram_size" not in plain.config_dict()  # adapters saved without the option still load
    guarded = Whisper.from_pretrained(str(folders["en"]), no_repeat_ngram_size=3)
    assert base_fingerprint(guarded) != base_fingerprint(plain)  # its transcripts, so its teacher cache, differ


def _unfolded(model, monkeypatch):
    """Teacher forcing through transformers' own cross-attention (the order of operations before folding)."""
    import contextlib

    monkeypatch.setattr(model, "_folded", contextlib.nullcontext)


@pytest.mark.parametrize("adapter", ["bottleneck", "lora_cross_q_out", "lora_cross_k_v"])
def test_folded_cross_attention_gives_transformers_losses_and_gradients_within_rounding(folders, monkeypatch, adapter):
    from builders import with_random_adapters
    from raysearch_adapters.config import AdapterConfig
    from raysearch_adapters.models import whisper as whisper_module

    cfg = {"bottleneck": AdapterConfig(dim=4, blocks="decoder:all", positions=["post", "cross_attn", "ffn"]),
           "lora_cross_q_out": AdapterConfig(type="lora", rank=2, alpha=4.0, blocks="decoder:all",
                                             targets="cross_q,cross_out"),
           "lora_cross_k_v": AdapterConfig(type="lora", rank=2, alpha=4.0, blocks="decoder:all",
                                           targets="cross_k,cross_v")}[adapter]
    model = Whisper.from_pretrained(str(folders["en"]))
    handle = with_random_adapters(model, cfg)
    feats, lengths = _features(model)
    hidden = model.encode_prefix(feats, lengths, 0)

    calls = []
    real = whisper_module.folded_cross_attention
    monkeypatch.setattr(whisper_module, "folded_cross_attention", lambda *a, **k: calls.append(1) or real(*a, **k))

    def loss_and_grads():
        for p in handle.parameters():
            p.grad = None
        loss = model.losses_from(*hidden, 0, TEXTS).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in handle.parameters()]

    folded, folded_grads = loss_and_grads()
    # both decoder layers folded, unless LoRA changes the key and value projections (then transformers' attention)
    assert len(calls) == (0 if adapter == "lora_cross_k_v" else 2)
    monkeypatch.undo()
    with monkeypatch.context() as m:
        _unfolded(model, m)
        usual, usual_grads = loss_and_grads()
    if adapter == "lora_cross_k_v":
        assert torch.equal(folded, usual)
    else:
        torch.testing.assert_close(folded, usual, rtol=1e-5, atol=1e-6)
    for a, b in zip(folded_grads, usual_grads):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@torch.no_grad()
def test_a_batch_decodes_each_utterance_as_it_would_alone_while_rows_leave_as_they_end(folders):
    model = Whisper.from_pretrained(str(folders["en"]), max_new_tokens=12)
    g = torch.Generator().manual_seed(0)
    # One random vector per utterance over all 1,500 frames (random frames would average out in the attention, and
    # every row would decode alike).
    d = model.hf.config.d_model
    encoded = (4 * torch.randn(9, 1, d, generator=g)).expand(-1, 1500, -1).contiguous()
    # The tiny random model never ends a transcript: lift <|endoftext|>'s logit (an output bias) to where its margin
    # to the best token is at its 10th percentile, so that rows end at different steps.
    margins = []
    proj = model.hf.proj_out
    hook = proj.register_forward_hook(lambda m, i, out: margins.append(out.max(-1).values - out[..., model.eot]))
    model.greedy(encoded)
    hook.remove()
    lifted = torch.nn.Linear(proj.in_features, proj.out_features, bias=True)
    lifted.weight = proj.weight
    lifted.bias.zero_()
    lifted.bias[model.eot] = torch.quantile(torch.cat([m.flatten() for m in margins]), 0.1)
    model.hf.proj_out = lifted
    batch = model.greedy(encoded)
    ends = sorted(len(s) for s in batch)
    assert len(set(ends)) >= 3, ends  # rows ended at different steps, so rows left the batch
    assert any(s[-1] == model.eot for s in batch) and not all(s[-1] == model.eot for s in batch), batch
    assert batch == [model.greedy(encoded[i:i + 1])[0] for i in range(9)]
