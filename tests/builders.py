"""Tiny models and data builders for tests and ``--smoke-test`` paths (one place for fakes)."""

from __future__ import annotations

import json

import torch

from raysearch_adapters.config import ConformerConfig, FrontendConfig
from raysearch_adapters.models.tokenizer import CharTokenizer

LETTERS = list("abcdefghijklmnopqrstuvwxyz'") + [" "]


def char_tokenizer() -> CharTokenizer:
    """Letters, apostrophe and space (space is its own symbol)."""
    return CharTokenizer(LETTERS, space=" ")


def tiny_conformer(seed: int = 0, num_layers: int = 3, d_model: int = 16, n_mels: int = 16):
    """A randomly initialised Conformer-CTC small enough for unit tests (eval mode)."""
    from raysearch_adapters.models.conformer import ConformerCTC

    torch.manual_seed(seed)
    cfg = ConformerConfig(d_model=d_model, num_layers=num_layers, num_heads=2, ffn_dim=2 * d_model,
                          conv_kernel=3, subsampling_channels=4, dropout=0.1, vocab_size=len(LETTERS))
    return ConformerCTC(cfg, FrontendConfig(n_mels=n_mels), char_tokenizer()).eval()


# torchaudio's English ASR labels: the CTC blank '-', the word boundary '|', letters, apostrophe.
WAV2VEC2_LABELS = ["-", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def tiny_wav2vec2(seed: int = 0, num_layers: int = 3, embed_dim: int = 16, extractor_mode: str = "group_norm",
                  normalize_waveform: bool = False):
    """A randomly initialised torchaudio wav2vec2 CTC model (10 ms frames at 16 kHz, eval mode)."""
    from torchaudio.models import wav2vec2_model

    from raysearch_adapters.models.wav2vec2 import Wav2Vec2CTC

    torch.manual_seed(seed)
    # Dropouts and LayerDrop are non-zero so tests can tell whether the base ever runs in train mode.
    params = dict(extractor_mode=extractor_mode, extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2)],
                  extractor_conv_bias=False, encoder_embed_dim=embed_dim, encoder_projection_dropout=0.1,
                  encoder_pos_conv_kernel=4, encoder_pos_conv_groups=2, encoder_num_layers=num_layers,
                  encoder_num_heads=2, encoder_attention_dropout=0.1, encoder_ff_interm_features=2 * embed_dim,
                  encoder_ff_interm_dropout=0.1, encoder_dropout=0.1, encoder_layer_norm_first=False,
                  encoder_layer_drop=0.1, aux_num_out=len(WAV2VEC2_LABELS))
    return Wav2Vec2CTC(wav2vec2_model(**params), params, WAV2VEC2_LABELS, bundle="",
                       normalize_waveform=normalize_waveform).eval()


