"""The systemd unit: passes systemd-analyze verify; its ExecStart, run as systemd would, notifies and stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO, Upstream, force_unmount, is_mounted, isaacfs

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def verify(unit: Path, instance: str, tmp_path: Path) -> None:
    """systemd-analyze verify of one instance of a template, as a system and as a user unit."""
    folder = tmp_path / "verify"
    folder.mkdir(exist_ok=True)
    shutil.copy(unit, folder / "isaacfs@.service")
    shutil.copy(unit, folder / f"isaacfs@{instance}.service")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    for scope in ([], ["--user"]):
        result = subprocess.run(["systemd-analyze", *scope, "verify", str(folder / f"isaacfs@{instance}.service")],
                                capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
        assert result.returncode == 0 and result.stderr.strip() == "", (scope, result.stderr)


def test_repository_unit_verifies(tmp_path: Path) -> None:
    verify(REPO / "systemd" / "isaacfs@.service", "home-user-IsaacLab-offline_assets", tmp_path)


def test_service_install_writes_a_unit_whose_execstart_serves(tmp_path: Path, file_upstream: Upstream) -> None:
    mountpoint = tmp_path / "offline assets"  # a space: escaped in the instance name
    mountpoint.mkdir()
    config = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(config), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = isaacfs("service", "install", "--user", "--no-start", str(mountpoint), "--mode", "permissive",
                   "--upstream", file_upstream.url, env=env)
    # Where systemd cannot take the unit (this container has none running), the files are
    # written all the same and the command says why, what to do, and exits non-zero.
    if done.returncode != 0:
        assert done.returncode == 2 and "did not enable the service: " in done.stderr, done.stderr
        assert "systemctl --user daemon-reload" in done.stderr and "Traceback" not in done.stderr
    instance = subprocess.run(["systemd-escape", "--path", str(mountpoint)], capture_output=True, text=True,
                              check=True).stdout.strip()
    unit = config / "systemd" / "user" / "isaacfs@.service"
    env_file = config / "isaacfs" / f"{instance}.env"
    assert unit.exists() and env_file.exists()
    assert env_file.stat().st_mode & 0o777 == 0o600  # it may carry the upstream's credentials
    assert "WorkingDirectory=/" in unit.read_text() and "LimitNOFILE=" in unit.read_text()
    verify(unit, instance, tmp_path)

    # Run ExecStart the way systemd would: %f expanded, the EnvironmentFile's variables, a NOTIFY_SOCKET.
    exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    # %f is one argument, spaces and all.
    command = [str(mountpoint) if word == "%f" else word for word in exec_start.removeprefix("ExecStart=").split()]
    assert command[:3] == [sys.executable, "-m", "isaacfs"]
    variables = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
                     and not line.startswith("#"))
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    daemon = subprocess.Popen(command, env={**os.environ, **env, **variables, "NOTIFY_SOCKET": address},
                              stderr=subprocess.PIPE, text=True)
    try:
        assert listener.recv(4096).decode().startswith("READY=1")
        assert os.getxattr(mountpoint, "user.isaacfs.mode") == b"permissive"
        assert (mountpoint / "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda").read_bytes()
        daemon.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert daemon.wait(timeout=30) == 0 and not is_mounted(mountpoint)
    finally:
        daemon.kill()
        force_unmount(mountpoint)
        listener.close()

    removed = isaacfs("service", "remove", "--user", str(mountpoint), env=env)
    assert removed.returncode == 0 and not env_file.exists() and not unit.exists()
    again = isaacfs("service", "remove", "--user", str(mountpoint), env=env)
    assert again.returncode == 2 and "no isaacfs service is installed" in again.stderr


def test_mount_helper_takes_fstab_style_arguments(tmp_path: Path, file_upstream: Upstream) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "OMNICLIENT_HUB_MODE": "disabled"}
    helper = [sys.executable, "-m", "isaacfs.cli.mount_helper"]
    try:
        done = subprocess.run([*helper, file_upstream.url, str(mountpoint), "-o",
                               "defaults,noauto,user,_netdev,x-systemd.automount,mode=permissive"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert os.getxattr(mountpoint, "user.isaacfs.mode") == b"permissive"
        assert (mountpoint / "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda").read_bytes()
    finally:
        subprocess.run([sys.executable, "-m", "isaacfs", "umount", str(mountpoint)], capture_output=True, env=env)
        force_unmount(mountpoint)
    bad = subprocess.run([*helper, file_upstream.url, str(mountpoint), "-o", "mode=strict,turbo=1"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "unknown option 'turbo=1'" in bad.stderr and not is_mounted(mountpoint)
