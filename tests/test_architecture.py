"""The package's import graph has no cycle, counting imports inside functions too.

A cycle hidden behind a lazy import (or a module ``__getattr__``) still means two modules
that cannot be understood, or changed, one without the other. ``from replaytune.x import y``
counts as an edge to ``replaytune.x`` (and to ``replaytune.x.y`` when that is a module);
a package's ``__init__`` re-exporting its own submodules is not a cycle of ideas, so edges
from a package to modules inside it are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import replaytune

SRC = Path(replaytune.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and not (is_pkg and t.startswith(name + ".")):
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_src():
    graph = import_graph()
    assert "replaytune.train.loop" in graph and graph["replaytune.train.loop"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# -- rules that keep the layout honest ------------------------------------------------------
REPO = SRC.parent.parent
LINE_LIMIT = 550
# Modules allowed past the limit, each one idea (the loop; the readers of every input format).
LONG_MODULES = {"replaytune/train/loop.py", "replaytune/data/sources.py"}


def _src_files():
    return sorted(SRC.rglob("*.py"))


def test_only_the_run_plan_builds_a_mixture():
    """``Mixture(`` is constructed in train/plan.py alone: every route to a batch goes through RunPlan."""
    builders = []
    for path in _src_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Mixture":
                builders.append(str(path.relative_to(SRC.parent)))
    assert builders and set(builders) == {"replaytune/train/plan.py"}, builders


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(SRC.parent)): n for p in _src_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > LINE_LIMIT}
    unexpected = {k: v for k, v in long.items() if k not in LONG_MODULES}
    assert not unexpected, f"modules over {LINE_LIMIT} lines (split them, one idea a file): {unexpected}"


# What counts as a reference to one of the project's files: a markdown page, a Python module
# (bare or with its folders) or a file under examples/. Files a user gives (eu.txt, RUN.yaml) or a
# run writes (report.md, replay_search.md) are not the project's, and are named in _ELSEWHERE.
_FILE_REF = re.compile(r"(?<![\w./-])((?:\.\./)*(?:[\w-]+/)*[\w-]+\.(?:md|py)|examples/[\w./-]+\.\w+)(?![\w/])")
_ELSEWHERE = {"report.md", "replay_search.md", "forgetting.md", "README.md", "pydoc_data/topics.py", "model_card.md", "setup.py",
              "sft.py", "train.py", "conftest.py", "my_eval.py"}


def _documents():
    docs = [REPO / "README.md", REPO / "ARCHITECTURE.md", REPO / "BENCHMARKS.md", *(REPO / "docs").glob("*.md")]
    return [p for p in docs if p.is_file()] + _src_files() + sorted((REPO / "examples").glob("*"))


def _exists(ref: str, doc: Path) -> bool:
    roots = [doc.parent, REPO, REPO / "docs", SRC.parent, SRC, REPO / "tests"]
    if any((root / ref).exists() for root in roots):
        return True
    return "/" not in ref and any(p for p in REPO.rglob(ref) if ".venv" not in p.parts and ".git" not in p.parts)


def test_every_referenced_file_is_in_the_repository():
    missing = []
    for doc in _documents():
        text = doc.read_text(encoding="utf-8", errors="replace")
        outside = "../" + "shared"  # a folder beside the repository, never shipped with it
        assert outside not in text, f"{doc}: points outside the repository ({outside})"
        for ref in set(_FILE_REF.findall(text)):
            if ref in _ELSEWHERE or ref.rsplit("/", 1)[-1] in _ELSEWHERE or ref.startswith("_"):
                continue
            if not _exists(ref, doc):
                missing.append(f"{doc.relative_to(REPO)}: {ref}")
    assert not missing, "references to files not in the repository: " + ", ".join(sorted(missing))


def test_the_reference_check_can_fail(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("see NOTES_NOT_HERE.md and train/loop.py")
    refs = set(_FILE_REF.findall(doc.read_text()))
    assert refs == {"NOTES_NOT_HERE.md", "train/loop.py"}
    assert not _exists("NOTES_NOT_HERE.md", doc) and _exists("train/loop.py", doc)


def test_layers_point_down():
    """The study and fine-tuning layers stand on the core and never import each other; the core imports neither.

    ``commands`` and ``cli`` sit above all three (they parse flags and call one layer).
    """
    graph = import_graph()
    layer = {}
    for name in graph:
        if name.startswith("replaytune.study"):
            layer[name] = "study"
        elif name.startswith("replaytune.finetune"):
            layer[name] = "finetune"
        elif name.startswith(("replaytune.commands", "replaytune.cli")):
            layer[name] = "top"
        else:
            layer[name] = "core"
    assert {"study", "finetune", "core", "top"} <= set(layer.values())
    allowed = {"core": {"core"}, "study": {"study", "core"}, "finetune": {"finetune", "core"}, "top": set(layer.values())}
    wrong = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer[b] not in allowed[layer[a]]]
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_only_the_window_module_reads_token_windows():
    """(source, id) -> tokens happens in data/window.py alone (the store defines the split it reads)."""
    readers = set()
    for path in _src_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("sequences", "masks"):
                readers.add(str(path.relative_to(SRC.parent)))
    assert readers == {"replaytune/data/window.py"}, readers
