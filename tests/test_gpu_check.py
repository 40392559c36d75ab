"""bench/gpu_check.sh, the one script a lent GPU machine runs, in its dry run on the CPU: every step runs (the
gpu-marked tests are collected and skip; the searches run on the CPU with a few steps) and the results file has a
line per step, so that the script does not rot between the rare days a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_step_in_its_dry_run(small_demo, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RAYSEARCH_ADAPTERS_SMALL_DEMO": str(small_demo)}
    env.pop("FIGURES", None)
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert done.returncode == 0, done.stderr + report
    rows = {m[0]: m[1:] for m in re.findall(r"^\| (\w+) \| ([^|]+) \| (\d+) \| (.*) \|$", report, re.M)}
    assert list(rows) == ["env", "tests", "demo", "rate", "whisper"], report
    assert all(rows[s][0] == "ok" for s in ("env", "tests", "demo", "rate")), report
    assert "no GPU" in rows["env"][2]
    assert re.fullmatch(r"\d+ skipped.*", rows["tests"][2].strip()), report  # collected, skipped without CUDA
    assert re.search(r"demo: 4 trials x 20 steps on cpu: \d+ s \(setup \d+, trials \d+, test \d+\); winner test "
                     r"WER new \d+\.\d\d", rows["demo"][2]), report
    assert re.search(r"rate: 1 trial\(s\) per GPU: 2 trials x 10 steps in \d+ s = \d+ trials/hour on cpu",
                     rows["rate"][2]), report
    assert rows["whisper"][0] == "skipped" and "no Whisper checkpoint carried" in rows["whisper"][2]
    assert not (ROOT / "bench" / "gpu_check.out").exists()
