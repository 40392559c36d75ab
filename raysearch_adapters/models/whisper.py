"""Whisper (``WhisperForConditionalGeneration``, English-only and multilingual) as a backbone.

The transformers model is kept whole and unmodified (``self.hf``); this file splits its forward
pass where the project needs it and owns what an encoder-decoder does differently from CTC:

* Blocks: the encoder layers (stack ``encoder``: positions ``post``, ``mha``, ``ffn``), then the
  decoder layers (stack ``decoder``: ``post``, ``self_attn``, ``cross_attn``, ``ffn``), indexed
  globally encoder first. ``ffn`` is the feed-forward branch's output projection (``fc2``).
  LoRA targets: ``q``, ``k``, ``v``, ``out`` (self-attention), ``cross_q`` ... ``cross_out`` (the
  decoder's attention over the encoder), ``ffn_in`` (fc1), ``ffn_out`` (fc2).
* Featurizer: the model's own log-mel extractor (``WhisperFeatureExtractor``), per utterance.
  The encoder only takes 30 s windows; the frames after an utterance's end are all equal (the
  log-mel of zero padding, clamped 8 decades under the utterance's maximum), so the cache keeps
  the utterance's frames plus the first padding frame, and :meth:`encode_prefix` fills the window
  with that frame again: exactly the extractor's 30 s input, at a tenth of the storage for a 3 s
  clip.
* Frozen prefix: encoder blocks below k. Decoder blocks see the tokens, so for a placement in
  the decoder the cache holds the encoder's output ([1500, d_model] per utterance) and every
  decoder-only placement shares it (:meth:`prefix_block`).
* Loss: cross-entropy with teacher forcing after the model's own prompt (<|startoftranscript|>,
  language and task tokens for a multilingual model, <|notimestamps|>); labels are the
  transcript's tokens and <|endoftext|>; the mean over an utterance's labels.
* Teacher forcing (training, distillation, the teacher cache) attends to the encoder's output with the
  cross-attention's key and value projections folded into the query and the output
  (:func:`folded_cross_attention`): the same function in another order of operations, which spends
  a few query tokens' products where the usual order projects all 1,500 encoder frames per layer
  (``bench/whisper_step.py``). Decoding keeps transformers' own attention and key-value cache.
* Decoding: greedy, batched, with the checkpoint's suppressed tokens (as transformers'
  ``generate``), until <|endoftext|> or ``model.whisper.max_new_tokens``.
* Distillation (no labels needed): the teacher cache holds the base model's greedy transcript and,
  per position, its top-k tokens and their logits (the whole 51k vocabulary per token would be
  ~200 KB). The adapted decoder is teacher-forced on that transcript and compared with
  KL(p_base || p_adapted) over those k tokens, both renormalised over them (softmax over the k
  logits): the full KL when the base puts (almost) all its mass in its top k, an approximation
  otherwise, and exactly 0 where the two models agree.
* WER: :meth:`wer_text` maps references and hypotheses onto one form (docs/backbones.md, "What WER compares for Whisper").
"""

from __future__ import annotations

import contextlib
import re
import types
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.errors import UserError
from raysearch_adapters.models import hf
from raysearch_adapters.models.base import Backbone, BlockInfo, PerUtterance
from raysearch_adapters.models.ctc import frame_mask
from raysearch_adapters.models.tokenizer import Tokenizer

TEACHER_TOP_K = 16  # tokens per position the distillation teacher keeps (with their logits)
_DIGITS = "zero one two three four five six seven eight nine".split()
_LEADING_ZERO = re.compile(r"\b0\d+\b")  # "007": normalize_text would read it as "seven"
_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]|\([^)]*\)")  # [MUSIC], <|0.00|>, (laughs)
_BETWEEN_DIGITS = re.compile(r"(?<=\d)(?=\d)")


