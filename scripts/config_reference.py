#!/usr/bin/env python3
"""Write the configuration reference (docs/config.md) from the config dataclasses' field comments.

    python scripts/config_reference.py > docs/config.md        # regenerate
    python scripts/config_reference.py --check docs/config.md  # exit 1 if the file is out of date

Walks the root ``Config`` dataclass of ``raysearch_adapters.config`` and its nested dataclasses with
``dataclasses.fields``. For each key: its dotted name, type, default, and its description: the comment
lines directly above the field and the trailing ``# comment`` on its line, read from the source of the
class that declares the field (``inspect.getsourcefile`` / ``inspect.getsourcelines`` per class, so the
dataclasses may live in any module). A nested dataclass gets its own section; a dataclass type used by
several fields of one class (the search space's entries) is shown as a value and described once.

Standard library and the package only.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
GENERATE = "python scripts/config_reference.py > docs/config.md"


# --------------------------------------------------------------------------- reading the source


@dataclasses.dataclass
class _ClassSource:
    file: str
    lines: List[str]  # the class's source lines, dedented
    fields: Dict[str, Tuple[int, int]]  # field name -> (first line, last line), 1-based in `lines`
    comments: Dict[int, str]  # line (1-based in `lines`) -> comment text without '#'


_SOURCES: Dict[type, _ClassSource] = {}


def _class_source(cls: type) -> _ClassSource:
    """The declarations and comments of ``cls``'s body, parsed from its own source file."""
    if cls in _SOURCES:
        return _SOURCES[cls]
    file = inspect.getsourcefile(cls)
    if file is None:
        raise RuntimeError(f"no source file for {cls.__module__}.{cls.__qualname__}")
    raw, _ = inspect.getsourcelines(cls)
    text = textwrap.dedent("".join(raw))
    lines = text.splitlines()
    tree = ast.parse(text)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    fields = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            fields[stmt.target.id] = (stmt.lineno, stmt.end_lineno or stmt.lineno)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    _SOURCES[cls] = _ClassSource(file, lines, fields, comments)
    return _SOURCES[cls]


def _declaring_class(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO whose body declares field ``name``."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}) or name in klass.__dict__.get("__field_docs__", {}):
            return klass
    return cls


def field_comment(cls: type, name: str) -> str:
    """The comment lines directly above field ``name`` of ``cls`` and the trailing comment(s) on its
    declaration, joined into one paragraph ('' when there are none). A class built from a table, not from
    source (the search space, from the hyperparameter table), gives its fields' descriptions in a
    ``__field_docs__`` mapping instead."""
    declaring = _declaring_class(cls, name)
    if "__field_docs__" in declaring.__dict__:
        return declaring.__dict__["__field_docs__"].get(name, "")
    src = _class_source(declaring)
    if name not in src.fields:
        return ""
    first, last = src.fields[name]
    above = []
    line = first - 1
    while line >= 1 and src.lines[line - 1].strip().startswith("#"):
        above.insert(0, src.comments.get(line, ""))
        line -= 1
    trailing = [src.comments[n] for n in range(first, last + 1) if n in src.comments]
    return " ".join(part for part in above + trailing if part)


def class_doc(cls: type) -> str:
    """The class docstring as one Markdown paragraph per docstring paragraph (``x`` becomes `x`)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes for a class without a docstring
        return ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    return "\n\n".join(p.replace("``", "`") for p in paragraphs)


# --------------------------------------------------------------------------- values and types


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    return str(t).replace("typing.", "")


_PLAIN_UNSAFE = set(",[]{}:#&*!|>'\"%@`")


def _flow(value: Any, top: bool = False) -> str:
    """``value`` in YAML flow style, as a config file or override would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        looks_other = value.lower() in ("", "null", "true", "false", "~") or _is_number(value)
        if looks_other or (not top and (set(value) & _PLAIN_UNSAFE or value != value.strip())):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                   if getattr(value, f.name) != _default(f)}
        return _flow(changed)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return repr(value)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- Markdown


def _cell(text: str, code: bool = False) -> str:
    """Table cell text: pipes escaped; outside code spans, '<' escaped too (no stray HTML)."""
    if code:
        text = text.replace("`", "'")
        return "`" + text.replace("|", "\\|") + "`" if text else ""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("<", "\\<")
    return "`".join(parts).replace("|", "\\|")


def _is_section(cls: type, f: dataclasses.Field, value: Any) -> bool:
    """A nested dataclass of its own (a section), not a value type several fields share."""
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return False
    same = [g for g in dataclasses.fields(cls) if type(_default(g)) is type(value)]
    return len(same) == 1


def _entry_types(cls: type) -> List[type]:
    """Dataclass types used as the values of several fields of ``cls``."""
    seen: List[type] = []
    for f in dataclasses.fields(cls):
        value = _default(f)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and not _is_section(cls, f, value):
            if type(value) not in seen:
                seen.append(type(value))
    return seen


