"""The shape of the code: the largest files, the deepest nesting and the import cycles of pipeline/, evaluation/ and
manifests/, for a tree or a commit (the architecture's before/after figures).

    python benchmarks/code_shape.py                 # the working tree
    python benchmarks/code_shape.py --ref abb6f05   # a commit, read with `git show` (nothing checked out)

Nesting counts the compound statements (if/for/while/with/try/match, and nested functions) around a statement inside
a function body; a function's own body is level 1. Cycles are between modules, counting every import (module level
and inside functions), so an import moved into a function to dodge a cycle still shows.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

PACKAGES = ("pipeline", "evaluation", "manifests")
BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def sources(ref: str | None, root: Path) -> dict[str, str]:
    """{module path: source} of the packages, from the tree or from commit `ref`."""
    if ref is None:
        return {str(p.relative_to(root)): p.read_text() for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", ref, "--", *PACKAGES],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        name: subprocess.run(
            ["git", "show", f"{ref}:{name}"], cwd=root, check=True, capture_output=True, text=True
        ).stdout
        for name in names
        if name.endswith(".py")
    }


def module_name(path: str) -> str:
    parts = path[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def deepest(tree: ast.AST) -> tuple[int, str]:
    """(depth, function) of the most deeply nested statement in any function."""
    best = (0, "")

    def walk(node: ast.AST, depth: int, where: str) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                name = f"{where}.{child.name}" if where else child.name
                walk(child, depth + 1 if where else 1, name)
            elif isinstance(child, ast.ClassDef):
                walk(child, depth, child.name if not where else f"{where}.{child.name}")
            elif isinstance(child, BLOCKS) and where:
                if depth + 1 > best[0]:
                    best = (depth + 1, where)
                walk(child, depth + 1, where)
            else:
                walk(child, depth, where)

    walk(tree, 0, "")
    return best


def imports(tree: ast.AST, module: str, known: set[str]) -> set[str]:
    """The package modules that `module` imports (any level), resolved to modules that exist."""
    found = set()
    package = (
        module if module in known and any(k.startswith(module + ".") for k in known) else module.rpartition(".")[0]
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="a git commit (default: the working tree)")
    parser.add_argument(
        "--top", type=int, default=8, help="how many of the largest files and deepest functions to list"
    )
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    files = sources(args.ref, root)
    trees = {path: ast.parse(text) for path, text in files.items()}
    modules = {module_name(path): path for path in files}
    known = set(modules)
    lines = sorted(((text.count("\n"), path) for path, text in files.items()), reverse=True)
    nesting = sorted(((*deepest(trees[path]), path) for path in files), reverse=True)
    graph = {name: imports(trees[path], name, known) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of design; leave those edges out
    graph = {
        m: {t for t in ts if not (t.startswith(m + ".") and modules[m].endswith("__init__.py"))}
        for m, ts in graph.items()
    }
    found = cycles(graph)
    print(f"# code shape of {args.ref or 'the working tree'}: {len(files)} modules, {sum(n for n, _ in lines)} lines")
    print("largest files (lines): " + ", ".join(f"{path} {n}" for n, path in lines[: args.top]))
    print(f"files over 450 lines: {sum(n > 450 for n, _ in lines)}")
    print("deepest nesting: " + ", ".join(f"{path}:{fn} {depth}" for depth, fn, path in nesting[: args.top]))
    print(f"import cycles (strongly connected module groups, any-level imports): {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))


if __name__ == "__main__":
    main()