def folded_cross_attention(attn: nn.Module, hidden_states: torch.Tensor, key_value_states: torch.Tensor,
                           **unused) -> Tuple[torch.Tensor, None]:
    """A decoder cross-attention (transformers' ``WhisperAttention`` with ``key_value_states``, no cache, no
    mask) computed from the encoder's output E [B, T, d] without projecting it.

    Per head h, with q_h = scaling * q_proj(x)_h and the head's rows K_h of ``k_proj.weight`` (V_h, b_h of
    ``v_proj``): scores = q_h (E K_h^T)^T = (q_h K_h) E^T, and softmax(scores) (E V_h^T + b_h) =
    (softmax(scores) E) V_h^T + b_h (each row of weights sums to 1; a key bias would add the same to every
    score of a row, which softmax ignores). The usual order multiplies all T frames by the d x d key and value
    matrices; this one multiplies the L query tokens by them and the frames once per head: for a
    transcript of tens of tokens against Whisper's 1,500 frames, several times fewer products, in the
    forward pass and the backward one. Equal to transformers' attention up to float rounding."""
    b, length, d = hidden_states.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = (attn.q_proj(hidden_states) * attn.scaling).view(b, length, heads, head_dim)
    qk = torch.einsum("blhj,hji->bhli", q, attn.k_proj.weight.view(heads, head_dim, d))
    weights = torch.bmm(qk.reshape(b, heads * length, d), key_value_states.transpose(1, 2)).softmax(dim=-1)
    context = torch.bmm(weights.to(key_value_states.dtype), key_value_states).view(b, heads, length, d)
    out = torch.einsum("bhli,hji->blhj", context, attn.v_proj.weight.view(heads, head_dim, d))
    if attn.v_proj.bias is not None:
        out = out + attn.v_proj.bias.view(heads, head_dim)
    return attn.out_proj(out.reshape(b, length, d)), None


def _foldable(attn: nn.Module) -> bool:
    """Whether :func:`folded_cross_attention` computes this module: a decoder cross-attention whose key and value
    projections are plain linear layers (no LoRA on them) and that drops nothing."""
    return (type(attn).__name__ == "WhisperAttention" and attn.is_decoder and not attn.is_causal
            and type(attn.k_proj) is nn.Linear and type(attn.v_proj) is nn.Linear
            and not (attn.training and attn.dropout > 0))