def with_random_adapters(model, cfg, scale: float = 0.3, seed: int = 0):
    """Adapters of ``cfg`` injected into ``model`` with random non-zero weights (a fresh adapter adds exactly 0, which
    hides whether it is applied at all, and in which precision); the handle."""
    from raysearch_adapters.adapters.inject import inject_adapters

    handle = inject_adapters(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return handle


def random_inputs(model, batch: int = 2, frames: int = 24, seed: int = 0):
    """Random cached inputs ``(inputs [B, T, F], lengths [B])`` for ``model``; the last item is shorter (padding)."""
    from raysearch_adapters.models.conformer import ConformerCTC

    dim = model.frontend_cfg.n_mels if isinstance(model, ConformerCTC) else model.input_dim
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    lengths[-1] = max(1, frames - frames // 3)
    return torch.randn(batch, frames, dim, generator=g), lengths


def padded_waves(seed: int = 0, samples: int = 4000, short: int = 2600):
    """Two random waveforms [2, samples] and their lengths; the second ends after ``short`` samples (zeros after)."""
    g = torch.Generator().manual_seed(seed)
    waves = torch.randn(2, samples, generator=g)
    waves[1, short:] = 0
    return waves, torch.tensor([samples, short])


def demo_corpus_overrides(corpus) -> list[str]:
    """The data section of a demo corpus built in ``corpus`` (what conf/demo.yaml says of the default one)."""
    return [f"data.demo_dir={corpus}", *(f"data.{d}_{s}={corpus}/{d}/{s}.json" for d in ("new", "original")
                                         for s in ("train", "dev", "test"))]


def tiny_search_overrides(corpus, checkpoint, cache, results_dir, name: str, *extra: str) -> list[str]:
    """Config overrides for a search of a few tiny trials (seconds each) on the small demo corpus."""
    return ["search.start_points=[]", f"search.name={name}", f"results.dir={results_dir}", *demo_corpus_overrides(corpus),
            f"data.cache_dir={cache}",
            f"model.checkpoint={checkpoint}", "search.sampler=random", "search.budget_steps=0", "search.num_trials=4",
            "search.space.dim.choices=[2,4]", "search.space.blocks.choices=[all,top:1]",
            "search.space.position.choices=[post,ffn]", "search.space.replay=[0.0,0.5]",
            "search.space.distill_weight=[0.0,2.0]", "train.distill_seconds=3", "data.pool_hours=0",
            "train.steps=4", "train.eval_every=2", "train.lr_schedule=cosine", "train.warmup_steps=0",
            "train.max_batch_seconds=12", "data.max_batch_seconds=60",
            "resources.max_concurrent_trials=2", *extra]


def demo_model_search_overrides(corpus, cache, results_dir, name: str, *extra: str) -> list[str]:
    """A 2-trial search of the demo base model on the small demo corpus (seconds per trial) whose winner
    changes transcripts both ways: it fixes new-domain utterances and breaks original-domain ones. The
    adapters sit in the top two blocks, so the winner is measured on the frozen-prefix cache."""
    return tiny_search_overrides(corpus, "demo", cache, results_dir, name, "search.kappa=1000", "search.num_trials=2",
                                 "search.space.dim.choices=[16,32]", "search.space.blocks.choices=[top:2]",
                                 "search.space.lr={value: 0.003}", "train.steps=30", "train.eval_every=10",
                                 "train.warmup_steps=3",
                                 "search.asha.enabled=false", *extra)


def types_search_overrides(corpus, checkpoint, cache, results_dir, name: str, *extra: str) -> list[str]:
    """:func:`tiny_search_overrides` with the adapter type searched: the first three trials are one of each type
    (start points), the fourth is sampled."""
    return tiny_search_overrides(corpus, checkpoint, cache, results_dir, name,
                                 "search.space.type=[bottleneck,lora,parallel]", "search.space.rank=[2,4]",
                                 "search.space.alpha={value: 8.0}", 'search.space.targets=["q,v",all]',
                                 "search.start_points=[{type: lora, rank: 2, targets: all}, {type: parallel, dim: 4}, "
                                 "{type: bottleneck, dim: 2}]", *extra)


# A character vocabulary as Hugging Face CTC fine-tunes write it: lower-case letters, the word
# delimiter first, the pad token (the CTC blank) last, so the blank is not at index 0.
HF_CTC_VOCAB = ["|"] + list("abcdefghijklmnopqrstuvwxyz'") + ["[UNK]", "[PAD]"]


def save_tiny_hf_ctc(folder, model_type: str = "wav2vec2", seed: int = 0, num_layers: int = 2, hidden: int = 16,
                     stable: bool = False, feat_extract_norm: str = "group", do_normalize: bool = True,
                     vocab=HF_CTC_VOCAB):
    """A randomly initialised transformers ``*ForCTC`` model with its tokenizer (vocab.json) and feature
    extractor, written by ``save_pretrained`` into ``folder`` (20 ms frames at 16 kHz); returns the folder."""
    from pathlib import Path

    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = {c: i for i, c in enumerate(vocab)}
    (folder / "vocab.json").write_text(json.dumps(ids))
    # Dropouts and LayerDrop are non-zero so tests can tell whether the base ever runs in train mode.
    kw = dict(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=2 * hidden,
              conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), conv_bias=False, num_conv_pos_embeddings=4,
              num_conv_pos_embedding_groups=2, vocab_size=len(vocab), pad_token_id=ids["[PAD]"],
              feat_extract_norm=feat_extract_norm, layerdrop=0.1, hidden_dropout=0.1, attention_dropout=0.1,
              activation_dropout=0.1, feat_proj_dropout=0.1, do_stable_layer_norm=stable)
    if model_type == "data2vec-audio":
        kw.update(conv_pos_kernel_size=3, num_conv_pos_embeddings=2)
        del kw["do_stable_layer_norm"]
    if model_type == "wavlm":
        kw.update(num_buckets=8, max_bucket_distance=20)
    config_class = {"wav2vec2": transformers.Wav2Vec2Config, "hubert": transformers.HubertConfig,
                    "wavlm": transformers.WavLMConfig, "data2vec-audio": transformers.Data2VecAudioConfig,
                    "bert": transformers.BertConfig}[model_type]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCTC.from_config(config_class(**kw)) if model_type != "bert" else \
        transformers.BertModel(config_class(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=2 * hidden))
    model.save_pretrained(folder)
    transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                      word_delimiter_token="|").save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize,
                                          return_attention_mask=feat_extract_norm == "layer").save_pretrained(folder)
    return folder


