"""The built-in Conformer-CTC: 4x or 8x convolutional subsampling, Conformer blocks, CTC head.

Small enough to pretrain on a laptop CPU. Every block exposes the three points adapters
can go (``post``: the block's output, ``mha``: the self-attention branch, ``ffn``: the
second feed-forward branch) as sub-modules, so adapters are injected by wrapping modules
from the outside, never by editing this file. Like torchaudio's Conformer there is no
positional encoding: the depthwise convolutions carry relative position.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from raysearch_adapters.config import ConformerConfig, FrontendConfig
from raysearch_adapters.data.features import LogMelFrontend
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import BlockInfo, FusedWeight
from raysearch_adapters.models.checkpoint import file_key, load_state_strict, read_checkpoint, save_checkpoint
from raysearch_adapters.models.ctc import CTCBackbone
from raysearch_adapters.models.tokenizer import Tokenizer, tokenizer_from_dict


ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODEL = ASSETS / "demo_model.pt"  # the shipped demo base model (model.checkpoint=demo)


def resolve_checkpoint(checkpoint: str) -> Path:
    """'demo' -> the shipped model; anything else is a path."""
    if checkpoint == "demo":
        if not DEMO_MODEL.is_file():
            raise UserError(f"model.checkpoint=demo: this version ships no demo base model ({DEMO_MODEL} is "
                            "missing); train one with `raysearch-adapters pretrain` (minutes on a GPU, hours on a "
                            "CPU) and pass model.checkpoint=PATH/model.pt")
        return DEMO_MODEL
    return Path(checkpoint).expanduser()


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] bool, True at padded frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class ConvSubsampling(nn.Module):
    """Stride-2 3x3 convolutions over (time, mel) (2 for 4x, 3 for 8x fewer frames), then a
    projection to d_model. After the first, the convolutions are depthwise-separable (as in
    NeMo's FastConformer), which keeps subsampling cheap next to the blocks."""

    def __init__(self, n_mels: int, channels: int, d_model: int, factor: int = 4):
        super().__init__()
        self.num_convs = {4: 2, 8: 3}[factor]
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(self.num_convs - 1):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                       nn.Conv2d(channels, channels, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        freq = n_mels
        for _ in range(self.num_convs):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, d_model)

    @staticmethod
    def _halve(lengths: torch.Tensor) -> torch.Tensor:
        """Frames after one stride-2 convolution (kernel 3, padding 1)."""
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # Padded frames are zeroed before the first convolution and after every stride-2 stage
        # (each ends with a ReLU): the next kernel then sees zeros past an utterance's end, as
        # its own zero padding would show it alone, so an utterance's frames do not depend on
        # its batch-mates (which the frozen-prefix cache relies on). Unpadded: a no-op.
        x = x.masked_fill(padding_mask(lengths, x.shape[1])[:, :, None], 0.0).unsqueeze(1)
        out_lengths = lengths
        for layer in self.conv:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                out_lengths = self._halve(out_lengths)
                x = x.masked_fill(padding_mask(out_lengths, x.shape[2])[:, None, :, None], 0.0)
        b, c, t, f = x.shape  # [B, C, T/f, F/f]
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), out_lengths


class FeedForward(nn.Module):
    """Pre-norm feed-forward branch (the block adds it with weight 1/2, macaron style)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, ffn_dim), nn.SiLU(),
                                 nn.Dropout(dropout), nn.Linear(ffn_dim, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention branch that ignores padded frames."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        y, _ = self.attn(y, y, y, key_padding_mask=pad_mask, need_weights=False)
        return self.dropout(y)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm, SiLU, pointwise conv."""

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise2 = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        # Zero padded frames so the depthwise kernel never mixes padding into real frames.
        y = self.norm(x).masked_fill(pad_mask[..., None], 0.0).transpose(1, 2)
        y = F.glu(self.pointwise1(y), dim=1)
        y = y.masked_fill(pad_mask[:, None, :], 0.0)
        y = self.pointwise2(F.silu(self.batch_norm(self.depthwise(y))))
        return self.dropout(y.transpose(1, 2))


