"""Real servers and real mounts for tests, always cleaned up."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isaacfs import sample_assets
from isaacfs.system import logs, mounts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SAMPLE = sample_assets()
S3_PREFIX = "Assets/Isaac/5.1"
# Files of the embedded sample asset root the tests read.
GO2 = "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd"
FRANKA = "Isaac/Robots/FrankaRobotics/FrankaPanda/franka.usda"
POLICY = "Isaac/IsaacLab/Policies/ANYmal-C/Blind/policy.pt"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file below root, by relative path (the isaacfs state folder left out)."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d == ".isaacfs")]
        for name in files:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = sha256(path)
    return found


def bytes_wrong(mirror: Path, source: Path) -> int:
    """Bytes of mirrored files that differ from the upstream's (the one figure that must be 0)."""
    wrong = 0
    for rel, digest in tree_digests(mirror).items():
        if not (source / rel).exists() or sha256(source / rel) != digest:
            wrong += (mirror / rel).stat().st_size
    return wrong


def is_mounted(path: Path) -> bool:
    return mounts.find_mount(path) is not None


def force_unmount(path: Path) -> None:
    if is_mounted(path) or mounts.is_stale(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


@dataclass
class Upstream:
    url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    cert: str = ""

    def stats(self) -> dict[str, dict[str, int]]:
        """Object GETs the S3 server answered and body bytes it sent, by key."""
        context = ssl.create_default_context(cafile=self.cert)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/__isaacfs_stats", context=context) as reply:
            data: dict[str, dict[str, int]] = json.load(reply)
        return data

    def bytes_sent(self, key: str) -> int:
        return self.stats()["bytes"].get(key, 0)

    def put(self, rel: str, data: bytes) -> None:
        """Replace (or add) the object of ``rel`` under the asset root: the upstream changes."""
        context = ssl.create_default_context(cafile=self.cert)
        key = urllib.parse.quote(f"{S3_PREFIX}/{rel}", safe="")
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}/__isaacfs_put?key={key}", data=data,
                                         method="POST")
        with urllib.request.urlopen(request, context=context) as reply:
            assert reply.read() == b"ok"

    def via(self, port: int) -> Upstream:
        """The same S3 upstream, reached through another port on loopback (a fault proxy)."""
        return Upstream(f"https://127.0.0.1:{port}/{S3_PREFIX}", self.env)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_s3(source: Path, workdir: Path, extra: dict[str, str] | None = None, keepalive: bool = False,
             refuse_agent: str = "") -> Upstream:
    """A moto S3 bucket on loopback holding ``source`` under Assets/Isaac/5.1/; ``keepalive``:
    served by cheroot, which keeps connections alive as real S3 does."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / "s3server.py"), "--source", str(source), "--certdir", str(workdir)]
    if keepalive:
        command.append("--keepalive")
    if refuse_agent:
        command += ["--refuse-agent", refuse_agent]
    if extra:
        (workdir / "extra.json").write_text(json.dumps(extra))
        command += ["--extra", str(workdir / "extra.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(workdir / "s3server.log", "wb"))
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError("S3 server failed: " + (workdir / "s3server.log").read_text()[-2000:])
    info = json.loads(line)
    config_dir = workdir / "omniconfig"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "omniverse.toml").write_text(
        f'[s3."127.0.0.1"]\nbucket = "{info["bucket"]}"\nregion = "us-west-2"\n')
    env = {"OMNI_CONFIG_PATH": str(config_dir), "SSL_CERT_FILE": info["cert"]}
    return Upstream(f"https://127.0.0.1:{info['port']}/{S3_PREFIX}", env, process, info["port"], info["cert"])


@dataclass
class Link:
    """A link emulator (tests/support/linkproxy.py) in front of a loopback port."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_link(target_port: int, rtt: float, rate: float = 0.0) -> Link:
    command = [sys.executable, str(HERE / "linkproxy.py"), "--target", f"127.0.0.1:{target_port}",
               "--rtt", str(rtt), "--rate", str(rate)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    port = json.loads(process.stdout.readline())["port"]
    return Link(port, process)


def isaacfs(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "isaacfs", *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"isaacfs {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


class Mounts:
    """Mounts made by a test; every one is unmounted (or killed and detached) at teardown."""

    def __init__(self, state_home: Path) -> None:
        self.made: list[tuple[Path, int]] = []
        self.env = {"XDG_STATE_HOME": str(state_home), "OMNICLIENT_HUB_MODE": "disabled"}

    def mount(self, mountpoint: Path, upstream: Upstream | None = None, *flags: str,
              env: dict[str, str] | None = None) -> int:
        args = ["mount", str(mountpoint), *flags]
        if upstream is not None:
            args += ["--upstream", upstream.url]
        full_env = {**self.env, **(upstream.env if upstream else {}), **(env or {})}
        result = isaacfs(*args, env=full_env)
        if result.returncode != 0:
            raise AssertionError(f"mount failed ({result.returncode}): {result.stdout}{result.stderr}"
                                 f"\nlog: {self.log(mountpoint)[-3000:]}")
        pid = int(os.getxattr(mountpoint, "user.isaacfs.pid"))
        self.made.append((mountpoint, pid))
        return pid

    def log(self, mountpoint: Path) -> str:
        path = logs.log_path_for(mountpoint, self.env)
        return path.read_text(errors="replace") if path.exists() else ""

    def umount(self, mountpoint: Path) -> subprocess.CompletedProcess[str]:
        return isaacfs("umount", str(mountpoint), env=self.env)

    def cleanup(self) -> None:
        for mountpoint, pid in self.made:
            if is_mounted(mountpoint) and not mounts.is_stale(mountpoint):
                isaacfs("umount", str(mountpoint), env=self.env, timeout=60)
            force_unmount(mountpoint)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def copy_sample(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest)
    return dest


def open_stage(path: Path) -> dict[str, Any]:
    """Open a USD stage with usd-core in a fresh process; see open_stage.py for the report."""
    result = subprocess.run([sys.executable, str(HERE / "open_stage.py"), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
