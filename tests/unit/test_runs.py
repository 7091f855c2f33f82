"""Per-process modes: a run's process tree, and OFFLINE variables in a process's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from isaacfs.core.runs import Runs


def spawn(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # A shell whose child is a sleeping python: two levels below this test.
    return subprocess.Popen(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(30)' & wait"],
                            env={**os.environ, **(env or {})})


def grandchild(shell: subprocess.Popen[bytes]) -> int:
    for _ in range(100):
        try:
            children = open(f"/proc/{shell.pid}/task/{shell.pid}/children").read().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("no child")


def test_a_run_covers_its_whole_process_tree_and_nothing_else() -> None:
    runs = Runs()
    events: list[dict[str, object]] = []
    shell, other = spawn(), spawn()
    try:
        run = runs.register(shell.pid, "strict", events.append)
        assert run is not None
        assert runs.lookup(grandchild(shell)) == ("strict", run)
        assert runs.lookup(grandchild(other)) == (None, None)  # another process keeps the mount's mode
        assert runs.lookup(os.getpid()) == (None, None)
        assert runs.overriding("permissive") and not runs.overriding("strict")
        runs.unregister(run)
        assert runs.lookup(grandchild(shell)) == (None, None)
    finally:
        for process in (shell, other):
            process.kill()
            process.wait()


def test_offline_variables_in_the_environment_choose_the_mode() -> None:
    runs = Runs()
    strict, permissive = spawn({"OFFLINE": "1"}), spawn({"OFFLINE_PERMISSIVE": "1"})
    try:
        assert runs.lookup(grandchild(strict))[0] == "strict"
        assert runs.lookup(grandchild(permissive))[0] == "permissive"
    finally:
        for process in (strict, permissive):
            process.kill()
            process.wait()


def test_a_run_whose_root_is_gone_is_pruned() -> None:
    runs = Runs()
    shell = spawn()
    run = runs.register(shell.pid, "permissive", lambda event: None)
    assert run is not None
    shell.kill()
    shell.wait()
    assert runs.prune() == [run] and not runs.runs
