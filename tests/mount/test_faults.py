"""Faults between omni.client and the upstream, in the daemon, and on the mirror's disk.

Every test ends with the same proof: each file the mirror holds is byte for byte the
upstream's (``bytes_wrong`` must be 0). What the user saw and that figure are recorded as
test properties; bench/fault_table.py turns a run into the table in docs/faults.md.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.helpers import (
    S3_PREFIX,
    Mounts,
    Upstream,
    bytes_wrong,
    copy_sample,
    isaacfs,
    sha256,
    start_s3,
    wait_for,
)

MANY = "Isaac/Props/Many"  # 1,000 small files in 20 folders
WIDE = "Isaac/Props/Wide"  # 10,000 files in one folder
LARGE = "Isaac/Props/Large/texture.bin"  # 8 MiB
LONG_NAME = "L" * 251 + ".usd"  # 255 bytes, the longest a name may be
# Short bounds, so each fault resolves in seconds: a download is abandoned after
# 3 s + size at 100 MB/s, and a failed upstream rests 3 s.
QUICK = {"ISAACFS_STALL_TIMEOUT": "3", "ISAACFS_MIN_DOWNLOAD_RATE": "100000000", "ISAACFS_UPSTREAM_RETRY_AFTER": "3"}

Record = Callable[[str, object], None]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_sample(tmp_path_factory.mktemp("faults") / "source")
    rng = random.Random(5)
    for index in range(1000):
        folder = root / MANY / f"Set{index % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"prop_{index:04d}.usda").write_bytes(rng.randbytes(rng.randint(1024, 16 * 1024)))
    (root / WIDE).mkdir(parents=True)
    for index in range(10_000):
        (root / WIDE / f"w{index:05d}.usd").write_bytes(b"#usda 1.0\n")
    (root / WIDE / LONG_NAME).write_bytes(b"#usda 1.0\n# the longest name\n")
    (root / LARGE).parent.mkdir(parents=True)
    (root / LARGE).write_bytes(rng.randbytes(8 * 1024 * 1024))
    return root


@pytest.fixture(scope="module")
def server(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    # A 256-byte name is one too long: the listing must skip it, never serve it.
    extra = {f"{S3_PREFIX}/{WIDE}/{'x' * 256}": "too long"}
    made = start_s3(source, tmp_path_factory.mktemp("faults-s3"), extra)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def proxy(server: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as fault:
        yield fault


def inject(server: Upstream, **query: int) -> None:
    """Tell the S3 server to answer the next object GETs badly (see s3server.py)."""
    context = ssl.create_default_context(cafile=server.cert)
    arguments = "&".join(f"{key}={value}" for key, value in query.items())
    with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/__isaacfs_fault?{arguments}", context=context):
        pass



def mounted(tmp_path: Path, mounts: Mounts, upstream: Upstream, *flags: str,
            env: dict[str, str] | None = None) -> tuple[Path, Path]:
    mountpoint, mirror = tmp_path / "mnt", tmp_path / "mirror"
    mountpoint.mkdir()
    mirror.mkdir()
    mounts.mount(mountpoint, upstream, "--mode", "permissive", "--mirror", str(mirror), *flags, env=env)
    return mountpoint, mirror


def many_files(source: Path) -> list[str]:
    return sorted(str(p.relative_to(source)) for p in (source / MANY).rglob("*.usda"))


def test_latency_200ms(server: Upstream, source: Path, proxy: FaultProxy, tmp_path: Path, mounts: Mounts,
                       record_property: Record) -> None:
    proxy.delay = 0.2
    mountpoint, mirror = mounted(tmp_path, mounts, server.via(proxy.port))
    names = many_files(source)[:20]
    started = time.monotonic()
    for rel in names:
        assert sha256(mountpoint / rel) == sha256(source / rel)
    per_file = (time.monotonic() - started) / len(names)
    record_property("seen", f"every read correct; first opens {per_file * 1000:.0f} ms each on average")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


@pytest.mark.parametrize("mode", ["cut", "reset"])
def test_body_cut_short_or_reset(mode: str, server: Upstream, source: Path, proxy: FaultProxy, tmp_path: Path,
                                 mounts: Mounts, record_property: Record) -> None:
    mountpoint, mirror = mounted(tmp_path, mounts, server.via(proxy.port), "--upstream-timeout", "5", env=QUICK)
    os.listdir(mountpoint / LARGE.rsplit("/", 1)[0])  # listed before the fault
    proxy.mode, proxy.cut_after = mode, 256 * 1024  # headers and the first 256 KiB of the body
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        (mountpoint / LARGE).read_bytes()
    took = time.monotonic() - started
    assert caught.value.errno == errno.EIO and not (mirror / LARGE).exists()
    proxy.mode = "pass"
    wait_for(lambda: _reads(mountpoint / LARGE), timeout=90, interval=1)  # the upstream rests, then answers
    assert sha256(mountpoint / LARGE) == sha256(source / LARGE)
    record_property("seen", f"EIO after {took:.1f}s, nothing installed; the same read works once the body is whole")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def _reads(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(status: int, server: Upstream, source: Path, tmp_path: Path, mounts: Mounts,
                       record_property: Record) -> None:
    mountpoint, mirror = mounted(tmp_path, mounts, server, "--upstream-timeout", "5", env=QUICK)
    names = many_files(source)
    os.listdir((mountpoint / names[0]).parent)
    inject(server, status=status, count=1)  # one bad answer: retried, the reader never knows
    assert sha256(mountpoint / names[0]) == sha256(source / names[0])
    inject(server, status=status, count=1000)  # the upstream keeps failing
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        (mountpoint / names[1]).read_bytes()
    took = time.monotonic() - started
    assert caught.value.errno == errno.EIO and took < 60
    inject(server, count=0)
    wait_for(lambda: _reads(mountpoint / names[1]), timeout=90, interval=1)
    record_property("seen", f"one {status}: retried, read correct; {status} on every try: EIO after {took:.1f}s;"
                    " then correct once it answers")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def test_corrupt_body_is_caught(server: Upstream, source: Path, tmp_path: Path, mounts: Mounts,
                                record_property: Record) -> None:
    mountpoint, mirror = mounted(tmp_path, mounts, server)
    names = many_files(source)
    os.listdir((mountpoint / names[2]).parent)
    inject(server, corrupt=1)  # one byte flipped, length right: only the MD5 can tell
    assert sha256(mountpoint / names[2]) == sha256(source / names[2])
    inject(server, corrupt=100)  # every try corrupt
    with pytest.raises(OSError) as caught:
        (mountpoint / names[3]).read_bytes()
    inject(server, corrupt=0)
    assert caught.value.errno == errno.EIO and not (mirror / names[3]).exists()
    assert "differs from the ETag" in mounts.log(mountpoint)
    record_property("seen", "one corrupt body: MD5 mismatch, fetched again, read correct; always corrupt: EIO,"
                    " nothing installed")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def test_kill_9_during_warm_then_verify(server: Upstream, source: Path, proxy: FaultProxy, tmp_path: Path,
                                       record_property: Record) -> None:
    mirror = tmp_path / "mirror"
    upstream = server.via(proxy.port)
    proxy.throttle = 2_000_000  # slow enough to be killed in the middle
    command = [sys.executable, "-m", "isaacfs", "warm", "--mirror", str(mirror), "--upstream", upstream.url,
               "--categories", "Props", "--subset", "Many", "--jobs", "4"]
    env = {**os.environ, **server.env, "OMNICLIENT_HUB_MODE": "disabled"}
    warm = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(mirror.rglob("*.usda"))) >= 50, timeout=120)
        warm.send_signal(signal.SIGKILL)
        warm.wait(timeout=30)
    finally:
        warm.kill()
    before = len(list(mirror.rglob("*.usda")))
    proxy.throttle = 0
    again = isaacfs(*command[3:], env=server.env)
    assert again.returncode == 0, again.stdout + again.stderr
    checked = isaacfs("verify", "--mirror", str(mirror), env=server.env)
    assert checked.returncode == 0 and "all files checked match" in checked.stdout
    assert len(many_files(mirror)) == 1000 and list((mirror / ".isaacfs" / "tmp").iterdir()) == []
    record_property("seen", f"killed with {before} of 1,000 files in; the rerun fetched the rest, verify: all match")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def test_64_readers_across_1000_cold_files(server: Upstream, source: Path, tmp_path: Path, mounts: Mounts,
                                           record_property: Record) -> None:
    mountpoint, mirror = mounted(tmp_path, mounts, server, "--jobs", "16")
    names = many_files(source)
    before = server.stats()["gets"]
    expected = {rel: sha256(source / rel) for rel in names}
    failures: list[str] = []

    def reader(seed: int) -> None:
        order = names[:]
        random.Random(seed).shuffle(order)
        for rel in order[:250]:  # each reader a different quarter, so most files have several readers
            try:
                if sha256(mountpoint / rel) != expected[rel]:
                    failures.append(f"{rel}: wrong bytes")
            except OSError as exc:
                failures.append(f"{rel}: {exc}")

    started = time.monotonic()
    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    took = time.monotonic() - started
    assert failures == []
    after = server.stats()["gets"]
    fetched = [rel for rel in names if after.get(f"{S3_PREFIX}/{rel}", 0) > before.get(f"{S3_PREFIX}/{rel}", 0)]
    extra = sum(after.get(f"{S3_PREFIX}/{rel}", 0) - before.get(f"{S3_PREFIX}/{rel}", 0) for rel in fetched)
    assert extra == len(fetched)  # one GET per file, however many readers asked
    record_property("seen", f"16,000 reads by 64 threads in {took:.1f}s, all correct; {len(fetched)} files fetched"
                    " with one GET each")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def test_wide_listing_long_and_too_long_names(server: Upstream, source: Path, tmp_path: Path, mounts: Mounts,
                                              record_property: Record) -> None:
    mountpoint, mirror = mounted(tmp_path, mounts, server, "--upstream-timeout", "30")
    started = time.monotonic()
    names = os.listdir(mountpoint / WIDE)
    took = time.monotonic() - started
    assert len(names) == 10_001 and LONG_NAME in names and "x" * 256 not in names
    assert (mountpoint / WIDE / LONG_NAME).read_bytes() == (source / WIDE / LONG_NAME).read_bytes()
    assert "skipped upstream entry" in mounts.log(tmp_path / "mnt")
    record_property("seen", f"10,001 names listed in {took:.1f}s; the 255-byte name read; the 256-byte one skipped"
                    " with a log line")
    record_property("bytes_wrong", bytes_wrong(mirror, source))
    assert bytes_wrong(mirror, source) == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_under_a_lookup_storm(server: Upstream, tmp_path: Path, mounts: Mounts,
                                                record_property: Record) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    pid = mounts.mount(mountpoint, server)  # strict, empty mirror: every lookup is a miss
    lookups = int(os.environ.get("ISAACFS_TEST_LOOKUPS", "200000"))  # the negative-entry memo (50,000) fills at half
    code = ("import os, sys\n"
            "root, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
            "for i in range(start, start + count):\n"
            "    name = f'Isaac/Robots/V{i % 97}/r{i}.usd' if i % 2 else f'Isaac/Props/p{i}'\n"
            "    try: os.stat(os.path.join(root, name))\n"
            "    except OSError: pass\n")
    samples = []
    started = time.monotonic()
    step = lookups // 4
    for part in range(4):
        subprocess.run([sys.executable, "-c", code, str(mountpoint), str(part * step), str(step)], check=True,
                       timeout=600)
        samples.append(_rss_kib(pid))
    growth_mb = (samples[-1] - samples[0]) / 1024
    status = json.loads(isaacfs("status", str(mountpoint), "--json", env=mounts.env).stdout)
    assert status["running"] and status["recorded_misses"] <= 11_000
    assert growth_mb < 16, samples
    minutes = (time.monotonic() - started) / 60
    reports = mounts.log(mountpoint).count("ASSET NOT FOUND")
    assert 0 < reports <= 100 * (int(minutes) + 2)  # at most 100 a minute, the rest summed up
    record_property("seen", f"{lookups:,} missing-path lookups; daemon RSS {samples[0] / 1024:.0f} MB after the first"
                    f" quarter, {samples[-1] / 1024:.0f} MB at the end; {status['recorded_misses']:,} misses kept")
    record_property("bytes_wrong", 0)
