"""The packages form a DAG, and the pure core imports no broker, database, web or model runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("inference_worker", "api_shim", "tasks")
IO_LIBRARIES = ("sqlalchemy", "redis", "celery", "kombu", "amqp", "flask", "onnxruntime", "mlflow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The unit a module belongs to: a sub-package of a top-level package, or the top-level
    package itself for its own modules (``inference_worker.settings`` -> ``inference_worker``)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[0] / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return parts[0]


def imports_of(path: Path, known: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """Every module ``path`` imports, at the top or inside functions (``from package import
    module`` counts as importing that module of ``known``, not the package's ``__init__``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(submodules & known or {node.module})
    return found


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def graph(key) -> dict[str, set[str]]:
    modules = project_modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path, set(modules)):
            if target in modules and key(target) != key(name):
                edges[key(name)].add(key(target))
    return edges


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("key", [lambda m: m, unit_of], ids=["between-modules", "between-packages"])
def test_imports_form_no_circle(key):
    assert cycle_in(graph(key)) is None


def test_the_core_imports_no_io_library():
    core = [p for name, p in project_modules().items() if name.startswith("inference_worker.core")]
    assert core
    for path in core:
        bad = {m for m in imports_of(path) if m.split(".")[0] in IO_LIBRARIES}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_shim_never_imports_the_job_runner_and_nothing_imports_the_cli():
    edges = graph(lambda m: m)
    shim = {
        target
        for name, targets in edges.items()
        if name.startswith("api_shim")
        for target in targets
    }
    assert "inference_worker.serving.jobs" not in shim
    assert "inference_worker.serving.worker" not in shim
    importers_of_cli = {
        name
        for name, targets in edges.items()
        if not name.startswith("inference_worker.cli")
        and any(t.startswith("inference_worker.cli") for t in targets)
    }
    assert not importers_of_cli


def test_the_shim_and_the_command_line_load_neither_the_tdoa_search_nor_the_model_runtime():
    """Importing the shim's app or the command line loads neither the TDoA search and its
    skywave path (scipy's statistics, optimizers and image filters) nor onnxruntime: with the
    search, importing the app took 1.98 s and 170 MB (1.26 s and 137 MB without), and
    ``heimdall-inference status ID`` 1.41 s and 151 MB (0.66 s and 75 MB). A serving shim loads
    scipy.signal when it is built, for its submission checks' filters."""
    heavy = ["scipy.stats", "scipy.optimize", "scipy.ndimage", "onnxruntime"]
    code = (
        "import sys, api_shim.app, inference_worker.cli.main; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cycle_finder_finds_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": {"c"}}) is None


def test_the_cli_entry_point_does_not_load_prometheus_client():
    """A worker must point prometheus_client at its multiprocess directory before the library
    is first imported; a command module that imports the shim at the top would load it first,
    and the worker's pool processes would then count jobs in memory that no scrape sees."""
    code = "import sys, inference_worker.cli.main; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("modules", "loaded"),
    [
        # ~0.5 s of scipy.signal (and scipy.stats behind it) that neither needs: the shim
        # processes, the producer client and every command line start without it
        (("api_shim.app", "tasks.producer", "api_shim.client", "inference_worker.cli.main"), False),
        # the worker's main process loads it before the pool forks: no first job waits for it
        (("inference_worker.serving.worker",), True),
    ],
)
def test_the_feature_maths_loads_scipy_signal_only_where_features_are_computed(modules, loaded):
    code = f"import sys, {', '.join(modules)}; sys.exit('scipy.signal' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == int(loaded)


def test_a_shim_process_loads_scipy_signal_when_built_not_on_a_first_fast_capture():
    """A shim process's first submission at a rate the features decimate took ~1 s: its checks
    design the decimation filter, and scipy.signal loaded in that request."""
    code = (
        "import sys; from api_shim.app import create_app; create_app(); "
        "sys.exit('scipy.signal' not in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