class WhisperLogMel(PerUtterance):
    """Waveforms [B, S] + lengths -> log-mel frames [B, T, n_mels] + lengths, one utterance at a time.

    Frames are the checkpoint's ``WhisperFeatureExtractor`` output on the 30 s window, cut after
    the first frame that only saw the window's zero padding (every later frame equals it); an
    utterance of a few seconds never pays for the whole window."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        fe = self.extractor
        n = wave.shape[1]
        if n > fe.n_samples:  # a RuntimeError: the feature cache names the utterance
            raise RuntimeError(f"{n / fe.sampling_rate:.1f} s of audio; Whisper's window holds "
                               f"{fe.chunk_length} s (split longer utterances)")
        # The extractor on the utterance and two FFT lengths of zeros (not the whole window): the frames
        # that see the utterance and the padding frames after it come out as on the 30 s window (the
        # window's maximum, which sets the clamp, lies in the utterance; tests compare the two).
        padded = min(((n + 2 * fe.n_fft) // fe.hop_length + 1) * fe.hop_length, fe.n_samples)
        frames = fe(wave[0].float().cpu().numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt",
                    max_length=padded, device="cpu").input_features[0].T  # [frames, n_mels]
        differs = torch.nonzero(~(frames == frames[-1]).all(dim=1)).flatten()
        keep = min(int(differs[-1]) + 2, frames.shape[0]) if len(differs) else 1
        return frames[:keep].to(wave.device)


class WhisperTextTokenizer(Tokenizer):
    """The checkpoint's byte-level BPE: any text encodes (no unsupported characters)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)

    def encode(self, text: str) -> List[int]:
        # Whisper's transcripts start with a space (" The cat"): words then tokenize as they do mid-sentence.
        return list(self.hf.encode(" " + text, add_special_tokens=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True).strip()

    def unsupported_chars(self, text: str) -> set[str]:
        return set()

    def to_dict(self) -> dict:
        return {"kind": "whisper", "vocab_size": self.vocab_size}


def _spell_leading_zeros(text: str) -> str:
    return _LEADING_ZERO.sub(lambda m: " ".join(_DIGITS[int(d)] for d in m.group()), text)


def _linears(layer: str, attentions: dict) -> dict:
    """A Whisper layer's LoRA targets: q/k/v/out of each attention (``{name prefix: attribute}``: the decoder's
    cross-attention is cross_q, cross_k, ...) and the feed-forward's fc1 (ffn_in) and fc2 (ffn_out)."""
    out = {f"{prefix}{n}": f"{layer}.{att}.{n}_proj" for prefix, att in attentions.items() for n in ("q", "k", "v", "out")}
    out.update(ffn_in=f"{layer}.fc1", ffn_out=f"{layer}.fc2")
    return out


class Whisper(Backbone):
    """A transformers ``WhisperForConditionalGeneration`` with its tokenizer, log-mel extractor and prompt."""

    name = "whisper"
    peft_root = "hf"
    ctranslate2 = True
    fixed_input_shape = True  # the encoder always sees the padded 30 s window

    def __init__(self, model: nn.Module, tokenizer, extractor, language: str = "en", max_new_tokens: int = 128,
                 spelling: Optional[dict] = None, no_repeat_ngram_size: int = 0):
        super().__init__()
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

        self.hf = model
        cfg = model.config
        self.tokenizer = WhisperTextTokenizer(tokenizer)
        self.extractor = extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.max_duration = extractor.n_samples / extractor.sampling_rate  # the encoder's window: 30 s
        self.window_frames = 2 * cfg.max_source_positions  # the encoder's two convolutions halve the frames once
        if extractor.nb_max_frames != self.window_frames or extractor.feature_size != cfg.num_mel_bins:
            raise UserError(f"model.checkpoint: its feature extractor makes {extractor.nb_max_frames} frames of "
                            f"{extractor.feature_size} mels, but the encoder takes {self.window_frames} of "
                            f"{cfg.num_mel_bins}")
        gen = model.generation_config
        multilingual = getattr(gen, "is_multilingual", None)
        self.multilingual = bool(cfg.vocab_size >= 51865 if multilingual is None else multilingual)
        self.language = language
        self.max_new_tokens = int(max_new_tokens)
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)

        def token(t: str, key: str = "model.checkpoint") -> int:
            i = tokenizer.convert_tokens_to_ids(t)
            if i is None or i == tokenizer.unk_token_id and t != tokenizer.unk_token:
                raise UserError(f"{key}: the tokenizer has no {t} token; expected a Whisper tokenizer")
            return int(i)

        self.eot = token("<|endoftext|>")
        prompt = [token("<|startoftranscript|>")]
        if self.multilingual:
            prompt += [token(f"<|{language}|>", "model.whisper.language"), token("<|transcribe|>")]
        prompt.append(token("<|notimestamps|>"))
        self.prompt = prompt
        self.suppress = sorted(set(gen.suppress_tokens or []))
        self.begin_suppress = sorted(set(gen.begin_suppress_tokens or []))
        english = language == "en"
        self._normalizer = EnglishTextNormalizer(spelling or {}) if english else BasicTextNormalizer()

    # ---- construction
    @classmethod
    def from_model_config(cls, cfg) -> "Whisper":
        return cls.from_pretrained(cfg.checkpoint, cfg.whisper.language, cfg.whisper.max_new_tokens,
                                   cfg.whisper.no_repeat_ngram_size)

    @classmethod
    def weights_key(cls, cfg) -> dict:
        return {"files": hf.files_key(cfg.checkpoint)}

    @classmethod
    def from_pretrained(cls, checkpoint: str, language: str = "en", max_new_tokens: int = 128,
                        no_repeat_ngram_size: int = 0) -> "Whisper":
        """A folder written by ``save_pretrained`` (or converted, see ``tools/ct2_whisper_to_hf.py``) or a hub id."""
        from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

        src = hf.source(checkpoint, cls.name)
        cfg = hf.config(src)
        if cfg.model_type != "whisper":
            raise UserError(f"model.checkpoint: {checkpoint} is a {cfg.model_type!r} model; model.name=whisper takes "
                            "Whisper checkpoints (model.name=hf_ctc takes wav2vec2, HuBERT, WavLM, data2vec-audio)")
        architectures = list(getattr(cfg, "architectures", None) or [])
        if architectures and "WhisperForConditionalGeneration" not in architectures:
            raise UserError(f"model.checkpoint: {checkpoint} is a {', '.join(architectures)}; model.name=whisper "
                            "takes WhisperForConditionalGeneration (encoder and decoder)")
        tok = hf.load("tokenizer", src, AutoTokenizer.from_pretrained)
        try:
            fe = WhisperFeatureExtractor.from_pretrained(src, local_files_only=hf.is_local(checkpoint))
        except (OSError, ValueError):  # no preprocessor_config.json: the extractor the model was built for
            fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
        fe.dither = 0.0  # features are cached once: dithering would only freeze one draw of noise
        model = hf.pretrained(WhisperForConditionalGeneration, src, cfg)
        return cls(model, tok, fe, language, max_new_tokens, getattr(tok, "english_spelling_normalizer", None),
                   no_repeat_ngram_size).eval()

    @classmethod
    def evaluate_args(cls, cfg) -> str:
        return (f"model.name={cls.name} model.checkpoint={cfg.checkpoint} model.whisper.language={cfg.whisper.language} "
                f"model.whisper.max_new_tokens={cfg.whisper.max_new_tokens}" +
                (f" model.whisper.no_repeat_ngram_size={cfg.whisper.no_repeat_ngram_size}"
                 if cfg.whisper.no_repeat_ngram_size else ""))

    def config_dict(self) -> dict:
        hf_cfg = {k: v for k, v in self.hf.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        out = {"name": self.name, "hf_config": hf_cfg, "prompt": self.prompt, "language": self.language,
               "max_new_tokens": self.max_new_tokens, "suppress": self.suppress, "begin_suppress": self.begin_suppress}
        if self.no_repeat_ngram_size:  # decoding with the guard is another teacher (its caches are keyed by this)
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return out

    # ---- a merged export: the transformers folder itself
    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """``hf_model/``: ``save_pretrained`` of the merged model (its generation config included) with the
        checkpoint's tokenizer and log-mel extractor, an ordinary Hugging Face folder; ``model.whisper.language`` and
        ``model.whisper.max_new_tokens`` beside them."""
        folder = hf.save_export(self.hf, [self.tokenizer.hf, self.extractor], out_dir,
                                {"language": self.language, "max_new_tokens": self.max_new_tokens,
                                 "no_repeat_ngram_size": self.no_repeat_ngram_size}, meta)
        return folder, (f"transformers: WhisperForConditionalGeneration.from_pretrained('{folder}') and "
                        f"WhisperProcessor.from_pretrained('{folder}'); or raysearch-adapters evaluate "
                        f"model.name={self.name} model.checkpoint={folder} model.whisper.language={self.language} "
                        f"model.whisper.max_new_tokens={self.max_new_tokens} --manifest M")

    @classmethod
    def load_export(cls, path: Path) -> "Whisper":
        return cls.from_pretrained(str(path), **hf.export_settings(path))

    # ---- featurizer
    def featurizer(self) -> nn.Module:
        return WhisperLogMel(self.extractor).eval()

    def featurizer_key(self) -> dict:
        settings = {k: v for k, v in self.extractor.to_dict().items() if isinstance(v, (str, int, float, bool))}
        return {"featurizer": "whisper-log-mel", "frames": "until the first padding frame", **settings}

    # ---- blocks
    @property
    def num_encoder_blocks(self) -> int:
        return len(self.hf.model.encoder.layers)

    def adaptable_blocks(self) -> List[BlockInfo]:
        d = self.hf.config.d_model
        n = self.num_encoder_blocks
        out = []
        # A parallel branch is fed a module's hidden states [.., d_model]: the layer's and its attentions'
        # (``ffn`` is fc2, whose input is the feed-forward's inner [.., ffn_dim] activation: no parallel branch).
        for i in range(n):
            p = f"hf.model.encoder.layers.{i}"
            out.append(BlockInfo(i, p, d, {"post": p, "mha": f"{p}.self_attn", "ffn": f"{p}.fc2"}, stack="encoder",
                                 parallel={"post": "hidden_states", "mha": "hidden_states"},
                                 linears=_linears(p, {"": "self_attn"})))
        for j in range(len(self.hf.model.decoder.layers)):
            p = f"hf.model.decoder.layers.{j}"
            out.append(BlockInfo(n + j, p, d, {"post": p, "self_attn": f"{p}.self_attn",
                                               "cross_attn": f"{p}.encoder_attn", "ffn": f"{p}.fc2"},
                                 stack="decoder",
                                 parallel={"post": "hidden_states", "self_attn": "hidden_states",
                                           "cross_attn": "hidden_states"},
                                 linears=_linears(p, {"": "self_attn", "cross_": "encoder_attn"})))
        return out

    def prefix_block(self, k: int) -> int:
        return min(k, self.num_encoder_blocks)

    # ---- the encoder, split at block k
    def _window(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Cached frames [B, T, M] -> the encoder's 30 s input [B, M, window]: each utterance's last (padding)
        frame repeated to the end of the window."""
        idx = torch.arange(self.window_frames, device=inputs.device)[None, :].minimum(
            lengths.to(inputs.device)[:, None] - 1)
        return inputs.gather(1, idx[..., None].expand(-1, -1, inputs.shape[-1])).transpose(1, 2)

    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # Mirrors WhisperEncoder.forward (tests compare the two).
        enc = self.hf.model.encoder
        x = F.gelu(enc.conv1(self._window(inputs, lengths)))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight
        x = F.dropout(x, p=enc.dropout, training=enc.training)
        for layer in enc.layers[: self.prefix_block(k)]:
            x = layer(x, None)
        return x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)

    def _encoded(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """The encoder's output (what the decoder attends to) from an ``encode_prefix(.., k)`` output."""
        enc = self.hf.model.encoder
        for layer in enc.layers[self.prefix_block(k):]:
            hidden = layer(hidden, None)
        return enc.layer_norm(hidden)

    # ---- the decoder
    @contextlib.contextmanager
    def _folded(self):
        """The decoder's cross-attentions computed by :func:`folded_cross_attention` (those it can compute)."""
        folded = [m for m in self.hf.model.decoder.modules() if _foldable(m)]
        for m in folded:
            m.forward = types.MethodType(folded_cross_attention, m)
        try:
            yield
        finally:
            for m in folded:
                del m.forward

    def _logits(self, ids: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits [B, L, V] of the decoder inputs ``ids`` [B, L] (right-padded: causal
        attention keeps padding out of the positions before it), the cross-attention folded."""
        with self._folded():
            out = self.hf.model.decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=False)
        return self.hf.proj_out(out.last_hidden_state)

    def _teacher_forced(self, encoded: torch.Tensor, targets: List[List[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits at the positions predicting each target token [B, L, V] and the target lengths [B]."""
        b, p = len(targets), len(self.prompt)
        width = max(len(t) for t in targets)
        ids = torch.full((b, p + width - 1), self.eot, dtype=torch.long, device=encoded.device)
        ids[:, :p] = torch.tensor(self.prompt, device=encoded.device)
        for i, t in enumerate(targets):
            ids[i, p:p + len(t) - 1] = torch.tensor(t[:-1], dtype=torch.long, device=encoded.device)
        lengths = torch.tensor([len(t) for t in targets], device=encoded.device)
        return self._logits(ids, encoded)[:, p - 1:], lengths

    def max_decoded_tokens(self) -> int:
        """The most tokens :meth:`greedy` decodes per utterance (<|endoftext|> included): ``max_new_tokens`` within
        the decoder's positions after the prompt."""
        return min(self.max_new_tokens, self.hf.config.max_target_positions - len(self.prompt))

    def _repeats(self, history: List[int]) -> List[int]:
        """The tokens that would complete an n-gram (n = ``no_repeat_ngram_size``) already in ``history`` (the
        prompt and the tokens so far), as transformers' NoRepeatNGramLogitsProcessor bans them."""
        n = self.no_repeat_ngram_size
        if n <= 0 or len(history) + 1 < n:
            return []
        prefix = history[len(history) - n + 1:]
        return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]

    @torch.no_grad()
    def greedy(self, encoded: torch.Tensor) -> List[List[int]]:
        """Greedy token ids per utterance (<|endoftext|> included when reached) with a key-value cache; with
        ``no_repeat_ngram_size`` > 0 no n-gram of that size occurs twice (the guard against a decoder that
        loops).

        Utterances that ended leave the batch once they are a quarter of it (its caches selected: a copy of
        the rest, so not at every ending), so a batch costs about its utterances' own lengths rather than its
        longest one's for every row. Each row's computation is its own: the transcripts do not change."""
        b = encoded.shape[0]
        ids = torch.tensor(self.prompt, device=encoded.device).expand(b, -1)
        decoder = self.hf.model.decoder
        out = decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=True)
        rows = list(range(b))  # the utterance of each row of the cache's batch
        going = torch.ones(b, dtype=torch.bool, device=encoded.device)  # per row: not ended yet
        seqs: List[List[int]] = [[] for _ in range(b)]
        for step in range(self.max_decoded_tokens()):
            logits = self.hf.proj_out(out.last_hidden_state[:, -1]).float()
            suppressed = self.suppress + (self.begin_suppress if step == 0 else [])
            if suppressed:
                logits[:, suppressed] = -float("inf")
            live = going.nonzero().squeeze(1).tolist()
            if self.no_repeat_ngram_size:
                for i in live:  # the guard's n-grams run over the prompt and the tokens so far
                    banned = self._repeats(self.prompt + seqs[rows[i]])
                    if banned:
                        logits[i, banned] = -float("inf")
            nxt = logits.argmax(dim=-1).masked_fill(~going, self.eot)
            tokens = nxt.tolist()
            for i in live:
                seqs[rows[i]].append(tokens[i])
            going = going & (nxt != self.eot)
            left = int(going.sum())
            if left == 0 or step + 1 == self.max_decoded_tokens():
                break
            if 4 * left <= 3 * len(rows):
                keep = going.nonzero().squeeze(1)
                out.cache.batch_select_indices(keep)
                encoded, nxt, going = encoded[keep], nxt[keep], going[keep]
                rows = [rows[i] for i in keep.tolist()]
            out = decoder(input_ids=nxt[:, None], encoder_hidden_states=encoded, cache=out.cache, use_cache=True)
        return seqs

    # ---- the interface, from block k
    def losses_from(self, hidden, lengths, k, texts) -> torch.Tensor:
        encoded = self._encoded(hidden, k)
        targets = [self.tokenizer.encode(t) + [self.eot] for t in texts]
        logits, n = self._teacher_forced(encoded, targets)
        labels = torch.full(logits.shape[:2], -100, dtype=torch.long, device=logits.device)
        for i, t in enumerate(targets):
            labels[i, : len(t)] = torch.tensor(t, device=logits.device)
        ce = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none", ignore_index=-100)
        return ce.sum(1) / n.to(ce.device)

    def transcribe_from(self, hidden, lengths, k) -> List[str]:
        return [self.tokenizer.decode(t) for t in self.greedy(self._encoded(hidden, k))]

    def teacher_from(self, hidden, lengths, k) -> List[torch.Tensor]:
        # Per position: the greedy token, then the ids and logits of the top-k tokens there, all from one
        # teacher-forced pass (the computation distill_from repeats on the adapted model, so that the two
        # agree bit for bit on the base).
        encoded = self._encoded(hidden, k)
        targets = [t if t else [self.eot] for t in self.greedy(encoded)]
        with torch.no_grad():
            logits, n = self._teacher_forced(encoded, targets)
        top = logits.float().topk(min(TEACHER_TOP_K, logits.shape[-1]), dim=-1)
        out = []
        for i, t in enumerate(targets):
            rows = torch.cat([torch.tensor(t, dtype=torch.float32, device=logits.device)[:, None],
                              top.indices[i, : len(t)].float(), top.values[i, : len(t)]], dim=1)
            out.append(rows)
        return out

    def output_scores(self, row: torch.Tensor) -> torch.Tensor:
        # [greedy token, top-k ids, top-k logits]: the logits, sorted, so that two near-equal tokens trading
        # places is no difference of thousands (their ids)
        return row[:, 1 + (row.shape[-1] - 1) // 2:]

    def distill_from(self, hidden, lengths, k, teacher, teacher_lengths) -> torch.Tensor:
        encoded = self._encoded(hidden, k)
        kk = (teacher.shape[-1] - 1) // 2
        targets = [row[: int(n), 0].long().tolist() for row, n in zip(teacher, teacher_lengths.tolist())]
        logits, n = self._teacher_forced(encoded, targets)
        width = logits.shape[1]
        ids = teacher[:, :width, 1:1 + kk].long().to(logits.device)
        student = F.log_softmax(logits.float().gather(-1, ids), dim=-1)
        base = F.log_softmax(teacher[:, :width, 1 + kk:].float().to(logits.device), dim=-1)
        kl = (base.exp() * (base - student)).sum(-1)
        mask = frame_mask(n, width)
        return (kl * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> List[str]:
        """Greedy transcripts of cached log-mel inputs (the whole model)."""
        return self.transcribe_from(*self.encode_prefix(inputs, lengths, 0), 0)

    # ---- scoring
    def wer_text(self, text: str) -> str:
        """One canonical form for references and hypotheses: the project's ``normalize_text`` (lower case, no
        punctuation, numbers and symbols in words), then Whisper's English normaliser (transformers'
        ``EnglishTextNormalizer``: spelled numbers as digits, contractions expanded, fillers dropped), then
        one token per digit, so "five three nine", "539" and "5, 3, 9" all read "5 3 9". A non-English
        ``model.whisper.language`` uses Whisper's ``BasicTextNormalizer`` instead of the English one."""
        text = normalize_text(_spell_leading_zeros(_BRACKETS.sub(" ", text)))
        return " ".join(_BETWEEN_DIGITS.sub(" ", self._normalizer(text)).split())