class ConformerBlock(nn.Module):
    """FFN/2 -> MHSA -> Conv -> FFN/2 -> LayerNorm, each branch added residually."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.ffn1 = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.mha = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.mha(x, pad_mask)
        x = x + self.conv(x, pad_mask)
        x = x + 0.5 * self.ffn(x)
        return self.norm(x)


class Encoder(nn.Module):
    """Subsampling + the stack of Conformer blocks."""

    def __init__(self, cfg: ConformerConfig, n_mels: int):
        super().__init__()
        self.subsampling = ConvSubsampling(n_mels, cfg.subsampling_channels, cfg.d_model, cfg.subsampling_factor)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_layers))


class ConformerCTC(CTCBackbone):
    """Conformer-CTC over log-mel features, with a SentencePiece (or any) tokenizer."""

    name = "conformer_ctc"

    def __init__(self, cfg: ConformerConfig, frontend: FrontendConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg = cfg
        self.frontend_cfg = frontend
        self.sample_rate = frontend.sample_rate
        self.tokenizer = tokenizer
        self.encoder = Encoder(cfg, frontend.n_mels)
        self.head = nn.Linear(cfg.d_model, tokenizer.vocab_size + 1)  # +1: CTC blank at index 0

    @classmethod
    def from_model_config(cls, cfg) -> "ConformerCTC":
        return load_checkpoint_model(resolve_checkpoint(cfg.checkpoint))

    @classmethod
    def input_files(cls, cfg) -> List[str]:
        return [] if cfg.checkpoint == "demo" else [cfg.checkpoint]

    @classmethod
    def weights_key(cls, cfg) -> dict:
        return file_key(resolve_checkpoint(cfg.checkpoint))

    @classmethod
    def evaluate_args(cls, cfg) -> str:
        return f"--model {cfg.checkpoint}"

    def featurizer(self) -> nn.Module:
        return LogMelFrontend(self.frontend_cfg)

    def featurizer_key(self) -> dict:
        return {"frontend": "log-mel", **dataclasses.asdict(self.frontend_cfg)}

    def adaptable_blocks(self) -> List[BlockInfo]:
        return [self._block(i) for i in range(len(self.encoder.layers))]

    def _block(self, i: int) -> BlockInfo:
        p, d = f"encoder.layers.{i}", self.cfg.d_model
        # nn.MultiheadAttention reads q, k and v as the row thirds of its fused in_proj_weight, and
        # out_proj.weight, itself: LoRA targets them as slices of those weights (FusedWeight), each with
        # its own A and B. The feed-forward layers are plain nn.Linear layers (net.1 in, net.4 out);
        # ffn1_* is the first (macaron) feed-forward, ffn_* the second, the one position "ffn" adapts.
        attn = f"{p}.mha.attn"
        linears = {"q": FusedWeight(attn, "in_proj_weight", (0, d)), "k": FusedWeight(attn, "in_proj_weight", (d, 2 * d)),
                   "v": FusedWeight(attn, "in_proj_weight", (2 * d, 3 * d)), "out": FusedWeight(attn, "out_proj.weight"),
                   "ffn1_in": f"{p}.ffn1.net.1", "ffn1_out": f"{p}.ffn1.net.4",
                   "ffn_in": f"{p}.ffn.net.1", "ffn_out": f"{p}.ffn.net.4"}
        # The block, its attention and its feed-forward each take the hidden states as their first argument.
        return BlockInfo(i, p, d, {"post": p, "mha": f"{p}.mha", "ffn": f"{p}.ffn"},
                         parallel={"post": "x", "mha": "x", "ffn": "x"}, linears=linears)

    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.encoder.subsampling(inputs, lengths)
        mask = padding_mask(lengths, x.shape[1])
        for layer in self.encoder.layers[:k]:
            x = layer(x, mask)
        return x, lengths

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = padding_mask(lengths, hidden.shape[1])
        x = hidden
        for layer in self.encoder.layers[k:]:
            x = layer(x, mask)
        return self.head(x).float().log_softmax(dim=-1), lengths

    def config_dict(self) -> dict:
        return {"name": self.name, "conformer": dataclasses.asdict(self.cfg),
                "frontend": dataclasses.asdict(self.frontend_cfg)}

    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """The project's own checkpoint (fp32), loadable as ``model.checkpoint`` or ``evaluate --model``."""
        path = Path(out_dir) / "model.pt"
        save_checkpoint(path, self, meta)
        return path, (f"raysearch-adapters evaluate --model {path} --manifest M (a raysearch-adapters checkpoint: "
                      f"model.checkpoint={path} for search and pretrain too)")

    @classmethod
    def load_export(cls, path: Path) -> "ConformerCTC":
        return load_checkpoint_model(Path(path))

    @classmethod
    def from_config_dict(cls, d: dict, tokenizer: Tokenizer) -> "ConformerCTC":
        """Rebuild (random weights) from :meth:`config_dict`."""
        return cls(ConformerConfig(**d["conformer"]), FrontendConfig(**d["frontend"]), tokenizer)


def load_checkpoint_model(path: Path) -> "ConformerCTC":
    """A base model from a checkpoint written by :func:`save_checkpoint`."""
    ckpt = read_checkpoint(path)
    name = ckpt["config"].get("name")
    if name != "conformer_ctc":
        raise UserError(f"{path}: model name {name!r} in checkpoint; loadable from a file: conformer_ctc")
    model = ConformerCTC.from_config_dict(ckpt["config"], tokenizer_from_dict(ckpt["tokenizer"]))
    load_state_strict(model, ckpt["state_dict"], str(path))
    model.meta = ckpt.get("meta", {})
    return model.eval()
