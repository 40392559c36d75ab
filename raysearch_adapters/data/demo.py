"""The embedded two-domain demo corpus, synthesised offline from Debian TTS voices.

* original domain: read sentences from Debian ``fortunes`` (frequent words only), spoken by
  espeak-ng and flite voices with random rate and pitch; clean 16 kHz.
* new domain: AN4-like spelled letters, digit strings and commands, spoken by *other* voices
  (festival, flite slt, espeak-ng accents) through a noisy 8 kHz telephone channel; one voice
  is heard only in test.

``build_demo_corpus`` writes ``DIR/{original,new}/{train,dev,test}.json`` (NeMo JSON-lines),
audio under ``DIR/<domain>/audio/``, ``DIR/DATASHEET.md`` and finally ``DIR/.complete``. It
builds into a hidden folder beside DIR and renames it, so DIR is never half-written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from raysearch_adapters.data.demo_synth import DemoDataError, Job, Voice, check_tools, synthesise
from raysearch_adapters.data.demo_text import (FORTUNE_CATEGORIES, FORTUNE_DIR, an4_like_texts,
                                               fortune_sentences, frequent_word_sentences, speakable,
                                               split_held_out)
from raysearch_adapters.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# Bump when the generator changes what it writes: a corpus of another format is rebuilt.
FORMAT_VERSION = 1
COMPLETE_MARKER = ".complete"
DOMAINS = ("original", "new")
SPLITS = ("train", "dev", "test")
_CHUNK = 16  # utterances per worker task (festival starts once per chunk)

_ESPEAK, _FLITE, _FESTIVAL = "espeak-ng", "flite", "festival"
# The original domain's family of voices: espeak-ng US/GB accents with variants m1, m3, m7, f1-f3
# and flite's 16 kHz voices (flite "kal" is 8 kHz, which would blur the channel difference).
ORIGINAL_VOICES = tuple(Voice("espeak", v, _ESPEAK) for v in (
    "en-us", "en-us+m3", "en-us+f2", "en-us+f3", "en-gb", "en-gb+m7", "en-gb-x-rp", "en-gb-x-rp+f1")) + tuple(
    Voice("flite", v, _FLITE) for v in ("kal16", "awb", "rms"))
# New-domain voices: engines, speakers, accents and variants never heard in the original domain.
NEW_VOICES = (Voice("flite", "slt", _FLITE), Voice("festival", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
              Voice("festival", "ked_diphone", "festvox-kdlpc16k"), Voice("espeak", "en-029+m2", _ESPEAK),
              Voice("espeak", "en-gb-scotland+f5", _ESPEAK))
NEW_TEST_ONLY_VOICES = (Voice("espeak", "en-us-nyc+f4", _ESPEAK),)  # held out of train and dev
ALL_VOICES = ORIGINAL_VOICES + NEW_VOICES + NEW_TEST_ONLY_VOICES


@dataclass(frozen=True)
class CorpusSize:
    """How much text each split gets."""

    top_words: int  # original domain: sentences use only the this-many most frequent words
    max_words: int  # original domain: longest sentence (words)
    original_train: int  # sentences (0 = every sentence not held out)
    original_dev: int  # sentences, one voice each
    original_test: int
    voices_per_sentence: int  # original train: each sentence spoken by this many voices
    new_train: int  # utterances (distinct texts)
    new_dev: int
    new_test: int


# Default: ~2,600 train sentences x 3 voices (~6 h), dev/test ~10 min each; new ~25/7/7 min.
DEFAULT_SIZE = CorpusSize(top_words=2000, max_words=16, original_train=0, original_dev=200, original_test=200,
                          voices_per_sentence=3, new_train=700, new_dev=180, new_test=180)
SMALL_SIZE = CorpusSize(top_words=2000, max_words=8, original_train=12, original_dev=12, original_test=12,
                        voices_per_sentence=2, new_train=24, new_dev=12, new_test=12)


@dataclass(frozen=True)
class Planned:
    """A manifest line to be: its job and the text it transcribes."""

    job: Job
    uid: str
    text: str
    extra: dict


def _jitter(rng: random.Random, path: Path, say: str, voice: Voice, snr_db: float | None = None,
            pad: float = 0.0) -> Job:
    return Job(path=str(path), say=say, voice=voice, tempo=rng.uniform(0.85, 1.15), pitch=rng.uniform(-1, 1),
               peak=rng.uniform(0.3, 0.9), snr_db=snr_db, pad=pad, noise_seed=rng.randrange(2 ** 32))


def _cycle(voices: Sequence[Voice], n: int, rng: random.Random) -> list[Voice]:
    """``n`` voices, each used equally often, in random order."""
    out = [voices[i % len(voices)] for i in range(n)]
    rng.shuffle(out)
    return out


def _plan_original(root: Path, size: CorpusSize, rng: random.Random) -> tuple[dict, dict]:
    every = fortune_sentences()
    short = [s for s in every if len(s.text.split()) <= size.max_words]
    pool = frequent_word_sentences(short, size.top_words)
    train, dev, test = split_held_out(pool, size.original_dev, size.original_test, rng)
    if size.original_train:
        train = train[:size.original_train]
    stats = {"fortune_sentences": len(every), "frequent_word_sentences": len(pool)}
    plan: dict[str, list[Planned]] = {}
    for split, sentences in (("train", train), ("dev", dev), ("test", test)):
        if split == "train":
            voices = [v for _ in sentences for v in rng.sample(ORIGINAL_VOICES, size.voices_per_sentence)]
            texts = [s for s in sentences for _ in range(size.voices_per_sentence)]
        else:
            voices, texts = _cycle(ORIGINAL_VOICES, len(sentences), rng), list(sentences)
        plan[split] = []
        for i, (s, v) in enumerate(zip(texts, voices)):
            uid = f"original-{split}-{i:05d}"
            job = _jitter(rng, root / "original" / "audio" / split / f"{uid}.flac", s.text, v)
            plan[split].append(Planned(job, uid, s.text, {"voice": v.name, "source": f"fortunes/{s.source}"}))
    return plan, stats


def _plan_new(root: Path, size: CorpusSize, rng: random.Random) -> dict:
    texts = an4_like_texts(size.new_train + size.new_dev + size.new_test, rng)
    bounds = {"train": (0, size.new_train), "dev": (size.new_train, size.new_train + size.new_dev),
              "test": (size.new_train + size.new_dev, len(texts))}
    plan: dict[str, list[Planned]] = {}
    for split, (lo, hi) in bounds.items():
        pool = NEW_VOICES + (NEW_TEST_ONLY_VOICES if split == "test" else ())
        plan[split] = []
        for i, ((kind, text), v) in enumerate(zip(texts[lo:hi], _cycle(pool, hi - lo, rng))):
            uid = f"new-{split}-{i:05d}"
            snr = round(rng.uniform(10, 25), 1)
            job = _jitter(rng, root / "new" / "audio" / split / f"{uid}.flac", speakable(text), v,
                          snr_db=snr, pad=rng.uniform(0.1, 0.4))
            plan[split].append(Planned(job, uid, text, {"voice": v.name, "kind": kind, "snr_db": snr}))
    return plan


def _synthesise_all(planned: list[Planned], jobs: int) -> dict[str, float]:
    """Durations by uid; chunks of one voice run in a process pool with a progress bar."""
    by_voice: dict[str, list[Planned]] = {}
    for p in planned:
        by_voice.setdefault(p.job.voice.name, []).append(p)
    chunks = [ps[i:i + _CHUNK] for ps in by_voice.values() for i in range(0, len(ps), _CHUNK)]
    durations: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(planned), desc="synthesising demo corpus", unit="utt") as bar:
        futures = {pool.submit(synthesise, [p.job for p in c]): c for c in chunks}
        for fut in as_completed(futures):
            for p, d in zip(futures[fut], fut.result()):
                durations[p.uid] = d
            bar.update(len(futures[fut]))
    return durations


def _split_stats(utts: list[Utterance]) -> dict:
    words = [w for u in utts for w in u.text.split()]
    return {"utterances": len(utts), "hours": sum(u.duration for u in utts) / 3600, "words": len(words),
            "vocabulary": len(set(words)), "voices": Counter(u.speaker for u in utts)}


_LICENCES = """\
| source | Debian package | licence |
| --- | --- | --- |
| text of the original domain | fortunes | BSD (fortune-mod; see /usr/share/doc/fortunes/copyright) |
| espeak-ng voices | espeak-ng | GPL-3+ |
| flite voices (kal16, awb, rms, slt) | flite | BSD-style CMU licence (free use and redistribution) |
| festival | festival | X11-style (University of Edinburgh) |
| festival ked_diphone | festvox-kdlpc16k | free use and redistribution (CMU/OGI) |
| festival cmu_us_slt_arctic_hts | festvox-us-slt-hts | BSD-3-clause / CMU ARCTIC licence |
| channel simulation | sox | GPL-2+ / LGPL-2.1+ |

