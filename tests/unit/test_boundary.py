"""The layer boundary: the core never imports pyfuse3, omni.client, argparse or rich; only
the backends import omni.client; only the FUSE layer imports pyfuse3."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "isaacfs"
FORBIDDEN_IN_CORE = ("pyfuse3", "omni", "argparse", "rich")


def imports_of(path: Path) -> set[str]:
    """Top-level module names a file imports, relative imports resolved within isaacfs."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join((*base, node.module)) if node.module else ".".join(base)
                found.add(module)
                if not node.module:
                    found.update(".".join((*base, alias.name)) for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if folder else sorted(PACKAGE.rglob("*.py"))


def test_core_imports_no_fuse_omni_or_cli() -> None:
    offenders = [f"{path.name}: {name}" for path in modules("core") for name in imports_of(path)
                 if name.split(".")[0] in FORBIDDEN_IN_CORE]
    assert not offenders, offenders


def test_core_imports_no_outer_layer_at_all() -> None:
    # Not even for type hints (an import under TYPE_CHECKING counts): the core holds values and
    # pure policy; what needs the store or the fetcher lives in tree/ and above.
    offenders = [f"{path.name}: {name}" for path in modules("core") for name in imports_of(path)
                 if name.startswith("isaacfs.") and not name.startswith("isaacfs.core")]
    assert not offenders, offenders


def test_core_imports_no_outer_layer_at_run_time() -> None:
    code = ("import sys, pkgutil, importlib, isaacfs.core as core;"
            "[importlib.import_module(f'isaacfs.core.{m.name}') for m in pkgutil.iter_modules(core.__path__)];"
            "print(sorted(m for m in sys.modules if m.startswith(('isaacfs.', 'pyfuse3', 'omni', 'argparse', 'rich'))"
            " and not m.startswith('isaacfs.core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_only_backends_import_omni_client() -> None:
    """And among them only the bridge, omni_client.py: the S3 and file: paths and the router
    work without it."""
    importers = [str(path.relative_to(PACKAGE)) for path in modules("")
                 if any(name == "omni" or name.startswith("omni.") for name in imports_of(path))]
    assert importers == ["backends/omni_client.py"], importers


def test_omni_client_is_imported_at_its_first_use_in_a_lazy_session() -> None:
    """A short command (a warm over S3's HTTP path, a no-op warm) does not pay omni.client's
    import; a daemon's eager session, and a lazy one's first request, do."""
    code = ("import sys; from isaacfs.backends import client_session, omni_client as c;"
            "s = client_session(lazy=True); s.__enter__(); print('omni.client' in sys.modules);"
            "c.join('http://h/a', 'b c'); print('omni.client' in sys.modules, c._initialized);"
            "s.__exit__(None, None, None); print(c._initialized);"
            "e = client_session(); e.__enter__(); print('eager', c._initialized); e.__exit__(None, None, None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMNICLIENT_HUB_MODE": "disabled"}).stdout.split("\n")
    assert out[:4] == ["False", "True True", "False", "eager True"], out


def test_omni_client_outside_a_session_is_a_clear_error() -> None:
    from isaacfs.backends import omni_client

    assert not omni_client._initialized  # every session in this process has ended
    with pytest.raises(RuntimeError, match="outside client_session"):
        omni_client.join("http://h/a", "b")


def test_only_the_fuse_layer_imports_pyfuse3() -> None:
    offenders = [str(path.relative_to(PACKAGE)) for path in modules("") if "fuse" not in path.parts
                 and "pyfuse3" in imports_of(path)]
    assert not offenders, offenders


def test_store_fetch_and_jobs_import_no_cli_libraries() -> None:
    offenders = [str(path.relative_to(PACKAGE)) for folder in ("store", "fetch", "jobs", "control")
                 for path in modules(folder) if {"argparse", "rich"} & {n.split(".")[0] for n in imports_of(path)}]
    assert not offenders, offenders


def test_the_checker_sees_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A probe in a copy of the package's shape, never in the source tree.
    fake = tmp_path / "isaacfs"
    (fake / "core").mkdir(parents=True)
    bad = fake / "core" / "_boundary_probe.py"
    bad.write_text("import pyfuse3\nfrom ..backends import omni\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    names = imports_of(bad)
    assert "pyfuse3" in names and "isaacfs.backends" in names


def test_control_and_fuse_do_not_import_each_other_and_only_the_cli_imports_the_app() -> None:
    def importing(folder: str, prefix: str) -> list[str]:
        return [str(path.relative_to(PACKAGE)) for path in modules(folder)
                if any(name.startswith(prefix) for name in imports_of(path))]

    assert importing("control", "isaacfs.fuse") == []
    assert importing("fuse", "isaacfs.control") == [] and importing("fuse", "isaacfs.app") == []
    outside = [name for folder in ("core", "store", "fetch", "backends", "tree", "jobs", "control", "fuse", "system")
               for name in importing(folder, "isaacfs.app")]
    assert outside == []
