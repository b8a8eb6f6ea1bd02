"""Helpers shared by the k8s tests."""

from __future__ import annotations

from typing import Any, Iterator

from k8s.render import REPO_ROOT

PYPROJECT = (REPO_ROOT / "pyproject.toml").read_text()


def included_packages() -> list[str]:
    """pyproject's packages.find include, without globs: what the image installs."""
    # Read as text: tomllib is 3.11+, the project supports 3.10.
    (line,) = [line for line in PYPROJECT.splitlines() if line.startswith("include = [")]
    return [p.strip(' "*') for p in line.split("[", 1)[1].rstrip("]").split(",")]


def import_paths(node: Any) -> Iterator[str]:
    """Custom policy and router paths in a serve config (what Ray's schema imports)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("policy_function", "request_router_class") and isinstance(value, str):
                yield value
            else:
                yield from import_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from import_paths(value)


def module_and_attr(path: str) -> tuple[str, str]:
    """Ray accepts both "mod.sub:attr" and "mod.sub.attr"."""
    module, sep, attr = path.partition(":")
    if sep:
        return module, attr
    module, attr = path.rsplit(".", 1)
    return module, attr
