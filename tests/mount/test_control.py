"""status, misses and mode against live mounts and bare mirrors; the control socket's guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import FRANKA, GO2, POLICY, Mounts, Upstream, isaacfs, sha256


def status_of(path: Path, mounts: Mounts) -> dict[str, object]:
    result = isaacfs("status", str(path), "--json", env=mounts.env)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_status_and_misses_live_in_both_modes_then_bare(any_upstream: Upstream, upstream_tree: Path,
                                                        mountpoint: Path, mounts: Mounts) -> None:
    # Prefetch off: this counts what one read fetches (tests/unit/test_prefetch.py covers prefetch).
    mounts.mount(mountpoint, any_upstream, "--mode", "permissive", env={"ISAACFS_PREFETCH": "0"})
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)
    report = status_of(mountpoint, mounts)
    assert report["running"] and report["mode"] == "permissive" and report["upstream_answers"]
    session = report["session"]
    assert isinstance(session, dict) and session["fetches"] == 1
    assert session["bytes_fetched"] == (upstream_tree / GO2).stat().st_size
    mirrored = report["mirrored"]
    assert isinstance(mirrored, dict) and mirrored["categories"] == {
        "IsaacLab/Robots": {"files": 1, "bytes": (upstream_tree / GO2).stat().st_size}}
    text = isaacfs("status", str(mountpoint), env=mounts.env).stdout
    assert "mode       permissive" in text and "IsaacLab/Robots" in text

    assert isaacfs("mode", "strict", str(mountpoint), env=mounts.env).returncode == 0
    with pytest.raises(FileNotFoundError):
        (mountpoint / FRANKA).read_bytes()
    report = status_of(mountpoint, mounts)
    assert report["mode"] == "strict" and report["recorded_misses"] == 1
    misses = isaacfs("misses", str(mountpoint), "--json", env=mounts.env)
    found = json.loads(misses.stdout)
    assert [m["path"] for m in found] == [FRANKA]
    assert found[0]["fetch"] == f"isaacfs warm {mountpoint} --categories Robots --subset FrankaRobotics"
    log = mounts.log(mountpoint)
    assert f"missing:  {FRANKA}" in log
    assert f"fetch it: isaacfs warm {mountpoint} --categories Robots --subset FrankaRobotics" in log

    assert mounts.umount(mountpoint).returncode == 0
    bare = status_of(mountpoint, mounts)
    assert not bare["running"] and bare["mirrored"] == mirrored and bare["recorded_misses"] == 1
    assert FRANKA in isaacfs("misses", str(mountpoint), env=mounts.env).stdout
    assert isaacfs("mode", "permissive", str(mountpoint), env=mounts.env).returncode == 2


def test_mode_switch_applies_to_the_next_lookup_and_keeps_open_files(file_upstream: Upstream, upstream_tree: Path,
                                                                     mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    held = open(mountpoint / GO2, "rb")  # fetched, and held open across both switches
    try:
        assert (mountpoint / FRANKA).stat().st_size > 0  # known to the kernel, not fetched
        assert isaacfs("mode", "strict", str(mountpoint), env=mounts.env).returncode == 0
        assert not (mountpoint / FRANKA).exists()  # the kernel's 24 h entry was taken back
        assert (mountpoint / GO2).exists()  # mirrored: still there
        assert not (mountpoint / POLICY).exists()  # a miss, now cached by the kernel as absent
        assert isaacfs("mode", "permissive", str(mountpoint), env=mounts.env).returncode == 0
        assert sha256(mountpoint / POLICY) == sha256(upstream_tree / POLICY)  # no 10 s wait
        assert held.read() == (upstream_tree / GO2).read_bytes()
    finally:
        held.close()
    assert "mode switched from permissive to strict" in mounts.log(mountpoint)


def _raw_request(path: Path, payload: bytes, uid: int | None = None) -> str:
    """Send raw bytes to the control socket, optionally as another user; the daemon's answer."""
    code = ("import socket, sys, os\n"
            f"uid = {uid!r}\n"
            "if uid is not None: os.setgid(uid); os.setuid(uid)\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())\n"
            "s.shutdown(socket.SHUT_WR); print(s.makefile().read())\n")
    socket_path = os.getxattr(path, "user.isaacfs.control").decode()
    result = subprocess.run([sys.executable, "-c", code, socket_path], input=payload, capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_control_socket_refuses_other_users_and_malformed_requests(file_upstream: Upstream, mountpoint: Path,
                                                                   mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream)
    socket_path = Path(os.getxattr(mountpoint, "user.isaacfs.control").decode())
    request = b'{"command": "mode", "mode": "permissive"}\n'
    with pytest.raises(AssertionError, match="PermissionError"):
        _raw_request(mountpoint, request, uid=65534)  # the socket's folder is the owner's alone
    # Behind the folder, the peer-credential check refuses another uid all the same.
    os.chmod(socket_path.parent, 0o755)
    os.chmod(socket_path, 0o666)
    try:
        refused = _raw_request(mountpoint, request, uid=65534)
    finally:
        os.chmod(socket_path.parent, 0o700)
        os.chmod(socket_path, 0o600)
    assert "uid 65534 may not control this mount" in refused
    for payload, expected in [(b"not json\n", "not JSON"), (b"[1, 2]\n", "malformed request: expected"),
                              (b'{"command": "format-disk"}\n', "unknown command 'format-disk'"),
                              (b'{"command": "mode", "mode": "yolo"}\n', "mode must be one of"),
                              (b'{"command": "warm", "spec": {"categories": 5}}\n', "malformed warm request"),
                              (b"x" * (16 * 1024 * 1024 + 1) + b"\n", "longer than"),
                              (b"[" * 40_000 + b"\n", "nested too deeply"), (b"", "not JSON")]:
        answer = _raw_request(mountpoint, payload)
        assert expected in answer and '"ok": false' in answer, (payload[:40], answer)
    report = status_of(mountpoint, mounts)  # still serving, still strict
    assert report["mode"] == "strict" and report["running"]
    assert "refused a request from uid 65534" in mounts.log(mountpoint)


def test_status_without_a_mount_or_mirror_says_so(tmp_path: Path) -> None:
    result = isaacfs("status", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = isaacfs("misses", str(tmp_path))
    assert result.returncode == 2 and "holds no isaacfs mirror index" in result.stderr


def test_unix_socket_path_fits_any_mountpoint(tmp_path: Path) -> None:
    from isaacfs.control.server import socket_path_for

    assert len(str(socket_path_for(tmp_path / ("x" * 200)))) < 108


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root")
def test_allow_other_lets_a_container_uid_read(file_upstream: Upstream, upstream_tree: Path, mounts: Mounts) -> None:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="isaacfs-allow-other-"))  # traversable by other users
    try:
        os.chmod(base, 0o755)
        as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "cat"]
        private, shared = base / "private", base / "shared"
        for mountpoint, flags in ((private, ()), (shared, ("--allow-other",))):
            mountpoint.mkdir()
            mounts.mount(mountpoint, file_upstream, "--mode", "permissive", *flags)
            result = subprocess.run([*as_nobody, str(mountpoint / FRANKA)], capture_output=True)
            if flags:
                assert result.returncode == 0 and result.stdout == (upstream_tree / FRANKA).read_bytes()
            else:
                assert result.returncode != 0 and b"Permission denied" in result.stderr
            assert mounts.umount(mountpoint).returncode == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
