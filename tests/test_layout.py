"""The package's layout holds: no import circle, imports only go down, MPI stays in its room.

Rooms from the top (what the user calls) to the ground (what everything shares); a module may import its own
room and the rooms below it, never one above (docs/architecture.md):
cli > campaign > scaling > tools > parallel > worker > planning > output > pixels > inputs > the ground floor.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mpi_s2"
ROOMS = ["ground", "inputs", "pixels", "output", "planning", "worker", "parallel", "tools", "scaling", "campaign",
         "cli"]
GROUND = {"mpi_s2", "mpi_s2.windows", "mpi_s2.errors", "mpi_s2.config", "mpi_s2.report", "mpi_s2.text",
          "mpi_s2.faults"}
#: Pure parts: importable and usable without MPI (nor parallel HDF5).
PURE = ["mpi_s2.windows", "mpi_s2.errors", "mpi_s2.config", "mpi_s2.report", "mpi_s2.pixels.radiometry",
        "mpi_s2.inputs.metadata", "mpi_s2.inputs.products", "mpi_s2.output.plan", "mpi_s2.output.overviews",
        "mpi_s2.output.tile_messages", "mpi_s2.output.quicklook", "mpi_s2.output.fingerprint",
        "mpi_s2.planning.plan", "mpi_s2.planning.scheduling", "mpi_s2.planning.stage_plan", "mpi_s2.planning.mistakes",
        "mpi_s2.worker.items",
        "mpi_s2.parallel.progress", "mpi_s2.scaling.model", "mpi_s2.campaign.grid", "mpi_s2.campaign.store",
        "mpi_s2.campaign.reconcile", "mpi_s2.campaign.slurm", "mpi_s2.campaign.planner", "mpi_s2.campaign.commands",
        "mpi_s2.campaign.assemble", "mpi_s2.campaign.task", "mpi_s2.cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module in ("mpi_s2.cli", "mpi_s2.__main__"):
        return "cli"
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    """Every module of the package ``path`` imports, at any depth of the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (the modules along it), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_module_that_imports_it_back(graph):
    found = cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found or [])


def test_imports_only_go_down(graph):
    up = [f"{a} ({room(a)}) imports {b} ({room(b)})" for a, targets in graph.items() for b in targets
          if a != "mpi_s2.__main__" and b != "mpi_s2" and ROOMS.index(room(b)) > ROOMS.index(room(a))]
    assert up == []


def test_mpi_stays_in_its_room():
    outside = [module_name(p) for p in PACKAGE.rglob("*.py")
               if any(m == "mpi4py" or m.startswith("mpi4py.") for m in imports(p))
               and room(module_name(p)) != "parallel"]
    assert outside == []


def test_pure_parts_import_without_mpi():
    """Import the pure modules in a fresh interpreter where mpi4py and h5py cannot be imported."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('mpi4py', 'h5py'):\n"
            "            raise ImportError(f'{name} blocked: a pure module imported it')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"import importlib\nfor m in {PURE!r}:\n    importlib.import_module(m)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
