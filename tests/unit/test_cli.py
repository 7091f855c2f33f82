"""The command line's own promises, without running a mount."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from isaacfs.cli.main import build_parser
from isaacfs.core.units import plural, size


def test_every_command_and_option_explains_itself() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not sub.description:
                        missing.append(f"{path} {name}: no description")
                    walk(sub, f"{path} {name}")
            elif action.help is None:
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest} has no help")

    walk(build_parser(), "isaacfs")
    assert not missing, missing


def test_sizes_and_counts_read_as_people_write_them() -> None:
    assert [size(n) for n in (0, 999, 1442, 12_000_000, 2_500_000_000)] == [
        "0 B", "999 B", "1.4 KB", "12.0 MB", "2.50 GB"]
    assert plural(1, "file") == "1 file" and plural(2, "file") == "2 files" and plural(1000, "file") == "1,000 files"


def test_warm_takes_the_mountpoint_anywhere() -> None:
    args = build_parser().parse_args(["warm", "/mnt/assets", "--categories", "Robots"])
    assert args.mountpoint == "/mnt/assets" and args.categories == ["Robots"]


def test_service_install_without_systemd_says_why_and_what_to_do(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from isaacfs.core.config import Settings
    from isaacfs.core.errors import UserError
    from isaacfs.system import service

    layout = service.Layout(True, tmp_path / "units", tmp_path / "env")
    monkeypatch.setattr(service.Layout, "here", classmethod(lambda cls, user=False: layout))
    monkeypatch.setattr(service, "SYSTEMD_RUNNING", tmp_path / "no-systemd")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/systemctl" if name == "systemctl"
                        else real_which(name))
    with pytest.raises(UserError) as caught:
        service.install(tmp_path / "mnt", Settings(), start=True)
    message = str(caught.value)
    assert "did not enable the service: systemd is not running" in message and "isaacfs mount" in message
    assert (layout.unit_dir / service.TEMPLATE).exists()  # written all the same, for later
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "not installed" in (service.why_no_systemd(layout) or "")
