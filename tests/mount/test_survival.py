"""The mount never goes down: hostile names, odd upstreams, a broken mirror, clients that hang
up or flood the control socket. Each test ends by reading a mirrored file through the mount
within 1 s, with the page cache dropped, from the same daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import FRANKA, GO2, Mounts, Upstream, copy_sample, isaacfs, sha256, wait_for

BAD = os.fsdecode(b"bad\xff.usd")  # a name that is not UTF-8


def still_serving(mountpoint: Path, pid: int, rel: str, source: Path) -> None:
    """The same daemon answers a read of a mirrored file within 1 s."""
    os.kill(pid, 0)  # raises if the daemon is gone
    subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
    started = time.monotonic()
    result = subprocess.run(["cat", str(mountpoint / rel)], capture_output=True, timeout=5)
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and result.stdout == (source / rel).read_bytes()
    assert elapsed < 1.0, f"read took {elapsed:.2f}s"
    assert int(os.getxattr(mountpoint, "user.isaacfs.pid")) == pid


def test_ctrl_c_on_a_warm_through_the_mount_costs_only_that_warm(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    many = upstream_tree / "Isaac" / "Props" / "Many"
    many.mkdir(parents=True)
    for number in range(400):
        (many / f"p{number:03}.usda").write_bytes(os.urandom(20_000))
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)
    for _attempt in range(3):
        warm = subprocess.Popen([sys.executable, "-m", "isaacfs", "warm", "--categories", "Props/Many",
                                 "--mirror", str(mountpoint)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **mounts.env})
        time.sleep(0.8)
        warm.send_signal(signal.SIGINT)
        warm.wait(timeout=30)
        time.sleep(0.3)
        still_serving(mountpoint, pid, GO2, upstream_tree)
    assert isaacfs("status", str(mountpoint), env=mounts.env).returncode == 0


def test_names_that_are_not_utf8_are_served_or_skipped(
        file_upstream: Upstream, upstream_tree: Path, tmp_path: Path, mounts: Mounts) -> None:
    props = upstream_tree / "Isaac" / "Props"
    (props / BAD).write_bytes(b"upstream odd name")
    # 1. permissive over a file: upstream listing one
    permissive = tmp_path / "permissive"
    permissive.mkdir()
    pid = mounts.mount(permissive, file_upstream, "--mode", "permissive")
    names = os.listdir(permissive / "Isaac" / "Props")
    assert "Odd Names" in names
    still_serving(permissive, pid, FRANKA, upstream_tree)
    # 2. the first mount of an asset folder holding one (adoption), then strict ls -l and xattrs
    adopted = tmp_path / "adopted"
    (adopted / "Isaac" / "Props").mkdir(parents=True)
    (adopted / "Isaac" / "Props" / BAD).write_bytes(b"mirror odd name")
    for rel in (FRANKA,):
        (adopted / rel).parent.mkdir(parents=True, exist_ok=True)
        (adopted / rel).write_bytes((upstream_tree / rel).read_bytes())
    pid = mounts.mount(adopted, file_upstream)
    listing = subprocess.run(["ls", "-la", str(adopted / "Isaac" / "Props")], capture_output=True, timeout=10)
    assert listing.returncode == 0
    assert (adopted / "Isaac" / "Props" / BAD).read_bytes() == b"mirror odd name"
    assert os.getxattr(adopted / "Isaac" / "Props" / BAD, "user.isaacfs.state") == b"cached"
    assert os.getxattr(adopted / "Isaac" / "Props" / BAD, "user.isaacfs.url").endswith(b"/bad%FF.usd")
    time.sleep(2.5)  # adoption runs in the background
    still_serving(adopted, pid, FRANKA, upstream_tree)
    assert "adopted the existing asset tree" in mounts.log(adopted)


def test_an_upstream_that_is_itself_a_mirror(file_upstream: Upstream, upstream_tree: Path, mountpoint: Path,
                                             mounts: Mounts) -> None:
    (upstream_tree / ".isaacfs" / "tmp").mkdir(parents=True)
    (upstream_tree / ".isaacfs" / "index.db").write_bytes(b"another mirror's index")
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert ".isaacfs" not in os.listdir(mountpoint)
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)
    still_serving(mountpoint, pid, GO2, upstream_tree)


def test_a_broken_mirror_gives_errnos_not_a_dead_mount(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert sha256(mountpoint / FRANKA) == sha256(upstream_tree / FRANKA)
    assert mounts.umount(mountpoint).returncode == 0
    folder = mountpoint / "Isaac" / "Robots"
    os.symlink("loop", folder / "loop")  # a symlink loop in the mirror: ELOOP on stat
    (folder / ("n" * 200)).mkdir()
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "strict")
    listing = subprocess.run(["ls", "-la", str(folder)], capture_output=True, text=True, timeout=10)
    assert listing.returncode in (0, 1) and "FrankaRobotics" in listing.stdout
    still_serving(mountpoint, pid, FRANKA, upstream_tree)


def test_hostile_control_clients(file_upstream: Upstream, upstream_tree: Path, mountpoint: Path,
                                 mounts: Mounts) -> None:
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)
    path = os.getxattr(mountpoint, "user.isaacfs.control").decode()
    with socket.socket(socket.AF_UNIX) as sock:  # 60 KB of nesting
        sock.connect(path)
        sock.sendall(b"[" * 60_000 + b"\n")
        assert b"nested too deeply" in sock.makefile("rb").read()
    flood = []
    try:
        for _ in range(2000):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            flood.append(sock)
        still_serving(mountpoint, pid, GO2, upstream_tree)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        assert fds < 200, f"the daemon holds {fds} descriptors under a connection flood"
    finally:
        for sock in flood:
            sock.close()
    time.sleep(0.5)
    assert isaacfs("status", str(mountpoint), env=mounts.env).returncode == 0
    log = mounts.log(mountpoint)
    assert log.count("more than 32 connections") <= 10  # refusals are rate-limited


def test_umount_of_a_wedged_daemon_works(file_upstream: Upstream, mountpoint: Path, mounts: Mounts) -> None:
    pid = mounts.mount(mountpoint, file_upstream)
    os.kill(pid, signal.SIGSTOP)  # every request to it now waits forever
    try:
        started = time.monotonic()
        result = isaacfs("umount", str(mountpoint), env=mounts.env, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert result.returncode == 0 and "did not answer" in result.stdout, result.stderr
    assert elapsed < 10
    assert not mounts_find(mountpoint)
    assert isaacfs("mount", str(mountpoint), "--upstream", file_upstream.url, env=mounts.env).returncode == 0
    mounts.made.append((mountpoint, int(os.getxattr(mountpoint, "user.isaacfs.pid"))))


def mounts_find(path: Path) -> bool:
    from isaacfs.system import mounts as table

    return table.find_mount(path) is not None


def test_special_files_and_links_out_of_a_file_upstream_are_not_assets(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    props = upstream_tree / "Isaac" / "Props"
    os.mkfifo(props / "pipe.usd")  # reading it would block forever
    os.symlink("/etc/shadow", props / "shadow.usd")
    os.symlink("/etc", props / "etcdir")
    os.symlink(f"../../{FRANKA}", props / "inside.usda")  # a link within the tree is an asset
    pid = mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    names = set(os.listdir(mountpoint / "Isaac" / "Props"))
    assert "inside.usda" in names and not names & {"pipe.usd", "shadow.usd", "etcdir"}
    for rel in ("pipe.usd", "shadow.usd", "etcdir/passwd"):
        started = time.monotonic()
        result = subprocess.run(["cat", str(mountpoint / "Isaac" / "Props" / rel)], capture_output=True, timeout=20)
        assert result.returncode != 0 and time.monotonic() - started < 5, rel
    assert (mountpoint / "Isaac" / "Props" / "inside.usda").read_bytes() == (upstream_tree / FRANKA).read_bytes()
    mirror_files = {p.name for p in (mountpoint / "Isaac" / "Props").iterdir()}
    assert "shadow.usd" not in mirror_files
    still_serving(mountpoint, pid, FRANKA, upstream_tree)
    log = mounts.log(mountpoint)
    assert "a link out of the upstream tree" in log and "not a regular file or folder" in log


def test_names_the_kernel_forgets_are_freed(file_upstream: Upstream, upstream_tree: Path, mountpoint: Path,
                                            mounts: Mounts) -> None:
    wide = upstream_tree / "Isaac" / "Props" / "Wide"
    wide.mkdir()
    for number in range(5000):
        (wide / f"w{number:04}.usda").write_bytes(b"#usda 1.0\n")
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert len(os.listdir(mountpoint / "Isaac" / "Props" / "Wide")) == 5000
    subprocess.run(["ls", "-l", str(mountpoint / "Isaac" / "Props" / "Wide")], capture_output=True, check=True)
    import json

    def nodes() -> int:
        result = isaacfs("status", str(mountpoint), "--json", env=mounts.env)
        return int(json.loads(result.stdout)["nodes"])

    before = nodes()
    assert before > 5000
    subprocess.run(["sh", "-c", "sync; echo 2 > /proc/sys/vm/drop_caches"], check=True)  # dentries and inodes
    deadline = time.monotonic() + 10
    while nodes() > before - 4000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nodes() <= before - 4000
    assert len(os.listdir(mountpoint / "Isaac" / "Props" / "Wide")) == 5000  # and it loads again


@pytest.fixture
def hung_upstream(tmp_path: Path) -> Iterator[Path]:
    """A folder (a FUSE file system of its own) whose reads hang mid-file, as a hung NFS
    server's do; killed and detached at teardown, which fails the reads still waiting."""
    folder = tmp_path / "hung-nfs"
    folder.mkdir()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "support" / "hangfs.py"),
                               str(folder)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        yield folder
    finally:
        server.kill()
        server.wait()
        subprocess.run(["fusermount3", "-uz", str(folder)], capture_output=True)


