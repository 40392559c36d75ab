"""The feature cache: built once, reused, rebuilt on change, safe under concurrent builds."""

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from raysearch_adapters.config import FrontendConfig
from raysearch_adapters.data.audio import load_audio
from raysearch_adapters.data.cache import FeatureSet, load_features
from raysearch_adapters.data.features import LogMelFrontend
from raysearch_adapters.data.manifest import ManifestError, read_manifest
from raysearch_adapters.errors import UserError


class CountingFrontend(LogMelFrontend):
    """The real front end, counting how many utterances it featurizes."""

    calls = 0

    def forward(self, waveform, lengths):
        type(self).calls += 1
        return super().forward(waveform, lengths)


def _load(manifest, cache_dir, config=FrontendConfig(n_mels=40)):
    CountingFrontend.calls = 0
    frontend = CountingFrontend(config).eval()
    return load_features(manifest, frontend, {"frontend": vars(config)}, cache_dir, 16000, progress=False)


def test_cache_holds_the_frontend_outputs(corpus, tmp_path):
    fs = _load(corpus, tmp_path / "cache")
    assert CountingFrontend.calls == 4 and len(fs) == 4 and fs.feature_dim == 40
    utts = read_manifest(corpus)
    frontend = LogMelFrontend(FrontendConfig(n_mels=40))
    for i, utt in enumerate(utts):
        wave = load_audio(utt.audio_filepath, 16000)
        expected, n = frontend(wave[None], torch.tensor([wave.numel()]))
        assert torch.allclose(fs.features(i), expected[0, : n[0]])
    assert fs.ids == [u.id for u in utts]
    assert fs.texts == ["utterance zero", "utterance one", "utterance two", "utterance three"]
    assert fs.durations == [0.6, 1.0, 1.4, 0.8] and fs.num_frames == [61, 101, 141, 81]
    # Only relative, content-derived names inside the cache folder.
    assert [p.name for p in (tmp_path / "cache").glob("*.arrow")] == [fs.path.name]


def test_collate_pads_and_keeps_order(corpus, tmp_path):
    fs = _load(corpus, tmp_path / "cache")
    feats, lengths, texts = fs.collate([2, 0])
    assert feats.shape == (2, 141, 40) and feats.dtype == torch.float32 and lengths.dtype == torch.int64
    assert lengths.tolist() == [141, 61] and texts == ["utterance two", "utterance zero"]
    assert torch.equal(feats[1, :61], fs.features(0)) and torch.count_nonzero(feats[1, 61:]) == 0


def test_second_call_reuses_the_cache(corpus, tmp_path):
    first = _load(corpus, tmp_path / "cache")
    mtime = first.path.stat().st_mtime_ns
    second = _load(corpus, tmp_path / "cache")
    assert CountingFrontend.calls == 0
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert torch.equal(second.features(3), first.features(3))


def test_rebuilt_when_frontend_config_changes(corpus, tmp_path):
    first = _load(corpus, tmp_path / "cache")
    other = _load(corpus, tmp_path / "cache", FrontendConfig(n_mels=64))
    assert CountingFrontend.calls == 4 and other.path != first.path and other.feature_dim == 64


def test_rebuilt_when_manifest_or_audio_changes(corpus, tmp_path, tone):
    first = _load(corpus, tmp_path / "cache")
    corpus.write_text("".join(corpus.read_text().splitlines(keepends=True)[:2]))
    fewer = _load(corpus, tmp_path / "cache")
    assert CountingFrontend.calls == 2 and len(fewer) == 2 and fewer.path != first.path
    # Same manifest bytes, new audio content behind the same path: a new size/mtime, a new cache.
    tone(tmp_path / "audio" / "u0.wav", 0.6, freq=2000.0)
    redone = _load(corpus, tmp_path / "cache")
    assert CountingFrontend.calls == 2 and redone.path != fewer.path
    assert not torch.equal(redone.features(0), fewer.features(0))


def test_feature_set_pickles_by_path(corpus, tmp_path):
    fs = _load(corpus, tmp_path / "cache")
    blob = pickle.dumps(fs)
    assert len(blob) < 1000  # the path travels, not the features
    clone = pickle.loads(blob)
    assert clone.ids == fs.ids and torch.equal(clone.features(1), fs.features(1))


class DropoutFrontend(torch.nn.Module):
    """The front end followed by dropout: random in training mode, the plain front end in eval mode."""

    def __init__(self):
        super().__init__()
        self.frontend, self.dropout = LogMelFrontend(FrontendConfig(n_mels=40)), torch.nn.Dropout(0.5)

    def forward(self, waveform, lengths):
        feats, frames = self.frontend(waveform, lengths)
        return self.dropout(feats), frames


def test_featurizer_runs_in_eval_mode_and_gets_its_mode_back(corpus, tmp_path):
    featurizer = DropoutFrontend().train()
    fs = load_features(corpus, featurizer, {"dropout": 0.5}, tmp_path / "cache", 16000, progress=False)
    assert featurizer.training and featurizer.dropout.training
    clean = _load(corpus, tmp_path / "other-cache")
    assert torch.equal(fs.features(0), clean.features(0))


