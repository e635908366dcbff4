"""Rules of the code base read from the source with `ast`: short signatures, and exit codes only in entry points.

A wide signature turns calls into rows of positional literals; the fix is keyword-only arguments or a config
slice. An exit outside an entry point's `main` bypasses the one error path (`train.main` turns `UserError` into
one line and exit code 2)."""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fabric_mvsplat"
MAX_PARAMETERS = 8


def package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Every parameter a caller can pass (a method's self or cls excluded)."""
    args = function.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [f"*{a.arg}" for a in (args.vararg, args.kwarg) if a is not None]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def wide_functions(tree: ast.AST, where: str) -> list[str]:
    return [f"{where}:{node.lineno} {node.name}({', '.join(parameters(node))})"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and len(parameters(node)) > MAX_PARAMETERS]


def is_exit(node: ast.AST) -> bool:
    """sys.exit(...), exit(...), quit(...), parser.exit(...) or raise SystemExit. Not os._exit: the hang
    watchdog (debug/watchdog.py) ends a hung process from its own thread, where an exception cannot reach main."""
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "SystemExit"
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in ("exit", "quit")
    return isinstance(func, ast.Attribute) and func.attr == "exit"


def is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def is_hydra_main(node: ast.AST) -> bool:
    """A function under `@hydra.main(...)`: Hydra calls it as the command's main."""
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and ast.unparse(d.func) == "hydra.main" for d in node.decorator_list)


def exits_outside_main(tree: ast.Module, where: str) -> list[str]:
    """Exits anywhere but in a top-level function named `main`, the `@hydra.main` function, or under
    `if __name__ == "__main__"`."""
    allowed = [node for node in tree.body
               if (isinstance(node, ast.FunctionDef) and node.name == "main") or is_hydra_main(node)
               or is_main_guard(node)]
    inside = {id(child) for node in allowed for child in ast.walk(node)}
    return [f"{where}:{node.lineno}" for node in ast.walk(tree) if is_exit(node) and id(node) not in inside]


def test_no_function_in_the_package_takes_more_than_8_parameters():
    wide = [line for path in package_files()
            for line in wide_functions(ast.parse(path.read_text()), str(path.relative_to(PACKAGE_DIR)))]
    assert not wide, f"functions with more than {MAX_PARAMETERS} parameters:\n" + "\n".join(wide)


def test_only_entry_points_exit():
    found = [line for path in package_files()
             for line in exits_outside_main(ast.parse(path.read_text()), str(path.relative_to(PACKAGE_DIR)))]
    assert not found, "exits outside an entry point's main (raise a UserError instead):\n" + "\n".join(found)


def test_the_rules_see_what_they_forbid():
    """The checks above mean something only if they flag the code they forbid."""
    source = ("import sys\n"
              "def helper(a, b, c, d, e, f, g, h, *, i):\n    sys.exit(2)\n"
              "class C:\n    def method(self, a, b, c, d, e, f, g, h):\n        raise SystemExit(1)\n"
              "def main():\n    sys.exit(3)\n"
              "@hydra.main(config_name='x')\ndef run(cfg):\n    sys.exit(4)\n"
              "if __name__ == '__main__':\n    sys.exit(main())\n")
    tree = ast.parse(source)
    assert [line.split(" ")[1].split("(")[0] for line in wide_functions(tree, "x")] == ["helper"]
    assert exits_outside_main(tree, "x") == ["x:3", "x:6"]
