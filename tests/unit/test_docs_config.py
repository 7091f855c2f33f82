"""docs/configuration.md is a claim: every flag of every command, every setting and every
ISAACFS_ variable the code reads is in it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from isaacfs.cli.main import build_parser, main
from isaacfs.core import config

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "configuration.md").read_text()


def _flags(parser: argparse.ArgumentParser, command: str = "isaacfs") -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{command} {name}")
        elif action.help != argparse.SUPPRESS:
            yield from ((command, option) for option in action.option_strings
                        if option.startswith("--") and option != "--help")


def test_every_flag_is_documented() -> None:
    missing = sorted({(command, flag) for command, flag in _flags(build_parser()) if flag not in DOC})
    assert not missing, missing


def test_every_setting_and_variable_is_documented() -> None:
    settings = [f.name for f in fields(config.Settings) if f.name != "sources" and f"`{f.name}`" not in DOC]
    code = "".join(path.read_text() for path in (REPO / "isaacfs").rglob("*.py"))
    variables = sorted({name for name in re.findall(r"ISAACFS_[A-Z_]+", code) if name not in DOC})
    assert not settings and not variables, (settings, variables)


def test_a_bad_value_names_the_flag_the_user_typed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warm", "--jobs", "0", "--categories", "Robots", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isaacfs: --jobs: invalid value 0") and "--fetch-jobs" not in err


def test_the_mountpoint_comes_from_its_own_variable_never_from_the_mirrors() -> None:
    env = {"ISAACFS_MOUNTPOINT": "/mnt/assets", "ISAACFS_MIRROR": "/data/mirror"}
    assert config.mountpoint(None, env) == Path("/mnt/assets")
    assert config.mountpoint("/elsewhere", env) == Path("/elsewhere")
    assert config.mountpoint(None, {"ISAACFS_MIRROR": "/data/mirror"}) == config.DEFAULT_MOUNTPOINT.expanduser()
    assert config.load(env=env, config_file=Path("/nonexistent")).mirror == Path("/data/mirror")


def test_no_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(command in err for command in ("mount", "warm", "status", "umount", "run")) and "COMMAND --help" in err
