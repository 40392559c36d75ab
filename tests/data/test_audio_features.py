"""Audio loading, the log-mel front end and SpecAugment on real signals."""

import numpy as np
import soundfile as sf
import torch

from raysearch_adapters.config import FrontendConfig, SpecAugmentConfig
from raysearch_adapters.data.audio import load_audio
from raysearch_adapters.data.features import LogMelFrontend, SpecAugment


def test_load_audio_mixes_down_slices_and_resamples(tmp_path):
    # Left channel is a ramp, right its negation plus 0.2: the mono mix is the constant 0.1.
    ramp = np.linspace(-0.5, 0.5, 8000, dtype=np.float32)
    sf.write(tmp_path / "st.flac", np.stack([ramp, 0.2 - ramp], axis=1), 8000, subtype="PCM_24")
    wave = load_audio(tmp_path / "st.flac", 8000)
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert torch.allclose(wave, torch.full_like(wave, 0.1), atol=1e-4)

    sf.write(tmp_path / "ramp.wav", ramp, 8000, subtype="FLOAT")
    part = load_audio(tmp_path / "ramp.wav", 8000, offset=0.25, duration=0.5)
    assert torch.equal(part, torch.from_numpy(ramp[2000:6000]))
    up = load_audio(tmp_path / "ramp.wav", 16000)
    assert up.shape == (16000,) and abs(float(up[8000]) - float(ramp[4000])) < 1e-2


def _batch(tone, tmp_path, seconds_and_freqs):
    waves = [load_audio(tone(tmp_path / f"{i}.wav", s, freq=f, seed=i), 16000)
             for i, (s, f) in enumerate(seconds_and_freqs)]
    lengths = torch.tensor([w.numel() for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : w.numel()] = w
    return padded, lengths


def test_log_mel_shapes_normalisation_and_padding(tone, tmp_path):
    frontend = LogMelFrontend(FrontendConfig(n_mels=40)).eval()
    wave, lengths = _batch(tone, tmp_path, [(1.0, 440.0), (0.5, 1000.0)])
    feats, frames = frontend(wave, lengths)
    assert feats.shape == (2, 101, 40) and feats.dtype == torch.float32
    assert frames.tolist() == [101, 51]  # samples // hop (160) + 1, centred frames
    for b, n in enumerate(frames.tolist()):
        valid = feats[b, :n]
        assert torch.allclose(valid.mean(dim=0), torch.zeros(40), atol=1e-4)
        assert torch.allclose(valid.std(dim=0), torch.ones(40), atol=1e-3)
    assert torch.count_nonzero(feats[1, 51:]) == 0
    again, _ = frontend(wave, lengths)
    assert torch.equal(feats, again)


def test_log_mel_puts_a_tone_in_the_right_band(tone, tmp_path):
    raw = LogMelFrontend(FrontendConfig(normalize="none"))
    wave, lengths = _batch(tone, tmp_path, [(0.5, 300.0), (0.5, 3000.0)])
    feats, _ = raw(wave, lengths)
    peaks = feats.mean(dim=1).argmax(dim=1).tolist()
    assert peaks[0] < peaks[1]
    # Without normalisation the values are raw log energies, not zero-mean.
    assert feats[0].mean().abs() > 1.0


def test_specaugment_masks_in_training_only():
    torch.manual_seed(0)
    feats = torch.randn(4, 200, 80) + 5.0  # no natural zeros, so masked cells are exactly 0
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=15, time_masks=2, time_width=40)).train()
    out = aug(feats)
    assert out.shape == feats.shape and not torch.equal(out, feats)
    masked = out == 0
    assert torch.equal(out[~masked], feats[~masked])  # only masking, nothing else changes
    # Masks are drawn per example, not shared by the batch.
    assert len({tuple(m.flatten().tolist()) for m in masked}) > 1
    assert aug.eval()(feats) is feats
    off = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0)).train()
    assert torch.equal(off(feats), feats)