_BUILDER = textwrap.dedent("""
    import glob, os, sys, time, torch
    from raysearch_adapters.config import FrontendConfig
    from raysearch_adapters.data.cache import load_features
    from raysearch_adapters.data.features import LogMelFrontend

    manifest, cache_dir, log_path, barrier = sys.argv[1:]
    torch.set_num_threads(1)
    frontend = LogMelFrontend(FrontendConfig(n_mels=40)).eval()
    # Start building only when both processes are ready, so the builds really overlap.
    open(f"{barrier}.{os.getpid()}", "w").close()
    while len(glob.glob(f"{barrier}.*")) < 2:
        time.sleep(0.01)

    def featurize(wave, lengths):
        # Slow each utterance down and log it, so overlapping builds would show up twice.
        with open(log_path, "a") as log:
            log.write("x\\n")
        time.sleep(0.1)
        return frontend(wave, lengths)

    fs = load_features(manifest, featurize, {"n_mels": 40}, cache_dir, 16000, progress=False)
    print(fs.path, len(fs))
""")


def test_two_processes_build_one_valid_file(corpus, tmp_path):
    script = tmp_path / "build.py"
    script.write_text(_BUILDER)
    log = tmp_path / "calls.log"
    cache = tmp_path / "shared-cache"
    args = [sys.executable, str(script), str(corpus), str(cache), str(log), str(tmp_path / "ready")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    outputs = {out.strip() for out, _ in results}
    assert len(outputs) == 1 and outputs.pop().endswith(" 4")
    assert log.read_text().count("x") == 4  # featurized once in total, not once per process
    files = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert len(files) == 1 and files[0].endswith(".arrow")  # no temp files left behind
    fs = FeatureSet(cache / files[0])
    assert len(fs) == 4 and fs.features(2).shape == (141, 40)


def _bad_input_corpus(corpus, tone):
    """The corpus manifest plus an empty WAV, a segment past the end and a Latin-1 line."""
    folder = corpus.parent
    tone(folder / "audio" / "empty.wav", 0.0)
    extra = [json.dumps({"audio_filepath": "audio/empty.wav", "duration": 0.1, "text": "empty"}).encode(),
             json.dumps({"audio_filepath": "audio/u0.wav", "duration": 0.1, "offset": 0.6, "text": "end"}).encode(),
             '{"audio_filepath": "audio/u1.flac", "duration": 1.0, "text": "Stra\xdfe"}'.encode("latin-1")]
    corpus.write_bytes(corpus.read_bytes() + b"\n".join(extra) + b"\n")
    return corpus


def test_empty_audio_and_other_encodings_are_bad_lines_not_tensor_errors(corpus, tone, tmp_path):
    manifest = _bad_input_corpus(corpus, tone)
    frontend = LogMelFrontend(FrontendConfig(n_mels=40)).eval()
    with pytest.raises(ManifestError) as err:
        load_features(manifest, frontend, {"n_mels": 40}, tmp_path / "cache", 16000, progress=False)
    assert str(err.value).splitlines()[0] == (f"{manifest}: 3 of 7 lines are bad; fix them, or set "
                                              "data.on_error=skip to drop them and get a report")
    fs = load_features(manifest, frontend, {"n_mels": 40}, tmp_path / "cache", 16000, on_error="skip",
                       progress=False)
    assert len(fs) == 4


def test_a_clip_shorter_than_the_front_end_window_is_one_line(tmp_path, tone):
    tone(tmp_path / "click.wav", 100 / 16000)  # 100 samples; the centred STFT pads 256 on each side
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": "click.wav", "duration": 100 / 16000, "text": "x"}) + "\n")
    with pytest.raises(UserError) as err:
        load_features(manifest, LogMelFrontend(), {"n_mels": 80}, tmp_path / "cache", 16000, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{manifest}: utterance '{tmp_path / 'click.wav'}': cannot compute features of audio ")
    assert "(100 samples at 16000 Hz: " in msg and "\n" not in msg
    assert not list((tmp_path / "cache").glob("*.arrow"))  # nothing half-written


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_audio_with_nan_or_inf_samples_is_a_bad_line(tmp_path, tone, bad_value):
    import numpy as np
    import soundfile as sf

    tone(tmp_path / "good.wav", 0.5)
    wave = np.full(8000, 0.1, dtype=np.float32)
    wave[100:103] = bad_value
    sf.write(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")  # a float WAV stores NaN and inf as they are
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": name, "duration": 0.5, "text": "x"}) + "\n"
                                for name in ("good.wav", "bad.wav")))
    with pytest.raises(ManifestError, match=rf"^{manifest}:2: audio {tmp_path}/bad.wav has NaN/inf samples \(3 of "
                                            r"8000\); expected finite samples .*set data.on_error=skip"):
        _load(manifest, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.arrow"))  # nothing written
    fs = load_features(manifest, LogMelFrontend(FrontendConfig(n_mels=40)).eval(), {"n_mels": 40}, tmp_path / "cache",
                       16000, on_error="skip", progress=False)
    assert fs.ids == [str(tmp_path / "good.wav")]
    manifest.write_text(json.dumps({"audio_filepath": "bad.wav", "duration": 0.5, "text": "x"}) + "\n")
    with pytest.raises(ManifestError, match="the audio of all 1 utterances is bad"):
        load_features(manifest, LogMelFrontend(FrontendConfig(n_mels=40)).eval(), {"n_mels": 40}, tmp_path / "cache",
                      16000, on_error="skip", progress=False)
