"""No import cycles among the modules of harness/ and analysis/: the graph of their imports (read with ast;
imports anywhere in a module count, those under `if TYPE_CHECKING:` do not) has no cycle. Importing
`a.b.c` runs `a/__init__` and `a/b/__init__` first, so it counts as importing those packages too; a package
that loads its modules with importlib (the policy registry) imports all of them."""
import ast

import networkx as nx
import pytest

from .conftest import REPO

PACKAGES = ("harness", "analysis")


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(node) -> bool:
    test = node.test
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def imported(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The modules `tree` (module `name`) imports, absolute; a `from x import y` may import module x.y."""
    package = name if is_package else name.rpartition(".")[0]
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> nx.DiGraph:
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        targets = imported(ast.parse(path.read_text()), name, path.name == "__init__.py")
        if path.name == "__init__.py" and "importlib.import_module" in path.read_text():  # a plugin package
            targets |= {m for m in files if m.startswith(name + ".")}  # (harness.decoding.policies) loads them all
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and every package above it
                prefix = ".".join(parts[:i])
                if prefix in files and prefix != name and not name.startswith(prefix + "."):
                    graph.add_edge(name, prefix)
    return graph


def test_the_import_graph_of_harness_and_analysis_has_no_cycle():
    graph = import_graph()
    assert graph.has_edge("harness.decoding.policies.learned", "harness.learn2pd.filter")  # the graph is real
    assert graph.has_edge("harness.learn2pd.traces", "harness.decoding")
    assert graph.has_edge("harness.decoding.policies", "harness.decoding.policies.learned")
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


@pytest.mark.parametrize("edge, cycle", [
    (("harness.learn2pd", "harness.learn2pd.traces"), "the package re-exporting traces"),
    (("analysis.cells", "analysis.collect"), "the cell schema importing the CLI"),
])
def test_the_check_sees_a_cycle_when_one_is_added(edge, cycle):
    graph = import_graph()
    graph.add_edge(*edge)
    assert list(nx.simple_cycles(graph)), cycle
