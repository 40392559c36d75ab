"""A merged Whisper winner as a CTranslate2 model (what faster-whisper runs), checked against the merged model.

The merged ``hf_model/`` folder goes through CTranslate2's ``TransformersConverter`` (weights in float32 unless
``--ct2-quantization`` asks for int8 or float16), which copies the tokenizer and the log-mel extractor's
settings beside the model (``tokenizer.json``, ``preprocessor_config.json``: what faster-whisper reads).
Both dev sets are then transcribed by ``ctranslate2.models.Whisper`` as a user runs it: the audio through
the ``WhisperFeatureExtractor`` saved in that folder (30 s windows), greedy (beam size 1) after the
project's prompt, with its suppressed tokens and its number of tokens (``model.whisper.max_new_tokens``),
and scored like the merged model. Quantization or a converter can change transcripts, so a CT2 model that
transcribes a dev set worse than the merged model by more than :data:`WORSE_BY` WER points is flagged
(``worse_than_merged``) and warned about, not shipped quietly.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from raysearch_adapters.data.audio import load_audio
from raysearch_adapters.data.cache import FeatureSet
from raysearch_adapters.data.manifest import Utterance, manifest_lines
from raysearch_adapters.data.source import DatasetOptions
from raysearch_adapters.fileio import atomic_folder
from raysearch_adapters.metrics import is_looping
from raysearch_adapters.train.evaluate import score

CT2_FOLDER = "ct2_model"  # inside export --out
QUANTIZATIONS = ("float32", "int8", "float16")  # --ct2-quantization
WORSE_BY = 0.5  # WER points on a dev set beyond which the CT2 model is reported as worse than the merged one
BATCH = 8  # utterances per generate call (each is a 30 s window, whatever its length)
COPIED = ("tokenizer.json", "preprocessor_config.json")  # what faster-whisper reads beside model.bin


def why_not() -> str | None:
    """Why there is no CTranslate2 model (one line), or None."""
    if importlib.util.find_spec("ctranslate2") is None:
        return ("no CTranslate2 model: ctranslate2 is not installed (it comes with the hf extra: pip install "
                "'raysearch-adapters[hf]')")
    return None


def convert(hf_folder: Path, out_dir: Path, quantization: str) -> Path:
    """``out_dir/ct2_model``: the merged Hugging Face folder converted by ``TransformersConverter``, with its
    tokenizer and feature extractor files."""
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(hf_folder), copy_files=[f for f in COPIED if (hf_folder / f).is_file()])
    return atomic_folder(Path(out_dir) / CT2_FOLDER,
                         lambda tmp: converter.convert(str(tmp), quantization=quantization, force=True))


def max_length(decoded: int, prompt: int) -> int:
    """``generate``'s ``max_length`` for at most ``decoded`` tokens after a prompt of ``prompt`` tokens:
    CTranslate2's Whisper decodes min(max_length / 2, max_length - (prompt - 1)) tokens."""
    return max(2 * decoded, decoded + prompt - 1)


def transcribe(folder: Path, model, utterances: Sequence[Utterance], device: str) -> List[str]:
    """Greedy transcripts of ``utterances`` by the CTranslate2 model in ``folder``, decoded as ``model`` (the
    merged Whisper backbone) decodes: its prompt, suppressed tokens, token limit and no-repeat guard."""
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(str(folder))
    ct2 = ctranslate2.models.Whisper(str(folder), device=device)
    length = max_length(model.max_decoded_tokens(), len(model.prompt))
    out: List[str] = []
    for start in range(0, len(utterances), BATCH):
        batch = utterances[start:start + BATCH]
        waves = [load_audio(u.audio_filepath, extractor.sampling_rate, u.offset, u.duration).numpy() for u in batch]
        features = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="np").input_features
        # suppress_blank: the converter's copy of begin_suppress_tokens, suppressed at the first step only
        results = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
                               [list(model.prompt)] * len(batch), beam_size=1, max_length=length,
                               suppress_tokens=list(model.suppress), suppress_blank=True,
                               no_repeat_ngram_size=model.no_repeat_ngram_size)
        out += [model.tokenizer.decode(r.sequences_ids[0]) for r in results]
    return out


def _utterances(manifest: str, ids: Sequence[str], options: DatasetOptions) -> List[Utterance]:
    """The manifest lines of ``ids`` (a feature set's utterances), in that order (``options``: a dataset's columns
    and where its embedded audio was stored, as the search read it)."""
    lines = manifest_lines(manifest, options)
    return [lines[i][1] for i in ids]


def warnings(dev: Dict[str, dict], quantization: str, by: float = WORSE_BY) -> List[str]:
    """One warning line per dev set that the CT2 model transcribes worse than the merged model by more than
    ``by`` WER points."""
    return [f"WARNING: the CTranslate2 model ({quantization}) transcribes dev set {domain} worse than the merged "
            f"model: WER {r['ct2_wer']:.2f} vs {r['merged_wer']:.2f} ({r['wer_difference']:+.2f} points, more than "
            f"{by:g}); do not ship it unchecked: try another --ct2-quantization, or ship hf_model/"
            for domain, r in dev.items() if r["wer_difference"] > by]


def check(folder: Path, model, dev_sets: Dict[str, FeatureSet], manifests: Dict[str, str], merged: Dict[str, dict],
          device: torch.device, quantization: str, options: DatasetOptions) -> dict:
    """The CT2 model in ``folder`` on each dev set beside the merged model's fp32 measurement ``merged`` (per dev
    set: ``wer``, ``hypotheses``): both WERs, their difference, changed and looping transcripts; flagged
    ``worse_than_merged`` past :data:`WORSE_BY` points."""
    import ctranslate2

    ct2_device = "cuda" if device.type == "cuda" and ctranslate2.get_cuda_device_count() > 0 else "cpu"
    dev = {}
    for domain, features in dev_sets.items():
        hyps = transcribe(folder, model, _utterances(manifests[domain], features.ids, options), ct2_device)
        wer = score(model.wer_text, features.texts, hyps)["wer"]
        reference = merged[domain]
        dev[domain] = {"ct2_wer": wer, "merged_wer": reference["wer"], "wer_difference": wer - reference["wer"],
                       "changed_hypotheses": sum(a != b for a, b in zip(hyps, reference["hypotheses"])),
                       "utterances": len(hyps),
                       "looping": [i for i, h in zip(features.ids, hyps) if is_looping(h)],
                       "merged_looping": sum(is_looping(h) for h in reference["hypotheses"])}
    lines = warnings(dev, quantization)
    return {"written": True, "folder": str(folder), "version": importlib.metadata.version("ctranslate2"),
            "quantization": quantization, "device": ct2_device, "beam_size": 1,
            "max_decoded_tokens": model.max_decoded_tokens(), "worse_by_limit": WORSE_BY,
            "worse_than_merged": bool(lines), "warnings": lines, "dev": dev,
            "load": f"ctranslate2.models.Whisper('{folder}') or faster_whisper.WhisperModel('{folder}')"}