def _table(rows: List[Tuple[str, str, str, str]]) -> List[str]:
    out = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, typ, default, desc in rows:
        out.append(f"| {_cell(key, code=True)} | {_cell(typ, code=True)} | {_cell(default, code=True)} | "
                   f"{_cell(desc)} |")
    return out


def _where(cls: type) -> str:
    return f"`{cls.__module__}.{cls.__qualname__}`"


def _section(cls: type, key: str, level: int, out: List[str], contents: List[Tuple[int, str]],
             no_comment: List[str]) -> None:
    contents.append((level, key))
    out += [f"{'#' * level} {key}", ""]
    doc = class_doc(cls)
    if doc:
        out += [doc, ""]
    out += [f"Defined in {_where(cls)}.", ""]
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        value = _default(f)
        dotted = f"{key}.{f.name}"
        if _is_section(cls, f, value):
            nested.append((type(value), dotted))
            rows.append((dotted, _type_name(f.type), "", f"section: see [{dotted}](#{slug(dotted)})"))
            continue
        desc = field_comment(cls, f.name)
        if not desc:
            no_comment.append(dotted)
        rows.append((dotted, _type_name(f.type), _flow(value, top=True), desc))
    out += _table(rows) + [""]
    for entry in _entry_types(cls):
        entry_key = f"{key} entries ({entry.__name__})"
        contents.append((level + 1, entry_key))
        out += [f"{'#' * (level + 1)} {entry_key}", ""]
        doc = class_doc(entry)
        if doc:
            out += [doc, ""]
        out += [f"Defined in {_where(entry)}. Each entry `{key}.NAME` has these fields:", ""]
        entry_rows = []
        for f in dataclasses.fields(entry):
            desc = field_comment(entry, f.name)
            if not desc:
                no_comment.append(f"{key}.NAME.{f.name}")
            entry_rows.append((f"{key}.NAME.{f.name}", _type_name(f.type), _flow(_default(f), top=True), desc))
        out += _table(entry_rows) + [""]
    for sub_cls, sub_key in nested:
        _section(sub_cls, sub_key, level + 1, out, contents, no_comment)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped except '-', '_' and spaces,
    spaces to '-'."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def generate(root_cls: Optional[type] = None) -> Tuple[str, List[str]]:
    """(the Markdown reference, the dotted keys that have no comment)."""
    if root_cls is None:
        from raysearch_adapters import config

        root_cls = config.Config
    out: List[str] = []
    contents: List[Tuple[int, str]] = []
    no_comment: List[str] = []
    for f in dataclasses.fields(root_cls):
        value = _default(f)
        if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            raise TypeError(f"{root_cls.__qualname__}.{f.name}: a top-level key must be a section (a dataclass)")
        _section(type(value), f.name, 2, out, contents, no_comment)
    head = [
        "# Configuration reference",
        "",
        "<!-- Generated from the config dataclasses' field comments by scripts/config_reference.py; do not edit.",
        f"     Regenerate with: {GENERATE}",
        "     tests/test_docs.py fails when this file is out of date. -->",
        "",
        "Every key a YAML config file or a `key=value` override can set, by section, with its type, its "
        "default and what it does. The defaults name no data and no model checkpoint: the embedded demo's "
        "config, conf/demo.yaml, adds those and its start point, and a file that begins with `extends: demo` "
        "(or `extends: PATH`, relative to the file) takes every key it does not give from that file. "
        "`raysearch-adapters config show "
        "[CONFIG] [key=value ...]` prints a resolved config; [search.md](search.md) explains the config "
        "syntax and the search-space entries, [budget.md](budget.md) the budget. Defaults are shown in YAML "
        "flow style; `${...}` is an OmegaConf interpolation (another key, or an environment variable "
        "with a fallback).",
        "",
    ]
    toc = [f"{'  ' * (level - 2)}* [{key}](#{slug(key)})" for level, key in contents]
    text = "\n".join(head + toc + [""] + out).rstrip("\n") + "\n"
    return text, no_comment


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="FILE", help="compare with FILE instead of printing; exit 1 if it differs")
    parser.add_argument("--missing", action="store_true", help="list the keys without a comment on stderr")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # document this checkout's package
    text, no_comment = generate()
    if args.missing:
        for key in no_comment:
            print(f"no comment: {key}", file=sys.stderr)
    if not args.check:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if current == text:
        print(f"{path} is up to date with the config dataclasses")
        return 0
    what = "does not exist" if current is None else "is out of date with the config dataclasses' field comments"
    print(f"{path} {what}; regenerate it with: {GENERATE}", file=sys.stderr)
    if current is not None:
        diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(path), "generated",
                                         lineterm="", n=1))
        print("\n".join(diff[:40] + ([f"... ({len(diff) - 40} more diff lines)"] if len(diff) > 40 else [])),
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
