"""Build a fresh NeMo Conformer ASR model (CTC, RNNT, TDT or hybrid RNNT-CTC) offline, from a config dict.

What the tests' tiny ``.nemo`` files and ``bench/nemo_pretrain.py`` start from: a SentencePiece
BPE tokenizer trained with NeMo's own ``create_spt_model`` (it writes ``tokenizer.model`` and the
``vocab.txt`` NeMo wants beside it) and a ``ConformerEncoder`` with NeMo's own heads, sized by the
arguments. Nothing here downloads anything. NeMo is imported inside the functions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

KINDS = ("ctc", "rnnt", "tdt", "hybrid")
# The model class NeMo instantiates for each kind (all subword/BPE).
MODEL_CLASS = {"ctc": "EncDecCTCModelBPE", "rnnt": "EncDecRNNTBPEModel", "tdt": "EncDecRNNTBPEModel",
               "hybrid": "EncDecHybridRNNTCTCBPEModel"}
TDT_DURATIONS = [0, 1, 2, 3, 4]


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 128, lower_case: bool = True) -> Path:
    """A SentencePiece BPE tokenizer of ``texts`` in ``out_dir`` (tokenizer.model, tokenizer.vocab, vocab.txt)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "text.txt"
    corpus.write_text("".join(f"{t}\n" for t in texts))
    create_spt_model(str(corpus), vocab_size, sample_size=-1, do_lower_case=lower_case, tokenizer_type="bpe",
                     output_dir=str(out_dir))
    return out_dir


def model_config(kind: str, tokenizer_dir: Path, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                 conv_kernel_size: int = 9, subsampling: str = "striding", subsampling_factor: int = 4,
                 dropout: float = 0.1) -> dict:
    """The ``cfg`` of a NeMo Conformer model of ``kind`` (ctc | rnnt | tdt | hybrid) with these sizes."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}; allowed: {', '.join(KINDS)}")
    ctc_decoder = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_model,
                   "num_classes": -1, "vocabulary": []}
    cfg: dict = {
        "sample_rate": 16000,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 80, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 16, "pad_value": 0.0},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                         "freq_masks": 2, "time_masks": 2, "freq_width": 15, "time_width": 0.05},
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "feat_out": -1,
            "n_layers": n_layers, "d_model": d_model, "subsampling": subsampling,
            "subsampling_factor": subsampling_factor, "subsampling_conv_channels": d_model,
            "ff_expansion_factor": 2, "self_attention_model": "rel_pos", "n_heads": n_heads,
            "att_context_size": [-1, -1], "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": conv_kernel_size, "conv_norm_type": "batch_norm", "dropout": dropout,
            "dropout_pre_encoder": dropout, "dropout_emb": 0.0, "dropout_att": dropout},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-3},
        # No data: NeMo's transcribe() reads validation_ds for its temporary data layer (every
        # pretrained model has one).
        "validation_ds": {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 4, "shuffle": False,
                          "use_start_end_token": False},
    }
    if kind == "ctc":
        cfg["decoder"] = ctc_decoder
        return cfg
    durations = TDT_DURATIONS if kind == "tdt" else []
    cfg["model_defaults"] = {"enc_hidden": d_model, "pred_hidden": d_model, "joint_hidden": d_model}
    cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                      "random_state_sampling": False, "blank_as_pad": True,
                      "prednet": {"pred_hidden": d_model, "pred_rnn_layers": 1, "t_max": None, "dropout": dropout}}
    cfg["joint"] = {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                    "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": -1,
                    "num_extra_outputs": len(durations),
                    "jointnet": {"joint_hidden": d_model, "activation": "relu", "dropout": dropout,
                                 "encoder_hidden": d_model, "pred_hidden": d_model}}
    cfg["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}
    cfg["loss"] = {"loss_name": "default"}
    if kind == "tdt":
        cfg["decoding"].update({"model_type": "tdt", "durations": durations})
        cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": durations, "sigma": 0.02, "omega": 0.1}}
    if kind == "hybrid":
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": copy.deepcopy(ctc_decoder),
                          "decoding": {"strategy": "greedy_batch"}}
    return cfg


def build_model(kind: str, tokenizer_dir: Path, seed: int = 0, **sizes):
    """A randomly initialised NeMo model of ``kind`` (eval mode); ``sizes`` go to :func:`model_config`."""
    import torch
    from nemo.collections.asr import models as nemo_models
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    cls = getattr(nemo_models, MODEL_CLASS[kind])
    return cls(cfg=OmegaConf.create(model_config(kind, tokenizer_dir, **sizes))).eval()


def build_nemo_file(kind: str, texts: Iterable[str], path: Path, vocab_size: int = 128, seed: int = 0,
                    **sizes) -> Path:
    """Train a tokenizer on ``texts``, build a model of ``kind`` and save it as the ``.nemo`` file ``path``."""
    path = Path(path)
    tokenizer_dir = train_tokenizer(texts, path.parent / f"{path.stem}-tokenizer", vocab_size)
    build_model(kind, tokenizer_dir, seed, **sizes).save_to(str(path))
    return path
