"""Speech synthesis for the demo corpus: Debian TTS voices (espeak-ng, flite, festival),
prosody variation and a telephone channel, one 16 kHz mono FLAC per utterance.

Runs in worker processes: every job carries all its random choices (drawn by the parent from
the corpus seed), so the audio does not depend on which process synthesises it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf

from raysearch_adapters.errors import UserError

SAMPLE_RATE = 16000
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")
_RAW = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(SAMPLE_RATE)]


class DemoDataError(UserError):
    """The demo corpus cannot be built here (missing programs, a foreign output folder...)."""


@dataclass(frozen=True)
class Voice:
    """A TTS voice: ``engine`` is espeak, flite or festival; ``ident`` the engine's own voice name."""

    engine: str
    ident: str
    package: str  # the Debian package that provides it

    @property
    def name(self) -> str:
        """Stable id used in manifests ("espeak:en-us+m3")."""
        return f"{self.engine}:{self.ident}"


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise, with every random choice already made."""

    path: str  # output FLAC
    say: str  # text given to the TTS engine
    voice: Voice
    tempo: float  # speaking-rate factor (1 = the voice's default)
    pitch: float  # -1..1, mapped to each engine's pitch control
    peak: float  # output peak amplitude
    snr_db: Optional[float] = None  # None: clean; else telephone channel with noise at this SNR
    pad: float = 0.0  # seconds of silence added at both ends before the channel
    noise_seed: int = 0


_PROGRAMS = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival", "sox": "sox"}


def check_tools(voices: Sequence[Voice]) -> None:
    """Raise one DemoDataError naming the Debian packages to install if a program or voice is missing."""
    missing = {pkg for prog, pkg in _PROGRAMS.items() if shutil.which(prog) is None}
    for v in voices:
        if v.engine == "festival" and not any(FESTIVAL_VOICE_DIR.glob(f"*/{v.ident}")):
            missing.add(v.package)
    if "flite" not in missing:
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        missing.update(v.package for v in voices if v.engine == "flite" and v.ident not in listed)
    if missing:
        raise DemoDataError(
            f"the demo corpus needs text-to-speech programs and voices that are not installed "
            f"(missing: {', '.join(sorted(missing))}); install them with: "
            f"sudo apt-get install {' '.join(sorted(missing))}")


def _run(cmd: list[str], stdin: Optional[bytes] = None) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, check=True)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{cmd[0]} failed ({' '.join(cmd[:6])} ...): {err[-1] if err else e}") from None
    return proc.stdout


def _festival_batch(jobs: Sequence[Job], wavs: Sequence[str], tmp: str) -> None:
    # One festival process per chunk: starting festival costs more than synthesising a short utterance.
    lines = [f"(voice_{jobs[0].voice.ident})"]
    for job, wav in zip(jobs, wavs):
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{job.say}")) "{wav}" \'riff)')
    script = os.path.join(tmp, "batch.scm")
    Path(script).write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(["festival", "--batch", script])


def _tts(job: Job, wav: str) -> list[str]:
    """Synthesise ``job`` into ``wav``; return the sox effects that apply its prosody."""
    if job.voice.engine == "espeak":
        # espeak-ng has its own rate (words/min, default 175) and pitch (0-99, default 50).
        _run(["espeak-ng", "-v", job.voice.ident, "-s", str(round(175 * job.tempo)),
              "-p", str(round(50 + 25 * job.pitch)), "-w", wav, job.say])
        return []
    if job.voice.engine == "flite":
        _run(["flite", "-voice", job.voice.ident, "-t", job.say, "-o", wav])
    # festival jobs were synthesised beforehand, a chunk at a time, by _festival_batch.
    return ["tempo", "-s", f"{job.tempo:.4f}", "pitch", f"{200 * job.pitch:.1f}"]


def _telephone(audio: np.ndarray, job: Job) -> np.ndarray:
    """Noise at ``job.snr_db`` (white or pink), then a 300-3400 Hz band and an 8 kHz channel."""
    rng = np.random.default_rng(job.noise_seed)
    noise = rng.standard_normal(len(audio))
    if rng.random() < 0.5:  # pink: 1/f power, shaped in the frequency domain
        spec = np.fft.rfft(noise)
        spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
        noise = np.fft.irfft(spec, n=len(audio))
    voiced = audio[np.abs(audio) > 0.05 * np.abs(audio).max()]
    signal_power = float(np.mean(voiced ** 2)) if voiced.size else 1e-8
    noise *= np.sqrt(signal_power / 10 ** (job.snr_db / 10) / np.mean(noise ** 2))
    noisy = (audio + noise).astype(np.float32)
    noisy /= max(1.0, float(np.abs(noisy).max()) * 2)  # headroom for the filters
    out = _run(["sox", "-V1", *_RAW, "-", *_RAW, "-", "sinc", "300-3400", "rate", "8k", "rate", "16k"],
               stdin=noisy.tobytes())
    return np.frombuffer(out, dtype=np.float32)


def synthesise(jobs: Sequence[Job]) -> list[float]:
    """Write each job's FLAC; return the durations in seconds. All jobs of a call share one voice."""
    with tempfile.TemporaryDirectory(prefix="raysearch-demo-") as tmp:
        wavs = [os.path.join(tmp, f"{i}.wav") for i in range(len(jobs))]
        if jobs and jobs[0].voice.engine == "festival":
            _festival_batch(jobs, wavs, tmp)
        durations = []
        for job, wav in zip(jobs, wavs):
            effects = _tts(job, wav)
            audio = np.frombuffer(_run(["sox", "-V1", wav, *_RAW, "-", "gain", "-6", *effects]),
                                  dtype=np.float32)
            if job.pad:
                silence = np.zeros(round(job.pad * SAMPLE_RATE), dtype=np.float32)
                audio = np.concatenate([silence, audio, silence])
            if job.snr_db is not None:
                audio = _telephone(audio, job)
            audio = audio * (job.peak / max(float(np.abs(audio).max()), 1e-6))
            Path(job.path).parent.mkdir(parents=True, exist_ok=True)
            sf.write(job.path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            durations.append(len(audio) / SAMPLE_RATE)
    return durations