def whisper_tokenizer(texts=("five three nine", "the quick brown fox jumps over the lazy dog")):
    """A tiny byte-level BPE Whisper tokenizer trained on ``texts``, with Whisper's special tokens."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([" " + t for t in texts], trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    vocab = bpe.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = (["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                 "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"])
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def save_tiny_whisper(folder, seed: int = 0, multilingual: bool = False, layers: int = 2, d_model: int = 16,
                      max_target_positions: int = 64):
    """A randomly initialised ``WhisperForConditionalGeneration`` (30 s windows, 80 mels) with a tiny tokenizer
    and its feature extractor, written by ``save_pretrained`` into ``folder``; returns the folder."""
    from pathlib import Path

    import transformers

    folder = Path(folder)
    tok = whisper_tokenizer()
    ids = tok.convert_tokens_to_ids
    cfg = transformers.WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=max_target_positions,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, encoder_layerdrop=0.1, decoder_layerdrop=0.1,
        pad_token_id=ids("<|endoftext|>"), bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|endoftext|>"),
        decoder_start_token_id=ids("<|startoftranscript|>"), suppress_tokens=[ids("<|startoflm|>")],
        begin_suppress_tokens=[ids("Ġ") if "Ġ" in tok.get_vocab() else ids("<|endoftext|>"), ids("<|endoftext|>")])
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg)
    gen = model.generation_config
    gen.is_multilingual = multilingual
    gen.no_timestamps_token_id = ids("<|notimestamps|>")
    if multilingual:
        gen.lang_to_id = {"<|en|>": ids("<|en|>"), "<|de|>": ids("<|de|>")}
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    gen._from_model_config = False  # else from_pretrained rebuilds it from the model config, without the above
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def tiny_hf_ctc(seed: int = 0, num_layers: int = 3, model_type: str = "wav2vec2", **kwargs):
    """:func:`save_tiny_hf_ctc` loaded as the project's ``HFCTC`` backbone (eval mode; the folder is removed)."""
    import tempfile

    from raysearch_adapters.models.hf_ctc import HFCTC

    with tempfile.TemporaryDirectory() as d:
        return HFCTC.from_pretrained(str(save_tiny_hf_ctc(d, model_type, seed, num_layers, **kwargs)))


def tiny_whisper(seed: int = 0, layers: int = 2, multilingual: bool = False, language: str = "en",
                 max_new_tokens: int = 12):
    """:func:`save_tiny_whisper` loaded as the project's ``Whisper`` backbone (eval mode; the folder is removed)."""
    import tempfile

    from raysearch_adapters.models.whisper import Whisper

    with tempfile.TemporaryDirectory() as d:
        return Whisper.from_pretrained(str(save_tiny_whisper(d, seed, multilingual, layers)), language, max_new_tokens)
