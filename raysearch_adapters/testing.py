"""Tiny models and data builders for tests and ``--smoke-test`` paths (one place for fakes)."""

from __future__ import annotations

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


def random_inputs(model, batch: int = 2, frames: int = 24, seed: int = 0):
    """Random cached inputs ``(inputs [B, T, F], lengths [B])`` for ``model``; the last item is shorter (padding)."""
    from raysearch_adapters.models.conformer import ConformerCTC

    dim = model.frontend_cfg.n_mels if isinstance(model, ConformerCTC) else model.input_dim
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    lengths[-1] = max(1, frames - frames // 3)
    return torch.randn(batch, frames, dim, generator=g), lengths


def tiny_search_overrides(corpus, checkpoint, cache, results_dir, name: str, *extra: str) -> list[str]:
    """Config overrides for a search of a few tiny trials (seconds each) on the small demo corpus."""
    return [f"search.name={name}", f"results.dir={results_dir}", f"data.demo_dir={corpus}", f"data.cache_dir={cache}",
            f"model.checkpoint={checkpoint}", "search.sampler=random", "search.num_trials=4",
            "search.space.dim.choices=[2,4]", "search.space.blocks.choices=[all,top:1]",
            "search.space.position.choices=[post,ffn]", "train.steps=4", "train.eval_every=2",
            "train.max_batch_seconds=12", "data.max_batch_seconds=60", "resources.max_concurrent_trials=2", *extra]
