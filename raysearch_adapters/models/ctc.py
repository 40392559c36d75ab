"""What every CTC backbone shares: the CTC loss, greedy decoding, and distillation on frame posteriors.

A CTC backbone implements :meth:`CTCBackbone.forward_from` (blocks [k, n) and the head ->
log-probabilities with the blank at index 0, token ``i`` of the tokenizer at ``i + 1``);
the loss, decoding and the teacher's cache entries follow from it.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from raysearch_adapters.models.base import Backbone


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks (0); returns token ids (blank-free, 0-based)."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for seq, n in zip(best, lengths.cpu().tolist()):
        seq = torch.unique_consecutive(seq[:n])
        out.append([int(t) - 1 for t in seq if t != 0])
    return out


def ctc_targets(tokenizer, texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated CTC targets (token + 1: blank is 0) and their lengths."""
    ids = [[t + 1 for t in tokenizer.encode(text)] for text in texts]
    return (torch.tensor([t for seq in ids for t in seq], dtype=torch.long),
            torch.tensor([len(seq) for seq in ids], dtype=torch.long))


def ctc_losses(log_probs: torch.Tensor, out_lengths: torch.Tensor, tokenizer, texts) -> torch.Tensor:
    """CTC loss of each utterance divided by its number of target tokens [B] (blank = 0)."""
    targets, target_lengths = ctc_targets(tokenizer, texts)
    losses = F.ctc_loss(log_probs.float().transpose(0, 1), targets.to(log_probs.device), out_lengths,
                        target_lengths.to(log_probs.device), blank=0, reduction="none", zero_infinity=True)
    return losses / target_lengths.to(losses.device).clamp(min=1)


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, tokenizer, texts) -> torch.Tensor:
    """Mean CTC loss per target token over the batch (torch's ``reduction='mean'``)."""
    return ctc_losses(log_probs, out_lengths, tokenizer, texts).mean()


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] bool, True at valid (non-padded) frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def frame_kl(student_log_probs: torch.Tensor, student_lengths: torch.Tensor, teacher_log_probs: torch.Tensor,
             teacher_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames of KL(p_teacher || p_student) per utterance [B]; 0 when they agree."""
    if not torch.equal(student_lengths.cpu(), teacher_lengths.cpu()):
        raise ValueError(f"distillation: student frames {student_lengths.tolist()} differ from the teacher's "
                         f"{teacher_lengths.tolist()}; the teacher cache does not belong to this model's inputs")
    # The student's batch may be padded further than the teacher's (it can share a batch with others).
    t = teacher_log_probs.shape[1]
    teacher = teacher_log_probs.to(student_log_probs.device, torch.float32)
    kl = F.kl_div(student_log_probs[:, :t].float(), teacher, log_target=True, reduction="none").sum(-1)
    mask = frame_mask(student_lengths.to(kl.device), t)
    return (kl * mask).sum(1) / mask.sum(1).clamp(min=1)


class CTCBackbone(Backbone):
    """A backbone whose head emits per-frame CTC log-probabilities."""

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Blocks [k, n) and the CTC head -> (log-probs [B, T', V+1] in fp32, output lengths [B])."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached inputs [B, T, F] + lengths -> (CTC log-probs [B, T', V+1], output lengths [B])."""
        return self.forward_from(*self.encode_prefix(inputs, lengths, 0), 0)

    def losses_from(self, hidden, lengths, k, texts) -> torch.Tensor:
        log_probs, out_lengths = self.forward_from(hidden, lengths, k)
        return ctc_losses(log_probs, out_lengths, self.tokenizer, texts)

    def transcribe_from(self, hidden, lengths, k) -> List[str]:
        log_probs, out_lengths = self.forward_from(hidden, lengths, k)
        return [self.tokenizer.decode(ids) for ids in greedy_ctc_decode(log_probs, out_lengths)]

    def teacher_from(self, hidden, lengths, k) -> List[torch.Tensor]:
        # The whole posterior per frame: KL against it is exact (no top-k truncation); CTC
        # vocabularies are small (tens to ~1k symbols), so it costs about what a prefix does.
        log_probs, out_lengths = self.forward_from(hidden, lengths, k)
        return [lp[:n].float() for lp, n in zip(log_probs, out_lengths.tolist())]

    def distill_from(self, hidden, lengths, k, teacher, teacher_lengths) -> torch.Tensor:
        log_probs, out_lengths = self.forward_from(hidden, lengths, k)
        return frame_kl(log_probs, out_lengths, teacher, teacher_lengths)

    def step_terms_from(self, hidden, lengths, k, texts, teacher=None, teacher_lengths=None):
        # One forward for the labelled and the distillation rows: a small model's step pays a fixed
        # cost per forward and backward (bench/forgetting.py step), so one batch is cheaper than two.
        log_probs, out_lengths = self.forward_from(hidden, lengths, k)
        n = len(texts)
        supervised = ctc_losses(log_probs[:n], out_lengths[:n], self.tokenizer, texts)
        if teacher is None:
            return supervised, None
        return supervised, frame_kl(log_probs[n:], out_lengths[n:], teacher, teacher_lengths)
