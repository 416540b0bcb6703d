"""The package's shape: no import cycles, and checks that run before TensorFlow is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, cli_env


def module_imports(package: Path) -> dict[str, set[str]]:
    """Each module of `package` -> the package's modules it imports, anywhere in its code
    (an import inside a function is an edge too: hiding a cycle there is what this finds)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` steps up
                    anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, directly or not."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {tuple(sorted(n for n in reach[node] if node in reach[n]))
              for node in graph if node in reach[node]}
    return sorted(list(group) for group in groups)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")
    assert cycles(module_imports(package)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_the_package_has_no_import_cycles():
    graph = module_imports(REPO / "federated_research")
    assert len(graph) > 40 and "federated_research.compression.method" in graph
    assert cycles(graph) == []


def test_the_compression_library_does_not_import_tff():
    """The codecs serve both directions; only the adapters know TFF's interfaces."""
    for path in (REPO / "federated_research" / "compression").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith(("tensorflow_federated", "federated_research."
                                                      "aggregators", "federated_research."
                                                      "distributors"))], path.name


def test_bad_input_is_refused_before_tensorflow_is_imported():
    """Every node's check runs in the first second: TensorFlow is never imported for it."""
    script = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from federated_research.config import CONF_DIR, register_schemas, validate\n"
        "from federated_research.errors import ConfigError\n"
        "register_schemas()\n"
        "with initialize_config_dir(str(CONF_DIR), version_base='1.3'):\n"
        "    for overrides in (['aggregator=topk', 'aggregator.fraction=abc'],\n"
        "                      ['distributor=rotated_quantize', 'distributor.block_size=3'],\n"
        "                      ['model=char_rnn', 'model.rnn_units=0']):\n"
        "        try:\n"
        "            validate(compose('config', overrides=overrides))\n"
        "        except ConfigError as exc:\n"
        "            print(exc)\n"
        "print('tensorflow' in sys.modules, 'tensorflow_federated' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(None),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("aggregator.fraction=abc: wrong type. Fix: give "
                               "aggregator.fraction a number")
    assert lines[1].startswith("distributor.block_size=3: must be a power of two")
    assert lines[2].startswith("model.rnn_units=0: must be at least 1")
    assert lines[3] == "False False"
