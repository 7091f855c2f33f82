from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import Mounts, Upstream, copy_sample, start_s3

os.environ.setdefault("OMNICLIENT_HUB_MODE", "disabled")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The unit tier needs no kernel; every other suite mounts real FUSE filesystems.
    real = [item for item in items if "tests/unit/" not in item.nodeid]
    if real and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise pytest.UsageError("the real-mount tests need a usable /dev/fuse (run tests/unit alone without it)")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    made = Mounts(tmp_path / "state")
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    """An empty folder to mount on, named as Isaac Lab's offline asset folder is."""
    path = tmp_path / "offline_assets"
    path.mkdir()
    return path


@pytest.fixture
def upstream_tree(tmp_path: Path) -> Path:
    """A private copy of the embedded sample asset root."""
    return copy_sample(tmp_path / "upstream")


@pytest.fixture
def file_upstream(upstream_tree: Path) -> Upstream:
    return Upstream(upstream_tree.as_uri())


@pytest.fixture(scope="session")
def s3_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One loopback S3 bucket holding the sample asset root, shared by the session (read-only)."""
    work = tmp_path_factory.mktemp("s3")
    server = start_s3(copy_sample(work / "source"), work / "server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["file", "s3"])
def any_upstream(request: pytest.FixtureRequest, file_upstream: Upstream) -> Upstream:
    if request.param == "file":
        return file_upstream
    server: Upstream = request.getfixturevalue("s3_sample")
    return server