The synthesised audio carries no restriction beyond these; check the copyright files under
/usr/share/doc/<package>/ before redistributing."""


def _datasheet(manifests: dict, stats: dict, small: bool, seed: int, seconds: float) -> str:
    command = "raysearch-adapters demo-data" + (" --small" if small else "") + f" --seed {seed}"
    lines = ["# Demo corpus datasheet", "",
             f"Built by `{command}` (format {FORMAT_VERSION}) in {seconds:.0f} s. Deterministic per seed.", "",
             "## Sizes", "",
             "| domain | split | utterances | hours | words | vocabulary | voices |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (domain, split), utts in manifests.items():
        s = _split_stats(utts)
        voices = ", ".join(f"{v} ({n})" for v, n in sorted(s["voices"].items()))
        lines.append(f"| {domain} | {split} | {s['utterances']} | {s['hours']:.2f} | {s['words']} | "
                     f"{s['vocabulary']} | {voices} |")
    lines += ["", "## Text", "",
              f"* original: sentences of {FORTUNE_DIR} (categories {', '.join(FORTUNE_CATEGORIES)}), split at "
              f"sentence ends, normalised (lower case, numbers as words), deduplicated: "
              f"{stats['fortune_sentences']} sentences. Kept: those of at most {stats['max_words']} words "
              f"whose words are all among the {stats['top_words']} most frequent: "
              f"{stats['frequent_word_sentences']} sentences. Dev and test sentences are disjoint from train "
              f"and each other, and each of their words occurs at least twice in train. Each train sentence "
              f"is spoken by {stats['voices_per_sentence']} different voices, dev/test sentences by one.",
              "* new: AN4-like utterances generated from the seed: spelled letters (text `r u b o u t`), "
              "digit strings as words, commands (erase, rubout, enter, repeat, go, stop, yes, no, help, ...) "
              "alone or with digits or letters. Every text occurs once in the whole domain.", "",
              "## Audio", "",
              "* 16 kHz mono FLAC. Per utterance a random speaking rate (x0.85-1.15), pitch and level.",
              "* original: clean.",
              "* new: a telephone channel: white or pink noise at 10-25 dB SNR, 300-3400 Hz band-pass, "
              "resampled to 8 kHz and back to 16 kHz. Voice "
              f"{', '.join(v.name for v in NEW_TEST_ONLY_VOICES)} is heard only in test.", "",
              "## Licences", "", _LICENCES, ""]
    return "\n".join(lines)


def _params(small: bool, seed: int) -> dict:
    return {"format": FORMAT_VERSION, "small": small, "seed": seed}


def read_complete_marker(out_dir: os.PathLike | str) -> dict | None:
    """The parameters a complete corpus in ``out_dir`` was built with, or None if it is not complete."""
    marker = Path(out_dir) / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_replaceable(out: Path) -> None:
    """Refuse to delete a folder that is not a demo corpus (a typo in --out must not cost data)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DemoDataError(f"--out {out}: exists and is not a folder; expected a folder for the demo corpus")
    ours = set(DOMAINS) | {"DATASHEET.md", COMPLETE_MARKER}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:
        raise DemoDataError(f"--out {out}: not a demo corpus (it holds {', '.join(foreign[:5])}); "
                            f"choose an empty or new folder, or remove it")


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    # Several processes (Ray workers, two shells) may ask for the corpus at once: one builds.
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_demo_corpus(out_dir: os.PathLike | str, small: bool = False, seed: int = 0, jobs: int = 0,
                      force: bool = False) -> Path:
    """Build the two-domain demo corpus in ``out_dir`` (reused if complete with the same parameters)."""
    out = Path(out_dir).expanduser().absolute()
    params = _params(small, seed)
    with _build_lock(out):
        if not force and read_complete_marker(out) == params:
            log.info("demo corpus %s is complete; reusing it (--force rebuilds)", out)
            return out
        check_tools(ALL_VOICES)
        _check_replaceable(out)
        start = time.time()
        work = out.parent / f".{out.name}.partial"
        shutil.rmtree(work, ignore_errors=True)  # left by an interrupted build
        size = SMALL_SIZE if small else DEFAULT_SIZE
        rng = random.Random(seed)
        original, stats = _plan_original(work, size, rng)
        new = _plan_new(work, size, rng)
        stats.update(top_words=size.top_words, max_words=size.max_words,
                     voices_per_sentence=size.voices_per_sentence)
        plans = {("original", s): original[s] for s in SPLITS} | {("new", s): new[s] for s in SPLITS}
        durations = _synthesise_all([p for ps in plans.values() for p in ps], jobs or os.cpu_count() or 1)
        manifests = {}
        for (domain, split), planned in plans.items():
            utts = [Utterance(id=p.uid, audio_filepath=p.job.path, duration=round(durations[p.uid], 4),
                              text=p.text, speaker=p.job.voice.name, extra=p.extra) for p in planned]
            write_manifest(work / domain / f"{split}.json", utts)
            manifests[(domain, split)] = utts
        seconds = time.time() - start
        # Plain writes: the whole work folder becomes DIR by one rename, the marker written last.
        (work / "DATASHEET.md").write_text(_datasheet(manifests, stats, small, seed, seconds), encoding="utf-8")
        (work / COMPLETE_MARKER).write_text(json.dumps({"params": params, "build_seconds": round(seconds, 1)}))
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old)
        else:
            os.replace(work, out)
    log.info("demo corpus built in %s (%.0f s)", out, seconds)
    return out


def ensure_demo_corpus(out_dir: os.PathLike | str, jobs: int = 0) -> Path:
    """The demo corpus in ``out_dir``: reused if complete (whatever its seed or size), else built with defaults."""
    out = Path(out_dir).expanduser().absolute()
    params = read_complete_marker(out)
    if params is not None and params.get("format") == FORMAT_VERSION:
        return out
    return build_demo_corpus(out, jobs=jobs)


def corpus_summary(out_dir: os.PathLike | str) -> str:
    """The sizes table of a built corpus's datasheet."""
    text = (Path(out_dir) / "DATASHEET.md").read_text(encoding="utf-8")
    return text.split("## Sizes\n\n", 1)[1].split("\n\n", 1)[0]
