"""--foreground under systemd: READY=1 once the mount answers, STOPPING=1 at stop (real socket)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import Upstream, force_unmount, is_mounted


def test_notify_ready_and_stopping(tmp_path: Path, file_upstream: Upstream) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": address, "XDG_STATE_HOME": str(tmp_path / "state")}
    daemon = subprocess.Popen([sys.executable, "-m", "isaacfs", "mount", str(mountpoint), "--foreground",
                               "--upstream", file_upstream.url], env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1") and "STATUS=mounted" in ready
        assert is_mounted(mountpoint)  # READY comes only once the mount answers
        daemon.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert daemon.wait(timeout=30) == 0
        assert not is_mounted(mountpoint)
    finally:
        daemon.kill()
        force_unmount(mountpoint)
        listener.close()
