"""Bad input ends with one clear sentence and a non-zero exit, and loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO, Mounts, Upstream, copy_sample, is_mounted, isaacfs, tree_digests


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # no stack trace
    # The command says "isaacfs: ..."; a --foreground daemon logs one ERROR line.
    assert lines[0].startswith("isaacfs: ") or " ERROR " in lines[0], lines[0]
    return lines[0]


def test_missing_mountpoint(tmp_path: Path) -> None:
    message = one_sentence(isaacfs("mount", str(tmp_path / "nope"), "--foreground"))
    assert "does not exist" in message and "mkdir -p" in message
    message = one_sentence(isaacfs("mount", str(tmp_path / "nope")))
    assert "does not exist" in message


def test_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    message = one_sentence(isaacfs("mount", str(home)))
    assert "refusing to mount over them" in message
    assert (home / "thesis.tex").read_text() == "precious"
    assert sorted(os.listdir(home)) == ["thesis.tex"]  # not even a state folder was made


def test_already_mounted(tmp_path: Path, mounts: Mounts, file_upstream: Upstream) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounts.mount(mountpoint, file_upstream)
    message = one_sentence(isaacfs("mount", str(mountpoint), env=mounts.env))
    assert "already an isaacfs mount" in message and "isaacfs umount" in message
    assert os.path.ismount(mountpoint)  # the running mount is untouched


@pytest.mark.parametrize("url", ["ftp://example.com/assets", "https://", "not a url", "file://host/x",
                                 "https://h/x?y=1"])
def test_unparseable_upstream(url: str, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    message = one_sentence(isaacfs("mount", str(mountpoint), "--upstream", url))
    assert "is not usable" in message
    assert os.listdir(mountpoint) == []


def test_wrong_flags(tmp_path: Path) -> None:
    result = isaacfs("mount", str(tmp_path), "--mode", "lazy")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = isaacfs("mount", str(tmp_path), "--offline", "--offline-permissive")
    assert result.returncode == 2 and "not allowed with" in result.stderr
    for tier in ("s3://bucket/6.2?endpont=http://store:8333", "s3://?endpoint=http://store:8333",
                 "s3://bucket/6.2?endpoint=store:8333"):  # a misspelt option, no bucket, no scheme
        result = isaacfs("mount", str(tmp_path), "--upstream", tier, "--release", "5.1")
        assert result.returncode == 2 and "is not usable" in result.stderr and "Traceback" not in result.stderr
    assert not is_mounted(tmp_path)


def test_bad_environment_value(tmp_path: Path) -> None:
    message = one_sentence(isaacfs("mount", str(tmp_path), env={"ISAACFS_MODE": "sometimes"}))
    assert "ISAACFS_MODE" in message


def test_unwritable_mirror(tmp_path: Path, upstream_tree: Path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    mirror = disk / "offline_assets"  # an unpacked asset pack on a read-only disk
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        copy_sample(mirror)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = tree_digests(mirror)
        message = one_sentence(isaacfs("mount", str(mirror)))
        assert "not writable" in message and "--mirror" in message
        assert tree_digests(mirror) == before
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_no_dev_fuse(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    # A private mount namespace whose /dev lacks fuse, like a container started without it.
    script = (f"mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && "
              f"exec {sys.executable} -m isaacfs mount {mountpoint}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                            cwd=REPO)
    message = one_sentence(result)
    assert "/dev/fuse is missing" in message


def test_umount_of_something_else(tmp_path: Path) -> None:
    message = one_sentence(isaacfs("umount", str(tmp_path)))
    assert "is not mounted" in message


def test_umount_recovers_a_stale_mount(tmp_path: Path, mounts: Mounts, file_upstream: Upstream) -> None:
    import signal

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    pid = mounts.mount(mountpoint, file_upstream)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        os.listdir(mountpoint)
    result = isaacfs("umount", str(mountpoint), env=mounts.env)
    assert result.returncode == 0 and "stale" in result.stdout
    assert os.listdir(mountpoint) == [".isaacfs"]


def test_commands_on_a_stale_mount_are_one_sentence(file_upstream: Upstream, mountpoint: Path, mounts: Mounts) -> None:
    import signal
    import time

    pid = mounts.mount(mountpoint, file_upstream)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    for command in (["status"], ["misses"], ["mode", "permissive"], ["verify"], ["warm", "--categories", "Robots"]):
        result = isaacfs(*command, str(mountpoint), env=mounts.env)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (command, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"isaacfs: {mountpoint} is a stale mount (its daemon died); run: isaacfs umount {mountpoint}"], command
    assert isaacfs("umount", str(mountpoint), env=mounts.env).returncode == 0


@pytest.mark.parametrize(("upstream", "cause"), [
    ("file:///nonexistent/misspelt", "the upstream folder /nonexistent/misspelt does not exist"),
    ("https://127.0.0.1:1/Assets/Isaac/5.1", "connection refused"),
])
def test_a_permissive_mount_says_at_once_what_its_upstream_answered(
        mounts: Mounts, mountpoint: Path, upstream: str, cause: str) -> None:
    """A misspelt folder or a dead host is said when mounting (the mirror still serves), not
    left for the first read to find as a missing asset."""
    result = isaacfs("mount", str(mountpoint), "--upstream", upstream, "--offline-permissive", env=mounts.env)
    mounts.made.append((mountpoint, int(os.getxattr(mountpoint, "user.isaacfs.pid"))))
    assert result.returncode == 0, result.stderr
    assert f"does not answer: {cause}" in result.stdout, result.stdout
    status = isaacfs("status", str(mountpoint), env=mounts.env)
    assert f"not answering ({cause})" in status.stdout, status.stdout
