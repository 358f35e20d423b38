"""Which of edgefleet's files a piece of code needs: its entry modules, every edgefleet
module they import (import statements anywhere in a
module, those inside functions too), the packages that hold them and those packages' data
files (templates, schemas, scripts).

A device image carries the closure of ``DEVICE_MODULES`` (the modules its units run): the
control plane, the hub, the demo and the CLI stay off the device. The image's cache key
holds the digests of that closure and of the builder's own (``BUILDER_MODULES``), so a
change to the server does not rebuild device images.

Imports by computed name (``importlib.import_module``) are not followed; the agent has
none, and ``tests/test_image_closure.py`` runs the agent from its closure alone."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from edgefleet.image.cache import file_digest

PACKAGE = "edgefleet"
DEVICE_MODULES = ("edgefleet.agent.__main__", "edgefleet.agent.evidence")
BUILDER_MODULES = ("edgefleet.image.build",)


def closure_files(package_dir: Path, entries: tuple[str, ...]) -> list[Path]:
    """The files under ``package_dir`` (the ``edgefleet`` package) that ``entries`` need,
    as paths relative to ``package_dir``, sorted."""
    modules: set[str] = set()
    pending = list(entries)
    while pending:
        name = pending.pop()
        if name in modules or _source(package_dir, name) is None:
            continue
        modules.add(name)
        pending.extend(_parents(name))
        pending.extend(_imports(package_dir, name))
    files = {_relative(package_dir, name) for name in modules}
    for name in modules:
        if _relative(package_dir, name).name == "__init__.py":
            files.update(_data_files(package_dir, package_dir / _relative(package_dir, name).parent))
    return sorted(files)


def files_digest(package_dir: Path, files: list[Path]) -> str:
    """Digest of ``files``' relative paths and contents (part of the image's cache key)."""
    h = hashlib.sha256()
    for relative in files:
        h.update(str(relative).encode() + b"\0")
        h.update(bytes.fromhex(file_digest(package_dir / relative)))
    return h.hexdigest()


def _source(package_dir: Path, name: str) -> Path | None:
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = package_dir / _relative(package_dir, name)
    return path if path.is_file() else None


def _relative(package_dir: Path, name: str) -> Path:
    parts = name.split(".")[1:]
    as_package = Path(*parts, "__init__.py") if parts else Path("__init__.py")
    if (package_dir / as_package).is_file() or not parts:
        return as_package
    return Path(*parts[:-1], parts[-1] + ".py")


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(package_dir: Path, name: str) -> set[str]:
    """Every module ``name``'s source imports by a literal name (and, for ``from X import
    y``, X.y when that is a module)."""
    path = package_dir / _relative(package_dir, name)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if _source(package_dir, module) is not None}


def _data_files(package_dir: Path, directory: Path) -> set[Path]:
    """A package's files that are not Python, with those of its subdirectories that are
    not packages themselves (``templates/``)."""
    found: set[Path] = set()
    for path in directory.iterdir():
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            found.add(path.relative_to(package_dir))
        elif path.is_dir() and path.name != "__pycache__" and not (path / "__init__.py").exists():
            found.update(p.relative_to(package_dir) for p in path.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return found
