"""Per-process modes: a run's process tree, and OFFLINE variables in a process's environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isaacfs.system.runs import Runs


def spawn(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # A shell whose child is a sleeping python (two levels below this test) that says its pid
    # once it runs; in a session of its own, so that the whole tree is killed at the end.
    child = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    return subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{child}' & wait"], stdout=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def grandchild(shell: subprocess.Popen[bytes]) -> int:
    """The sleeping python's pid, as it says once it runs (no polling)."""
    assert shell.stdout is not None
    line = shell.stdout.readline()
    if not line:
        raise AssertionError("no child")
    return int(line)


def end(*shells: subprocess.Popen[bytes]) -> None:
    """Kill each shell with its whole process tree: no grandchild is left sleeping."""
    for shell in shells:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
        if shell.stdout is not None:
            shell.stdout.close()


def test_a_run_covers_its_whole_process_tree_and_nothing_else() -> None:
    runs = Runs()
    events: list[dict[str, object]] = []
    shell, other = spawn(), spawn()
    try:
        run = runs.register(shell.pid, "strict", events.append)
        assert run is not None
        mine, theirs = grandchild(shell), grandchild(other)
        assert runs.lookup(mine) == ("strict", run)
        assert runs.lookup(theirs) == (None, None)  # another process keeps the mount's mode
        assert runs.lookup(os.getpid()) == (None, None)
        assert runs.overriding("permissive") and not runs.overriding("strict")
        runs.unregister(run)
        assert runs.lookup(mine) == (None, None)
    finally:
        end(shell, other)


def test_offline_variables_in_the_environment_choose_the_mode() -> None:
    runs = Runs()
    strict, permissive = spawn({"OFFLINE": "1"}), spawn({"OFFLINE_PERMISSIVE": "1"})
    try:
        assert runs.lookup(grandchild(strict))[0] == "strict"
        assert runs.lookup(grandchild(permissive))[0] == "permissive"
    finally:
        end(strict, permissive)


def test_a_run_whose_root_is_gone_is_pruned() -> None:
    runs = Runs()
    shell = spawn()
    run = runs.register(shell.pid, "permissive", lambda event: None)
    assert run is not None
    end(shell)
    assert runs.prune() == [run] and not runs.runs


def test_only_the_owner_and_root_may_widen_the_mode_by_environment() -> None:
    nobody = Runs(may_widen=lambda uid: False)  # as a process of another user would be judged
    permissive, strict = spawn({"OFFLINE_PERMISSIVE": "1"}), spawn({"OFFLINE": "1"})
    try:
        assert nobody.lookup(grandchild(permissive))[0] is None  # the mount's own mode: no fetching
        assert nobody.lookup(grandchild(strict))[0] == "strict"  # anyone may narrow
    finally:
        end(permissive, strict)


def test_a_process_that_execs_with_another_environment_is_asked_afresh() -> None:
    runs = Runs()
    code = ("import os, sys; print(os.getpid(), flush=True); sys.stdin.readline();"
            " os.execvpe('sleep', ['sleep', '30'], {**os.environ, 'OFFLINE': '1'})")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True)
    try:
        assert process.stdin is not None and process.stdout is not None
        pid = int(process.stdout.readline())
        assert runs.lookup(pid) == (None, None)
        process.stdin.write(b"go\n")
        process.stdin.flush()
        deadline = time.monotonic() + 10
        # The exec has happened, and finished: /proc shows the new program a moment before its
        # environment (a process's own FUSE requests come after both; this test asks from outside).
        while not (os.readlink(f"/proc/{pid}/exe").endswith("sleep")
                   and b"OFFLINE=1" in Path(f"/proc/{pid}/environ").read_bytes()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert runs.lookup(pid)[0] == "strict"  # `[ -e M/x ]; exec env OFFLINE=1 cat M/y`
    finally:
        end(process)


def test_a_run_keeps_a_bounded_list_of_its_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    from isaacfs.system import runs as runs_module
    from isaacfs.system.runs import Run

    monkeypatch.setattr(runs_module, "MAX_RUN_MISSES", 100)
    run = Run(1, 1, "strict", lambda event: None)
    firsts = [run.miss(f"Isaac/missing_{number}.usd") for number in range(1000)]
    assert sum(firsts) == 100 and len(run.missed) == 100 and run.missed_count == 1000
    assert not run.miss("Isaac/missing_0.usd")  # a repeat of a kept one is no new miss
    assert run.summary()["missed"] == 1000