def test_a_hung_network_file_system_upstream_is_a_stall_not_a_wait(
        hung_upstream: Path, mountpoint: Path, mounts: Mounts) -> None:
    """A file: upstream whose reads stop answering mid-file: the reader gets EIO once no byte
    came for the stall timeout (3 s here), not after a deadline by size (3 s + 210 s at 1 MB/s
    for this 200 MiB file), and the mount serves mirrored files meanwhile."""
    pid = mounts.mount(mountpoint, Upstream(hung_upstream.as_uri()), "--mode", "permissive",
                       env={"ISAACFS_STALL_TIMEOUT": "3"})
    ok = "Isaac/Props/ok.usda"
    assert (mountpoint / ok).read_bytes() == (hung_upstream / ok).read_bytes()
    reader = subprocess.Popen(["cat", str(mountpoint / "Isaac" / "Props" / "stuck.bin")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    time.sleep(1.0)
    still_serving(mountpoint, pid, ok, hung_upstream)  # while the reader waits
    _out, err = reader.communicate(timeout=120)
    took = time.monotonic() - started
    assert reader.returncode != 0 and b"Input/output error" in err
    assert took < 30, f"EIO after {took:.1f}s"
    still_serving(mountpoint, pid, ok, hung_upstream)
    assert "gave nothing for 3s (a hung network file system?)" in mounts.log(mountpoint)
    # Unmounting while the upstream still hangs: the daemon's threads stuck in the hung reads
    # must not hold the unmount or the mirror (a second mount of it works at once).
    started = time.monotonic()
    result = mounts.umount(mountpoint)
    assert result.returncode == 0 and time.monotonic() - started < 10, result.stdout + result.stderr
    mounts.mount(mountpoint, Upstream(hung_upstream.as_uri()), "--mode", "permissive")
    assert (mountpoint / ok).read_bytes() == (hung_upstream / ok).read_bytes()


def test_a_hung_file_system_inside_the_mirror_costs_its_readers_eio_not_the_mount(
        hung_upstream: Path, tmp_path: Path, mounts: Mounts) -> None:
    """Issue 22: a part of the mirror on a hung network file system (here a FUSE file system
    whose reads hang, bind-mounted into the mirror as an NFS share would be) stalled the whole
    mount: mirror reads ran on the event loop. Its readers get EIO after the stall timeout;
    every other reader is served meanwhile."""
    mirror = copy_sample(tmp_path / "mirror")
    hung = mirror / "Isaac" / "Props" / "Hung"
    hung.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(hung_upstream / "Isaac" / "Props"), str(hung)], check=True)
    try:
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        pid = mounts.mount(mountpoint, None, "--mirror", str(mirror), env={"ISAACFS_STALL_TIMEOUT": "3"})
        ok = "Isaac/Props/Hung/ok.usda"
        assert (mountpoint / ok).read_bytes() == (hung_upstream / "Isaac/Props/ok.usda").read_bytes()
        reader = subprocess.Popen(["cat", str(mountpoint / "Isaac/Props/Hung/stuck.bin")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()

        def stuck() -> bool:  # it read what hangfs serves (1 MiB) and waits for the rest
            with open(f"/proc/{reader.pid}/io") as io:
                return int(io.read().split("rchar: ")[1].split()[0]) >= 1024 * 1024
        wait_for(stuck, timeout=20)
        still_serving(mountpoint, pid, "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd", mirror)  # while it waits
        assert os.listdir(mountpoint / "Isaac" / "Props")
        _out, err = reader.communicate(timeout=60)
        assert reader.returncode != 0 and b"Input/output error" in err, err
        assert time.monotonic() - started < 20
        still_serving(mountpoint, pid, "Isaac/IsaacLab/Robots/Unitree/Go2/go2.usd", mirror)
        result = mounts.umount(mountpoint)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        subprocess.run(["umount", "-l", str(hung)], capture_output=True)
