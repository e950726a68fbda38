"""Instruction pairs built from this interpreter's standard library: a function's signature as the prompt,
its docstring as the response.

Thousands of examples of widely varying length (a one-line docstring to a page),
read with ``ast`` from the sources (nothing imported, nothing downloaded): the
instruction data of the ``llm_sft_tiny`` recipe, its tests and
``benchmarks/llm_packing.py``. The order is sorted by module path and line, so
the same interpreter gives the same pairs.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator

SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def signature_docstring_pairs(limit: int | None = None, min_chars: int = 20) -> list[dict[str, str]]:
    """Up to ``limit`` ``{"prompt", "response"}`` pairs: "Document ``def name(args)`` from module ..." and the
    docstring, for every public function or method with a docstring of at least ``min_chars`` characters."""
    pairs = []
    for module, node in _functions():
        docstring = ast.get_docstring(node)
        if not docstring or len(docstring) < min_chars:
            continue
        signature = f"def {node.name}({ast.unparse(node.args)})"
        pairs.append({"prompt": f"Write the docstring of `{signature}` from {module}.", "response": docstring})
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def _functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    root = sysconfig.get_paths()["stdlib"]
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS and not f.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            module = os.path.relpath(path, root).removesuffix(".py").replace(os.sep, ".")
            functions = [
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_")
            ]
            for node in sorted(functions, key=lambda n: n.lineno):
                yield module, node
