#!/usr/bin/env bash
# The whole GPU check in one run (<= 8 min on the GPU machine), or its dry run on a CPU.
#
# Here, before a GPU machine is lent (the device tool carries .gpu/ with the working tree, 64 MiB in all):
#   ../shared/tools/gpu-bundle .gpu anyascii pytest pytest-timeout   # what the GPU machine's python lacks
#   bash bench/gpu_check.sh --prepare        # .gpu/small_demo: the small demo corpus (the GPU machine has no TTS)
# On the GPU machine (device tool: run, carry [".gpu"]), from the repository root:
#   bash bench/gpu_check.sh                  # figures in $OUT/gpu_check.md (bench/gpu_check.out/ without $OUT)
# On a CPU (tests/test_gpu_check.py runs it, so that it does not rot):
#   bash bench/gpu_check.sh --dry-run        # every step on the CPU at its smallest size
#
# Steps, each with its own time limit; one that fails is recorded (with the tail of its log) and the next runs:
#   env       python, torch, the GPU
#   tests     the gpu-marked tests (bf16 against the CPU's fp32, a step's loss and gradients on CUDA, 4 trials on
#             one GPU at once, the memory cap)
#   demo      a search on the small demo corpus with resources.use_gpu=true
#   rate      trials/hour with 1 and with 4 trials per GPU (the same 8 fixed-length trials)
#   whisper   a Whisper search, where a Whisper checkpoint was carried (.gpu/whisper) and transformers is there
set -uo pipefail

mode=run
case "${1:-}" in
  --dry-run) mode=dry ;;
  --prepare) mode=prepare ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run | --prepare]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python

if [ "$mode" = prepare ]; then
  mkdir -p .gpu
  grep -qxF ".gpu/" .git/info/exclude 2>/dev/null || echo ".gpu/" >> .git/info/exclude
  # The small demo corpus in Ogg Opus at its lowest bit rate (~0.25 MB instead of 3.5 MB of FLAC): the carry limit
  # (64 MiB) holds the bundle (~58 MiB) and the tracked tree (~6 MB) with well under a megabyte to spare. Lossy,
  # which the GPU check does not mind: it compares the GPU with the CPU on the same audio.
  "$py" - <<'PY'
import json, shutil, tempfile
from pathlib import Path
import soundfile as sf
from raysearch_adapters.data.demo import COMPLETE_MARKER, build_demo_corpus
with tempfile.TemporaryDirectory() as d:
    full = build_demo_corpus(Path(d) / "small_demo", small=True, seed=0)
    out = Path(".gpu/small_demo.tmp")
    shutil.rmtree(out, ignore_errors=True)
    for manifest in sorted(full.glob("*/*.json")):
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        folder = out / manifest.parent.relative_to(full)
        for row in rows:  # audio paths are relative to the manifest's folder
            audio, rate = sf.read(manifest.parent / row["audio_filepath"])
            row["audio_filepath"] = str(Path(row["audio_filepath"]).with_suffix(".ogg"))
            (folder / row["audio_filepath"]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(folder / row["audio_filepath"], audio, rate, format="OGG", subtype="OPUS", compression_level=1.0)
        (folder / manifest.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The marker last: the tests' small_demo fixture reuses a folder marked complete (the GPU machine has no TTS).
    for name in ("DATASHEET.md", COMPLETE_MARKER):
        shutil.copy2(full / name, out / name)
    shutil.rmtree(".gpu/small_demo", ignore_errors=True)
    out.rename(".gpu/small_demo")
PY
  du -sh .gpu/* 2>/dev/null
  exit 0
fi

out=${OUT:-$root/bench/gpu_check.out}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
report=$out/gpu_check.md
logs=$out/logs
mkdir -p "$logs"
start=$(date +%s)

if [ -f .gpu/bundle.tar.xz ]; then  # the GPU machine's python lacks ray, optuna, jiwer, omegaconf, soundfile
  mkdir -p "$work/site" && tar xJf .gpu/bundle.tar.xz -C "$work/site"
  export PATH=$work/site/bin:$PATH
  export PYTHONPATH=$root:$work/site${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
fi
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
unset RAY_ADDRESS
if [ -d .gpu/small_demo ]; then
  export RAYSEARCH_ADAPTERS_SMALL_DEMO=$root/.gpu/small_demo  # the tests' small demo corpus: reused, not synthesised
fi

{
  echo "# GPU check ($mode), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | status | seconds | figures |"
  echo "| --- | --- | --- | --- |"
} > "$report"

# step NAME LIMIT_SECONDS COMMAND...: runs it with its log in $logs/NAME.log; its figures are the lines of
# $work/NAME.figures it wrote (FIGURES names that file).
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc figures
  export FIGURES=$work/$name.figures
  : > "$FIGURES"
  timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  figures=$(paste -sd ';' "$FIGURES" | sed 's/|/\\|/g')
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="timed out (${limit} s)"; elif [ $rc -ne 0 ]; then status="failed (exit $rc)"; fi
  echo "| $name | $status | $((SECONDS - t0)) | ${figures:-} |" >> "$report"
  if [ "$status" != ok ]; then
    { echo; echo "<details><summary>$name: the last lines of its log</summary>"; echo; echo '```';
      tail -n 25 "$logs/$name.log"; echo '```'; echo "</details>"; echo; } >> "$work/failures.md"
  fi
  echo "$name: $status ($((SECONDS - t0)) s)" >&2
}

# --- env
step env 60 "$py" -c "
import os, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
line = f'python {os.sys.version.split()[0]}, torch {torch.__version__}, {gpu}, {os.cpu_count()} CPUs'
print(line); open(os.environ['FIGURES'], 'a').write(line + '\n')
import importlib
missing = []
for m in ('ray', 'optuna', 'jiwer', 'omegaconf', 'soundfile', 'scipy', 'anyascii', 'sentencepiece', 'pyarrow',
          'pytest', 'pytest_timeout', 'transformers'):
    try:
        importlib.import_module(m)
    except ImportError:
        missing.append(m)
if missing:
    open(os.environ['FIGURES'], 'a').write('missing: ' + ', '.join(missing) + '\\n')
print('missing:', missing)
"

# --- tests: on a CPU they are collected and skip (no CUDA); on the GPU they run
step tests 240 bash -c '"$0" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" --timeout 200 \
  tests/train/test_gpu.py tests/search/test_gpu_search.py; rc=$?
  grep -Eo "[0-9]+ (passed|failed|skipped|errors?)[^=]*" "$1" | tail -1 >> "$FIGURES"; exit $rc' "$py" "$logs/tests.log"

# --- the searches (bench/gpu_searches.py: one per call, its figures appended to $FIGURES)
if [ "$mode" = dry ]; then size=dry; else size=full; fi
step demo 150 "$py" bench/gpu_searches.py demo --size "$size" --out "$work/searches"
step rate 200 "$py" bench/gpu_searches.py rate --size "$size" --out "$work/searches"
if [ -d .gpu/whisper ]; then
  step whisper 150 "$py" bench/gpu_searches.py whisper --size "$size" --out "$work/searches" --checkpoint "$root/.gpu/whisper"
else
  echo "| whisper | skipped | 0 | no Whisper checkpoint carried (.gpu/whisper): tiny.en is 150 MB, over the carry limit with the bundle |" >> "$report"
fi

{ echo; echo "total: $(( $(date +%s) - start )) s"; [ -f "$work/failures.md" ] && cat "$work/failures.md"; } >> "$report"
cat "$report"
