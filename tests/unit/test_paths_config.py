"""The boundary types: path validation, settings precedence, miss hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from isaacfs.core import config
from isaacfs.core.categories import warm_command
from isaacfs.core.errors import InvalidPath, UserError
from isaacfs.core.paths import RelPath, check_name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", "x" * 256, "é" * 128])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidPath):
        check_name(name)


@pytest.mark.parametrize("name", ["a b.usd", "100%.usd", "a+b.usd", "#1.usd", "日本語.usda", "..hidden", "x" * 255])
def test_odd_legal_names_round_trip(name: str) -> None:
    assert check_name(name) == name
    assert str(RelPath.parse(f"Isaac/{name}")) == f"Isaac/{name}"


@pytest.mark.parametrize("text", ["/etc/passwd", "Isaac/../etc", "Isaac//x", "./Isaac", "Isaac/\0"])
def test_unsafe_paths_are_refused(text: str) -> None:
    with pytest.raises(InvalidPath):
        RelPath.parse(text)


def test_state_folder_is_not_part_of_the_tree() -> None:
    assert RelPath.parse(".isaacfs/index.db").is_state()
    assert not RelPath.parse("Isaac/.isaacfs").is_state()


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('mode = "permissive"\nupstream_timeout = 3\nfetch_jobs = 2\n')
    assert config.load({}, {}, tmp_path / "none.toml").mode == "strict"
    from_file = config.load({}, {}, file)
    assert (from_file.mode, from_file.upstream_timeout, from_file.fetch_jobs) == ("permissive", 3.0, 2)
    from_env = config.load({}, {"ISAACFS_MODE": "strict", "ISAACFS_FETCH_JOBS": "5"}, file)
    assert (from_env.mode, from_env.fetch_jobs, from_env.sources["mode"]) == ("strict", 5, "ISAACFS_MODE")
    from_flag = config.load({"mode": "permissive"}, {"ISAACFS_MODE": "strict"}, file)
    assert from_flag.mode == "permissive" and from_flag.sources["mode"] == "flag"


def test_isaac_lab_offline_variables() -> None:
    assert config.load({}, {"OFFLINE_PERMISSIVE": "1"}, Path("/none")).mode == "permissive"
    assert config.load({}, {"OFFLINE": "1"}, Path("/none")).mode == "strict"


def test_release_picks_the_cloud_root() -> None:
    settings = config.load({"release": "5.1"}, {}, Path("/none"))
    assert settings.upstream.endswith("/Assets/Isaac/5.1")
    assert config.load({}, {}, Path("/none")).upstream.endswith("/Assets/Isaac/6.2")


def test_bad_config_file_is_one_sentence(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("colour = 'blue'\n")
    with pytest.raises(UserError, match="unknown key 'colour'"):
        config.load({}, {}, file)
    file.write_text("mode = [\n")
    with pytest.raises(UserError, match="cannot be read"):
        config.load({}, {}, file)


def test_folder_upstream_becomes_file_url() -> None:
    assert config.check_upstream_url("/data/assets") == "file:///data/assets"


def test_credentials_are_redacted() -> None:
    assert config.redact("omniverse://me:secret@nucleus/Assets") == "omniverse://***@nucleus/Assets"


@pytest.mark.parametrize(("path", "command"), [
    ("Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd", "isaacfs warm --categories IsaacLab/Robots --subset Unitree"),
    ("Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usd", "isaacfs warm --categories Robots --subset FrankaRobotics"),
    ("NVIDIA/Materials/Base/Metals/x.mdl", "isaacfs warm --categories NVIDIA/Materials --subset Base"),
    ("Isaac", "isaacfs warm --categories all"),
    ("Isaac/Props/My Stuff/a.usd", "isaacfs warm --categories Props --subset 'My Stuff'"),
])
def test_miss_hint(path: str, command: str) -> None:
    assert warm_command(RelPath.parse(path)) == command


def test_fuse_conf_user_allow_other_only_when_not_commented(tmp_path: Path) -> None:
    from isaacfs.system.mounts import fuse_conf_allows_other

    conf = tmp_path / "fuse.conf"
    stock = ("# Set the maximum number of FUSE mounts allowed to non-root users.\n#mount_max = 1000\n\n"
             "# Allow non-root users to specify the allow_other or allow_root mount options.\n#user_allow_other\n")
    conf.write_text(stock)
    assert not fuse_conf_allows_other(conf)
    conf.write_text(stock.replace("#user_allow_other", "# user_allow_other"))
    assert not fuse_conf_allows_other(conf)
    conf.write_text(stock + "user_allow_other  # for isaacfs\n")
    assert fuse_conf_allows_other(conf)
    assert not fuse_conf_allows_other(tmp_path / "missing.conf")


def test_release_and_scheme_are_checked() -> None:
    with pytest.raises(UserError, match="not a release number"):
        config.load({"release": "abc"}, env={}, config_file=Path("/nonexistent"))
    assert config.load({"release": "5.1"}, env={}, config_file=Path("/nonexistent")).upstream.endswith("/5.1")
    with pytest.raises(UserError, match="only over https://"):
        config.load({"upstream": "http://example.com/Assets"}, env={}, config_file=Path("/nonexistent"))


@pytest.mark.parametrize("name", ["a b%+#é.usd", "new\nline.usd", "esc\x1b[31mred.usd", "bad\udcff.usd",
                                  "back\\slash.usd", "tab\there.usd", "trailing\\"])
def test_manifest_lines_round_trip_and_display_is_one_harmless_line(name: str) -> None:
    from isaacfs.core.paths import escape_line, shown, unescape_line
    from isaacfs.jobs.spec import parse_manifest

    line = escape_line(f"Isaac/Props/{name}")
    assert "\n" not in line and "\x1b" not in line and unescape_line(line) == f"Isaac/Props/{name}"
    paths, problems = parse_manifest([line], "m")
    assert paths == [RelPath(("Isaac", "Props", name))] and not problems
    display = shown(name)
    assert display.isprintable() and "\x1b" not in display


def test_log_lines_escape_their_arguments() -> None:
    import logging

    from isaacfs.system.logs import EscapeNames

    record = logging.LogRecord("isaacfs", logging.WARNING, __file__, 1, "could not fetch %s: %s (%d)",
                               ("Isaac/evil\n2026 INFO fake line", ValueError("x\x1b[2J"), 3), None)
    assert EscapeNames().filter(record)
    assert record.getMessage() == "could not fetch Isaac/evil\\n2026 INFO fake line: x\\x1b[2J (3)"


def test_manifest_lines_survive_unicode_line_breaks_in_names(tmp_path: Path) -> None:
    from isaacfs.cli.main import _read_lines
    from isaacfs.core.paths import escape_line
    from isaacfs.jobs.spec import parse_manifest

    names = ["Isaac/a\u2028b.usd", "Isaac/x\x85y.usd", "Isaac/p\u2029.usd", "Isaac/ends with space .usd"]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(escape_line(name) + "\n" for name in names), encoding="utf-8")
    paths, problems = parse_manifest(_read_lines(str(manifest)), "manifest.txt")
    assert [str(path) for path in paths] == names and not problems


def test_a_warm_command_names_the_mount_it_was_printed_for() -> None:
    rel = RelPath.parse("Isaac/Props/My Stuff/a.usd")
    assert warm_command(rel, "/mnt/my assets") == "isaacfs warm '/mnt/my assets' --categories Props --subset 'My Stuff'"
