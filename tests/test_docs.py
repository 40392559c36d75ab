"""The documentation stays true to the code and to itself: the generated config reference is current, the
README is a short front door starting with the two commands CI runs, relative links resolve, and no page cites
files outside the repository or project history."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 200
COMMANDS = ["scripts/bootstrap && .venv/bin/raysearch-adapters search",
            "scripts/bootstrap && .venv/bin/python -m pytest"]
FORBIDDEN = ["issue #", "DESIGN.md", "RAY_NOTES", "FINDINGS.md", "previous version"]


def _config_reference():
    """scripts/config_reference.py as a module (scripts/ is no package), documenting this checkout."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _user_docs() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


# --------------------------------------------------------------------------- Markdown helpers


_FENCE = re.compile(r"^(```|~~~)")


def _without_code(text: str) -> str:
    """``text`` with fenced code blocks and inline code spans blanked (their links are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            out.append("")
            continue
        if fenced or line.startswith("    "):
            out.append("")
            continue
        out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _code_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _without_code_keep_headings(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _without_code_keep_headings(text: str) -> list[str]:
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[str]:
    """The targets of ``path``'s Markdown links and images that are not URLs."""
    text = _without_code(path.read_text(encoding="utf-8"))
    targets = _LINK.findall(text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, flags=re.M)  # reference definitions
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def broken_links(path: Path) -> list[str]:
    """One message per relative link of ``path`` whose file, or ``#anchor`` heading in a Markdown file, is missing."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: {target}: no file {file_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: {target}: no heading #{anchor} in {dest}")
    return problems


# --------------------------------------------------------------------------- the tests


def test_config_reference_is_current():
    """docs/config.md is exactly what scripts/config_reference.py generates from the dataclasses' comments."""
    generated, _ = _config_reference().generate()
    current = (DOCS / "config.md").read_text(encoding="utf-8")
    assert generated == current, ("docs/config.md is out of date with the config dataclasses' field comments; "
                                  "regenerate it: python scripts/config_reference.py > docs/config.md")


def _config_keys(node, prefix=""):
    """Every dotted key of a config dataclass instance; search-space entries as one key each."""
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(value) and not prefix.endswith("space."):
            keys += _config_keys(value, f"{prefix}{f.name}.")
    return keys


def test_config_reference_reads_field_comments():
    """The reference is built from the comments (so a changed comment changes it) and lists every config key."""
    ref = _config_reference()
    from raysearch_adapters import config

    text, _ = ref.generate()
    kappa = ref.field_comment(config.SearchConfig, "kappa")
    assert kappa == "allowed degradation of original-domain dev WER" and kappa in text
    # the comment lines above a field and its trailing comment are both read
    assert ref.field_comment(config.ModelConfig, "checkpoint").startswith("conformer_ctc: 'demo' (shipped) or a")
    assert ref.field_comment(config.ModelConfig, "name") == ("conformer_ctc | wav2vec2 | hf_ctc | whisper | nemo "
                                                             "(raysearch_adapters.backbones)")
    # a class built from a table gives its descriptions in __field_docs__ (the search space)
    assert ref.field_comment(config.SpaceConfig, "lr").startswith("peak learning rate (AdamW); unset: the value of train.lr")
    for key in _config_keys(config.Config()):
        if "." in key:
            assert f"| `{key}` |" in text, f"{key} is missing from the reference"


def test_every_config_field_has_a_comment():
    """What the reference documents: a field without a comment would show there without a description."""
    _, no_comment = _config_reference().generate()
    assert no_comment == [], f"config fields without a comment: {no_comment}"


def test_config_reference_check_mode(tmp_path, capsys):
    ref = _config_reference()
    good = tmp_path / "config.md"
    good.write_text(ref.generate()[0], encoding="utf-8")
    assert ref.main(["--check", str(good)]) == 0
    good.write_text(ref.generate()[0] + "a hand edit\n", encoding="utf-8")
    assert ref.main(["--check", str(good)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_readme_starts_with_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    first_fence = next(i for i, line in enumerate(lines) if _FENCE.match(line.strip()))
    assert all(not line.strip() or line.startswith("#") for line in lines[:first_fence]), \
        "README.md: only the title may come before the two commands"
    block = _code_blocks(text)[0]
    commands = [line.split("  #")[0].strip() for line in block if line.strip()]
    assert commands == COMMANDS, f"README.md's first code block: {commands}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1].strip() == COMMANDS[1], f".ci/run's last line: {ci[-1]!r}"


def test_relative_links_resolve():
    problems = [p for path in _user_docs() for p in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_sees_a_broken_link(tmp_path):
    """The checker itself: a missing file and a missing heading are reported, links in code are not links."""
    page = tmp_path / "other.md"
    page.write_text("# Other page\n\n## Stopping, and resuming\n", encoding="utf-8")
    fake = tmp_path / "page.md"
    fake.write_text("# Title\n\n[a](other.md) [b](missing.md) [c](#title) [d](#nowhere) [e](other.md#no-such)\n"
                    "[f](other.md#stopping-and-resuming) `[g](ignored.md)`\n\n```\n[h](ignored.md)\n```\n",
                    encoding="utf-8")
    assert "ignored.md" not in relative_links(fake)
    reported = [p.split(": ")[1] for p in broken_links(fake)]
    assert reported == ["missing.md", "#nowhere", "other.md#no-such"]


def test_github_slugs():
    assert github_slug("Protecting the original domain") == "protecting-the-original-domain"
    assert github_slug("What a trial costs, and how the search keeps it small") == \
        "what-a-trial-costs-and-how-the-search-keeps-it-small"
    assert github_slug("search.space entries (ParamSpec)") == "searchspace-entries-paramspec"
    assert github_slug("Demo corpus (`raysearch-adapters demo-data`)") == "demo-corpus-raysearch-adapters-demo-data"


@pytest.mark.parametrize("word", FORBIDDEN)
def test_no_history_or_missing_files_cited(word):
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in _user_docs()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if word.lower() in line.lower()]
    assert not hits, f"{word!r} in user docs: {', '.join(hits)}"
