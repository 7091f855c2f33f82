"""The kernel's "no such name" memo: bounded, oldest evicted (and taken back from the
kernel), expired by the kernel's own timeout, and an install looks up only its own path."""

from __future__ import annotations

from typing import Any

import pytest

from isaacfs.core.paths import RelPath
from isaacfs.fuse import kernel
from isaacfs.fuse.kernel import NEGATIVE_TIMEOUT, KernelCache
from isaacfs.tree.namespace import Node


class _Tree:
    def __init__(self) -> None:
        self.root = Node(1, None, "", True)
        self.root.children = {}
        self.nodes = {1: self.root}


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def forgotten(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    told: list[tuple[int, bytes]] = []
    monkeypatch.setattr(KernelCache, "_forget_entry", staticmethod(lambda inode, name: told.append((inode, name))))
    return told


def _cache(clock: _Clock) -> KernelCache:
    tree: Any = _Tree()
    return KernelCache(tree, clock=clock)


def test_a_full_memo_evicts_its_oldest_and_takes_it_back(monkeypatch: pytest.MonkeyPatch,
                                                          forgotten: list[tuple[int, bytes]]) -> None:
    monkeypatch.setattr(kernel, "MAX_NEGATIVES", 100)
    clock = _Clock()
    cache = _cache(clock)
    for number in range(150):
        cache.told_missing((1, f"probe{number}".encode()))
    assert len(cache) == 100
    assert forgotten == [(1, f"probe{number}".encode()) for number in range(50)]  # never stale, never cleared whole


def test_expired_answers_leave_without_a_kernel_call(forgotten: list[tuple[int, bytes]]) -> None:
    clock = _Clock()
    cache = _cache(clock)
    cache.told_missing((1, b"old"))
    clock.now += NEGATIVE_TIMEOUT + 1
    cache.told_missing((1, b"new"))
    assert len(cache) == 1 and forgotten == []


def test_an_install_takes_back_only_the_answers_on_its_own_path(forgotten: list[tuple[int, bytes]]) -> None:
    clock = _Clock()
    cache = _cache(clock)
    for number in range(1000):
        cache.told_missing((1, f"other{number}".encode()))
    cache.told_missing((1, b"Isaac"))
    cache.refresh(RelPath.parse("Isaac/Robots/go2.usd"))
    assert forgotten == [(1, b"Isaac")] and len(cache) == 1000
