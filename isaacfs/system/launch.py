"""Starting isaacfs's own child processes (the daemon, the USD parser) so that the current
folder never matters: a clone named ``isaacfs`` in the caller's folder (the home folder,
after the quick start) must not shadow the installed package."""

from __future__ import annotations

import sys

_RUN = ("import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')];"
        " runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args...`` without the current folder on sys.path."""
    return [sys.executable, "-c", _RUN.format(module=module), *args]
