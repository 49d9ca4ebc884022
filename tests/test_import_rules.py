"""The allowed import directions (shared/DESIGN.md section 2), read from the source with ``ast``.

The library (``avat3r_jax``) owns its configuration schema and shape facts and never imports
``configs``, ``data_pipelines`` or ``launch``; ``data_pipelines`` uses ``avat3r_jax.geometry`` and the
JAX-free ``avat3r_jax.spec`` only; ``configs`` build on ``avat3r_jax.config``; ``avat3r_jax.spec`` and the PyTorch package run without
JAX. Imports inside functions count too (a lazy import is still a dependency); ``if TYPE_CHECKING:``
blocks do not.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("avat3r_jax", "data_pipelines", "configs", "launch")
JAX_STACK = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "ml_collections")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def project_files() -> list[pathlib.Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


def is_under(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations(files: list[pathlib.Path], allowed) -> list[str]:
    """``file -> module`` for every import of ``files`` that ``allowed(importer, imported)`` refuses."""
    bad = []
    for path in files:
        importer = module_name(path)
        bad += [f"{importer} -> {name}" for name in sorted(imported_modules(path)) if not allowed(importer, name)]
    return bad


def files_of(*prefixes: str) -> list[pathlib.Path]:
    return [path for path in project_files() if is_under(module_name(path), *prefixes)]


def test_the_library_never_imports_configs_data_pipelines_or_launch():
    assert violations(files_of("avat3r_jax"), lambda _, name: not is_under(name, "configs", "data_pipelines", "launch")) == []


def test_data_pipelines_use_only_geometry_and_the_shared_spec_of_the_library():
    def allowed(_, name: str) -> bool:
        if is_under(name, "configs", "launch"):
            return False
        return not is_under(name, "avat3r_jax") or name == "avat3r_jax" or is_under(name, "avat3r_jax.geometry", "avat3r_jax.spec")

    assert violations(files_of("data_pipelines"), allowed) == []


def test_configs_build_on_the_library_schema_only():
    allowed = lambda _, name: not is_under(name, *PACKAGES) or is_under(name, "configs", "avat3r_jax.config")
    assert violations(files_of("configs"), allowed) == []


@pytest.mark.parametrize("prefix", ["avat3r_jax.spec", "avat3r_jax.torch"])
def test_shared_spec_and_pytorch_package_run_without_jax(prefix):
    def allowed(_, name: str) -> bool:
        if is_under(name, *JAX_STACK):
            return False
        return not is_under(name, "avat3r_jax") or name == "avat3r_jax" or is_under(name, "avat3r_jax.spec", "avat3r_jax.torch")

    assert violations(files_of(prefix), allowed) == []


def test_no_import_cycles_between_project_modules():
    names = {module_name(path) for path in project_files()}
    graph = {module_name(path): {name for name in imported_modules(path) if name in names} for path in project_files()}
    for module, deps in graph.items():  # ``from package import module`` names the package: not an edge
        graph[module] = {dep for dep in deps if dep != module and not module.startswith(dep + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_the_rules_see_lazy_imports_and_skip_type_checking_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    source = tmp_path / "avat3r_jax" / "x.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import launch.y\n"
        "def f():\n    from data_pipelines import storage\n    from . import spec\n"
    )
    assert imported_modules(source) == {
        "typing",
        "typing.TYPE_CHECKING",
        "data_pipelines",
        "data_pipelines.storage",
        "avat3r_jax",
        "avat3r_jax.spec",
    }
