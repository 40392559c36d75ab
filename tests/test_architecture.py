"""The package's shape: its import layers (pyproject's import-linter contracts), no import cycles, and imports
inside functions only where a heavy or optional dependency is deferred for a stated reason."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raysearch_adapters"

# What a module may import inside a function instead of at its top, and why. Anything else is imported at the
# top of the module, where the layers contract and a reader see it.
DEFERRED = {
    "nemo": "the nemo extra (~1.4 GB, ~10 s to import): only a NeMo backbone or export pays for it",
    "omegaconf": "comes with nemo; used only on NeMo models' configs",
    "transformers": "the hf extra (seconds to import): only the Hugging Face backbones pay for it",
    "huggingface_hub": "comes with transformers; only to find a hub id in the local cache",
    "peft": "the hf extra: only export's PEFT folder of a LoRA winner writes and checks it",
    "safetensors": "comes with transformers: only export's PEFT folder writes its weights with it",
    "ctranslate2": "the hf extra: only export's CTranslate2 model of a merged Whisper winner converts and runs it",
    "torchaudio": "its pipelines and models load seconds of code; the manifest checks that read audio must not",
    "torch": "modules that manifest checks, config checks and the dashboard import start without torch",
    "sentencepiece": "only a SentencePiece tokenizer that is trained or read needs it",
    "sqlalchemy": "only to name a study storage URL in the error when it fails to open",
    "optuna": "the dashboard starts in a second; optuna is needed only for parameter importance",
    "ray": "the submit command's checks run before ray (seconds to import) is needed to reach the cluster",
    "datasets": "the hf extra: only a save_to_disk folder or a hub id pays for it (Parquet is read with pyarrow)",
    "lhotse": "the lhotse extra: only lhotse cuts read as a manifest pay for it",
}


def test_the_layers_contract_holds():
    """commands > export | dashboard > search > train > adapters > models > data > results > config > hparams >
    helpers, and
    the dashboard imports neither torch nor ray (pyproject.toml, [tool.importlinter])."""
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("raysearch_adapters")
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, and d -> a
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def _function_level_imports() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found += [(f"{path.relative_to(ROOT)}:{node.lineno}", node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.lineno, node.module or "."))
    return found


def _reason(module: str) -> str | None:
    for prefix, why in DEFERRED.items():
        if module == prefix or module.startswith(prefix + "."):
            return why
    return None


def test_imports_inside_functions_only_defer_a_heavy_or_optional_dependency():
    unexplained = [f"{where}: import {module}" for where, _, module in _function_level_imports()
                   if _reason(module) is None]
    assert unexplained == [], ("import these at the top of the module, or add the package and the reason to "
                               "DEFERRED:\n" + "\n".join(unexplained))


def test_no_module_of_the_package_is_imported_inside_a_function():
    """The two deferred imports of the package's own modules are by name, through the registries: a subcommand's
    handler (commands/main.py) and a backbone's module (models/registry.py, from raysearch_adapters.backbones)."""
    inner = [where for where, _, module in _function_level_imports() if module.startswith("raysearch_adapters")]
    assert inner == []


def test_a_module_over_600_lines_says_why_at_its_top():
    long = [path for path in sorted(PACKAGE.rglob("*.py"))
            if len(path.read_text(encoding="utf-8").splitlines()) > 600
            and "Over 600 lines" not in (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")]
    assert long == [], f"split these, or say why not in their docstring ('Over 600 lines ...'): {long}"
