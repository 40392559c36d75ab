"""Tokenizers: SentencePiece BPE (built-in Conformer) and characters (wav2vec2 bundles, HF CTC vocabularies).

Both map normalised text (a-z, apostrophe, space) to ids ``0..vocab_size-1``; the CTC
head puts the blank at 0 and shifts every token by one. Both serialise to a plain dict of
str/bytes/lists so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
from typing import Iterable, List, Sequence

from raysearch_adapters.errors import UserError


class TokenizerError(UserError):
    """Text the tokenizer cannot encode."""


class Tokenizer:
    """Common interface."""

    vocab_size: int

    def encode(self, text: str) -> List[int]:
        """Token ids of normalised text."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        raise NotImplementedError

    def unsupported_chars(self, text: str) -> set[str]:
        """Characters of ``text`` this tokenizer cannot represent."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Serialisable form (see :func:`tokenizer_from_dict`)."""
        raise NotImplementedError

    def check_texts(self, texts: Iterable[str], where: str) -> None:
        """Fail naming the characters and the manifest lines (1-based) this tokenizer cannot encode."""
        bad: dict[str, list[int]] = {}
        for line, text in enumerate(texts, start=1):
            for ch in self.unsupported_chars(text):
                bad.setdefault(ch, []).append(line)
        if bad:
            parts = []
            for ch, lines in sorted(bad.items()):
                more = f" (+{len(lines) - 5} more)" if len(lines) > 5 else ""
                parts.append(f"{ch!r} on lines {', '.join(map(str, lines[:5]))}{more}")
            raise TokenizerError(f"{where}: characters the tokenizer cannot encode: {'; '.join(parts)}; "
                                 "allowed: the characters of the tokenizer's vocabulary (normalised text is a-z, apostrophe "
                                 "and space)")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model held in memory as its serialised proto."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = self.sp.get_piece_size()
        pieces = "".join(self.sp.id_to_piece(i) for i in range(self.vocab_size))
        self._chars = set(pieces.replace("\u2581", " ")) | {" "}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "SentencePieceTokenizer":
        """Train a BPE model on ``texts`` (normalised); deterministic (one thread)."""
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
            num_threads=1, minloglevel=2, hard_vocab_limit=False,
            # Texts arrive normalised (data.text.normalize_text); SentencePiece's default NFKC
            # table would add ~240 KB to every checkpoint and change nothing.
            normalization_rule_name="identity")
        return cls(buf.getvalue())

    def encode(self, text: str) -> List[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def unsupported_chars(self, text: str) -> set[str]:
        return set(text) - self._chars

    def to_dict(self) -> dict:
        return {"kind": "sentencepiece", "model_proto": self.model_proto}


class CharTokenizer(Tokenizer):
    """Characters, e.g. the labels of a torchaudio wav2vec2 ASR bundle.

    ``labels`` are the model's output symbols *without* the CTC blank; ``space`` is the label
    used for a word boundary (``|`` in torchaudio bundles and HF vocabularies). ``ignore``:
    labels that are never encoded and dropped when decoding (an HF vocabulary's ``<s>``,
    ``</s>``, ``<unk>``). Text maps onto the vocabulary's case."""

    def __init__(self, labels: Sequence[str], space: str = "|", ignore: Sequence[str] = ()):
        self.labels = list(labels)
        self.space = space
        self.ignore = sorted(set(ignore))
        self.vocab_size = len(self.labels)
        self._index = {c: i for i, c in enumerate(self.labels) if c not in self.ignore}

    def _map(self, ch: str) -> str:
        if ch == " ":
            return self.space
        for c in (ch, ch.upper(), ch.lower()):
            if c in self._index:
                return c
        return ch

    def encode(self, text: str) -> List[int]:
        return [self._index[self._map(c)] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        s = "".join(self.labels[i] for i in ids if self.labels[i] not in self.ignore).replace(self.space, " ")
        return " ".join(s.lower().split())

    def unsupported_chars(self, text: str) -> set[str]:
        return {c for c in set(text) if self._map(c) not in self._index}

    def to_dict(self) -> dict:
        return {"kind": "char", "labels": list(self.labels), "space": self.space, "ignore": list(self.ignore)}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_dict``."""
    if d.get("kind") == "sentencepiece":
        return SentencePieceTokenizer(d["model_proto"])
    if d.get("kind") == "char":
        return CharTokenizer(d["labels"], d.get("space", "|"), d.get("ignore", ()))
    raise UserError(f"tokenizer: unknown kind {d.get('kind')!r}; allowed: sentencepiece, char")
