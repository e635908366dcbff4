"""Imports run one way: entry (train) -> loop / evaluation -> model / data -> metrics, types, errors.

Read from the source with `ast` (every import statement, also those under TYPE_CHECKING or inside
functions), so a forbidden edge fails here even when no test happens to execute the line.
"""

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fabric_mvsplat"

# importer (a package or module under fabric_mvsplat) -> modules it must never import
FORBIDDEN = {
    "data": ["model", "loop", "train", "evaluation", "checkpoint", "metrics", "inference", "render", "view"],
    "model": ["data", "loop", "train", "evaluation", "checkpoint", "config", "inference", "render", "view"],
    "evaluation": ["loop", "train", "inference", "render", "view"],
    "inference": ["loop", "train", "render", "view"],
    "metrics": ["model", "data", "loop", "train", "evaluation", "config"],
    "visualization": ["model", "data", "loop", "train", "evaluation"],
    "camera": ["model", "data", "loop", "train", "evaluation", "config"],
    "types": ["model", "data", "loop", "train", "evaluation", "config"],
    "distributed": ["model", "data", "loop", "train", "evaluation", "config"],
    "progress": ["model", "data", "loop", "train", "evaluation", "config"],
    "errors": ["model", "data", "loop", "train", "evaluation", "config"],
    "file_lock": ["model", "data", "loop", "train", "evaluation", "config"],
    "loop": ["train"],
    "debug": ["train", "loop"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything `path` imports from fabric_mvsplat (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x`
    return {name for name in names if name == "fabric_mvsplat" or name.startswith("fabric_mvsplat.")}


def edges() -> list[tuple[str, str]]:
    return [(module_name(path), imported) for path in sorted(PACKAGE_DIR.rglob("*.py"))
            for imported in sorted(imported_modules(path))]


def is_under(module: str, part: str) -> bool:
    prefix = f"fabric_mvsplat.{part}"
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_no_import_against_the_direction(importer):
    wrong = [f"{source} imports {target}" for source, target in edges() if is_under(source, importer)
             for forbidden in FORBIDDEN[importer] if is_under(target, forbidden)]
    assert not wrong, "imports against the one-way direction:\n" + "\n".join(wrong)


def test_the_parser_sees_relative_imports():
    """The check above means something only if relative imports resolve to the modules they name."""
    found = dict.fromkeys(target for source, target in edges() if source == "fabric_mvsplat.data.stream")
    assert "fabric_mvsplat.data.chunks" in found
    assert "fabric_mvsplat.types" in found
