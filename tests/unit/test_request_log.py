"""request_log: one line per upstream request, and the critical path bench/critical_path.py
reads from those lines (the format written is the format read)."""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isaacfs.backends.http import log_request, requests_log
from isaacfs.system import logs

SPEC = importlib.util.spec_from_file_location("critical_path", Path(__file__).parents[2] / "bench" / "critical_path.py")
assert SPEC is not None and SPEC.loader is not None
critical = importlib.util.module_from_spec(SPEC)
sys.modules["critical_path"] = critical
SPEC.loader.exec_module(critical)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)
    requests_log.setLevel(logging.NOTSET)


def setup(out: io.StringIO, level: str, requests: bool = False) -> None:
    """The daemon's own log set-up (its format, its name escaping), writing to ``out``."""
    logs.setup(level, requests)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)


def test_request_lines_are_off_unless_asked_for(captured: io.StringIO) -> None:
    setup(captured, "INFO")
    log_request("GET", "https://h/bucket/a.usd", time.monotonic(), 206)
    assert captured.getvalue() == ""
    setup(captured, "WARNING", requests=True)
    log_request("GET", "https://h/bucket/a.usd?x=1", time.monotonic(), 206)
    assert "request GET /bucket/a.usd?x=1: 206 in " in captured.getvalue()


def test_a_name_with_a_newline_stays_on_one_line(captured: io.StringIO) -> None:
    setup(captured, "INFO", requests=True)
    log_request("GET", "https://h/bucket/a\nb.usd", time.monotonic(), 200)
    assert len(captured.getvalue().splitlines()) == 1


def test_the_critical_path_is_read_from_the_lines_the_daemon_writes(captured: io.StringIO) -> None:
    """Three waves: a listing, the root layer, then two files it names in parallel; a request
    that overlaps the path (started before the root layer ended) is not on it."""
    setup(captured, "INFO", requests=True)
    lines = []

    def request(method: str, path: str, took: float, ended: float) -> None:
        # Written now, as if it had ended at ``ended`` (seconds since the epoch) after ``took``.
        record = logging.LogRecord("isaacfs.requests", logging.INFO, __file__, 0, "request %s %s: %s in %.1f ms",
                                   (method, path, 200, took * 1000), None)
        record.created, record.msecs = ended, (ended % 1) * 1000
        logging.getLogger().handlers[0].handle(record)
        lines.append(captured.getvalue().splitlines()[-1])

    base = 1_800_000_000.0
    request("LIST", "/bucket/?list-type=2", 0.080, base + 0.080)
    request("GET", "/bucket/root.usda", 0.081, base + 0.170)
    request("HEAD", "/bucket/early.png", 0.100, base + 0.160)  # overlaps the root layer's GET
    request("GET", "/bucket/mesh.usda", 0.082, base + 0.260)
    request("GET", "/bucket/tex.png", 0.095, base + 0.270)
    found = critical.parse(lines)
    assert len(found) == 5
    chain = critical.critical_path(found)
    assert [r.target for r in chain] == ["/bucket/?list-type=2", "/bucket/root.usda", "/bucket/tex.png"]
    assert "3 on the critical path" in critical.report(found)
    assert critical.parse(lines, after="2099-01-01 00:00:00.000") == []


def test_a_warm_without_a_mount_logs_its_requests_when_asked(
        captured: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ISAACFS_REQUEST_LOG=1 isaacfs warm ...` (no mount): the warm's own requests go to its
    stderr, as a daemon's go to its log (configuration.md says so)."""
    from isaacfs.cli import warm as warm_cli
    from isaacfs.core import config
    from isaacfs.jobs.spec import WarmResult, WarmSpec

    def run_local(settings: object, mirror: Path, spec: WarmSpec, emit: object) -> WarmResult:
        log_request("GET", "https://s3.example/b/Isaac/a.usda", time.monotonic() - 0.01, 200)
        return WarmResult()

    monkeypatch.setattr(warm_cli, "run_local", run_local)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    settings = config.load(env={"ISAACFS_REQUEST_LOG": "1"}, config_file=tmp_path / "none.toml")
    warm_cli.warm_and_report(settings, tmp_path / "mirror", WarmSpec(manifest=[]))
    assert "request GET /b/Isaac/a.usda: 200" in stderr.getvalue()
