"""isaacfs mount benchmarks: ratios against native disk (and omni.client) measured in the same run.

Run as root (it drops the page cache): .venv/bin/python bench/bench_mount.py [--runs 5]
Prints a table of medians and writes it to docs/benchmarks.md (between markers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from tests.support.helpers import force_unmount, start_s3  # noqa: E402

MiB = 1024 * 1024
ENV = {**os.environ, "OMNICLIENT_HUB_MODE": "disabled"}


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(path: Path) -> int:
    buffer = bytearray(MiB)
    total = 0
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            total += count
    return total


def walk_stat(root: Path) -> int:
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            count += 1
    return count


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def isaacfs(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    # A checkout of another revision (--against) runs its own code: the command through
    # ``python -m`` from that folder, the daemon it starts through PYTHONPATH (the daemon
    # leaves the working folder off sys.path, so without it both ran the installed package).
    code = cwd or REPO
    subprocess.run([sys.executable, "-m", "isaacfs", *args], check=True, capture_output=True,
                   env={**ENV, **(env or {}), "PYTHONPATH": str(code)}, cwd=code)


def daemon_pid(mountpoint: Path) -> int:
    return int(os.getxattr(mountpoint, "user.isaacfs.pid"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Mount:
    def __init__(self, mountpoint: Path, mirror: Path, *flags: str, env: dict[str, str] | None = None,
                 code: Path | None = None) -> None:
        self.mountpoint, self.mirror, self.flags, self.env, self.code = mountpoint, mirror, flags, env, code

    def __enter__(self) -> Mount:
        isaacfs("mount", str(self.mountpoint), "--mirror", str(self.mirror), *self.flags, env=self.env,
                cwd=self.code)
        self.pid = daemon_pid(self.mountpoint)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            isaacfs("umount", str(self.mountpoint), cwd=self.code)
        finally:
            force_unmount(self.mountpoint)


def make_tree(root: Path, files: int, per_dir: int = 20) -> None:
    payload = b"#usda 1.0\n" + b"x" * 400
    for index in range(files):
        folder = root / "Isaac" / f"group{index // (per_dir * 50):03d}" / f"d{index // per_dir:05d}"
        if index % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"asset_{index:06d}.usda").write_bytes(payload)


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_local(work: Path, runs: int, rows: list[tuple[str, str, str, str]]) -> None:
    mirror, mountpoint = work / "mirror", work / "mnt"
    mirror.mkdir()
    mountpoint.mkdir()
    big = mirror / "Isaac" / "Textures" / "big.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as stream:
        for _ in range(512):
            stream.write(os.urandom(MiB))
    make_tree(mirror, 20_000)
    through = mountpoint / big.relative_to(mirror)

    native_cold, fuse_cold, native_warm, fuse_warm, daemon_cpu = [], [], [], [], []
    with Mount(mountpoint, mirror) as mount:
        for _ in range(runs):
            drop_caches()
            native_cold.append(timed(lambda: read_all(big)))
            drop_caches()
            fuse_cold.append(timed(lambda: read_all(through)))
            native_warm.append(timed(lambda: read_all(big)))
            before = cpu_seconds(mount.pid)
            fuse_warm.append(timed(lambda: read_all(through)))
            daemon_cpu.append(cpu_seconds(mount.pid) - before)
    rows.append(("512 MiB sequential read, page cache dropped", f"{median(native_cold):.3f} s",
                 f"{median(fuse_cold):.3f} s", f"{median(native_cold) / median(fuse_cold):.2f} of native"))
    rows.append(("512 MiB re-read, page cache warm", f"{512 / median(native_warm):,.0f} MiB/s",
                 f"{512 / median(fuse_warm):,.0f} MiB/s",
                 f"{median(native_warm) / median(fuse_warm):.2f} of native; daemon CPU "
                 f"{max(daemon_cpu):.2f} s"))

    native_walk, native_walk2, fuse_walk, fuse_walk2 = [], [], [], []
    tree = mirror / "Isaac"
    for _ in range(runs):
        drop_caches()
        native_walk.append(timed(lambda: walk_stat(tree)))
        native_walk2.append(timed(lambda: walk_stat(tree)))
        with Mount(mountpoint, mirror):  # a fresh mount: nothing cached in the daemon either
            drop_caches()
            fuse_walk.append(timed(lambda: walk_stat(mountpoint / "Isaac")))
            fuse_walk2.append(timed(lambda: walk_stat(mountpoint / "Isaac")))
    rows.append(("os.walk + stat, 20,000 files, cold", f"{median(native_walk):.3f} s", f"{median(fuse_walk):.3f} s",
                 f"{median(fuse_walk) / median(native_walk):.2f}x native"))
    rows.append(("same, second walk", f"{median(native_walk2):.3f} s", f"{median(fuse_walk2):.3f} s",
                 f"{median(fuse_walk2) / median(native_walk2):.2f}x native"))
    floor_walk = [walk_through_floor(work, tree) for _ in range(runs)]
    rows.append(("same cold walk, minimal pyfuse3 file system from memory (bench/fuse_floor.py)",
                 f"{median(native_walk):.3f} s", f"{median(floor_walk):.3f} s",
                 f"{median(floor_walk) / median(native_walk):.2f}x native: pyfuse3's floor here"))


def walk_through_floor(work: Path, tree: Path) -> float:
    """One cold walk of ``tree`` through bench/fuse_floor.py (names and sizes from memory)."""
    mountpoint = work / "floor-mnt"
    mountpoint.mkdir(exist_ok=True)
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "fuse_floor.py"), str(mountpoint), str(tree)],
                              env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: bench/fuse_floor.py did not mount")
            time.sleep(0.05)
        drop_caches()
        return timed(lambda: walk_stat(mountpoint))
    finally:
        force_unmount(mountpoint)
        server.wait(timeout=30)


def bench_walk_against(work: Path, runs: int, revision: str, rows: list[tuple[str, str, str, str]]) -> None:
    """The walk through this checkout and through REVISION, interleaved in one run: the
    machine's drift between days cancels out of the comparison."""
    old = work / "old-code"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), revision],
                   check=True, capture_output=True)
    try:
        mirror, mountpoint = work / "ab-mirror", work / "ab-mnt"
        mirror.mkdir()
        mountpoint.mkdir()
        make_tree(mirror, 20_000)
        codes = {"this checkout": REPO, revision: old}
        cold: dict[str, list[float]] = {name: [] for name in ["native", *codes]}
        again: dict[str, list[float]] = {name: [] for name in cold}
        for _ in range(runs):
            drop_caches()
            cold["native"].append(timed(lambda: walk_stat(mirror / "Isaac")))
            again["native"].append(timed(lambda: walk_stat(mirror / "Isaac")))
            for name, code in codes.items():
                with Mount(mountpoint, mirror, code=code):
                    drop_caches()
                    cold[name].append(timed(lambda: walk_stat(mountpoint / "Isaac")))
                    again[name].append(timed(lambda: walk_stat(mountpoint / "Isaac")))
        for name in codes:
            for label, table in (("cold", cold), ("second walk", again)):
                rows.append((f"os.walk + stat, 20,000 files, {label}, {name}", f"{median(table['native']):.3f} s",
                             f"{median(table[name]):.3f} s",
                             f"{median(table[name]) / median(table['native']):.2f}x native"))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)


def bench_memory(work: Path, rows: list[tuple[str, str, str, str]]) -> None:
    mirror, mountpoint = work / "mirror60k", work / "mnt60k"
    mirror.mkdir()
    mountpoint.mkdir()
    make_tree(mirror, 60_000)
    with Mount(mountpoint, mirror) as mount:
        count = walk_stat(mountpoint / "Isaac")
        rss = peak_rss_mb(mount.pid)
    rows.append((f"daemon peak RSS, {count:,}-file mirror walked", "", f"{rss:.0f} MB", "target < 200 MB"))


COPY = r"""
import os, sys, time, omni.client as oc
oc.initialize()
url, dest = sys.argv[1], sys.argv[2]
oc.stat(url)  # connect first: the daemon also has a warm connection from listing the folder
started = time.perf_counter()
result = oc.copy_file(url, oc.make_file_url(dest), behavior=oc.CopyBehavior.OVERWRITE)
print(time.perf_counter() - started if result == oc.Result.OK else -1)
"""


def bench_first_open(work: Path, runs: int, rows: list[tuple[str, str, str, str]]) -> None:
    source = work / "s3src"
    sizes = {"small.bin": 1 * MiB, "large.bin": 100 * MiB}
    (source / "Isaac" / "Props").mkdir(parents=True)
    for name, size in sizes.items():
        (source / "Isaac" / "Props" / name).write_bytes(os.urandom(size))
    server = start_s3(source, work / "s3")
    env = {**ENV, **server.env}
    try:
        for name, size in sizes.items():
            url = f"{server.url}/Isaac/Props/{name}"
            baseline, ours = [], []
            for run in range(runs):
                out = subprocess.run([sys.executable, "-c", COPY, url, str(work / f"copy-{run}.bin")],
                                     check=True, capture_output=True, text=True, env=env)
                baseline.append(float(out.stdout.strip().splitlines()[-1]))
                mirror, mountpoint = work / f"fo-mirror-{name}-{run}", work / f"fo-mnt-{name}-{run}"
                mirror.mkdir()
                mountpoint.mkdir()
                with Mount(mountpoint, mirror, "--mode", "permissive", "--upstream", server.url, env=server.env):
                    target = mountpoint / "Isaac" / "Props" / name
                    os.stat(target)  # folder listings are metadata; time the fetch-on-open itself
                    ours.append(timed(lambda: read_all(target)))  # noqa: B023
            b, o = median(baseline), median(ours)
            verdict = f"{o / b:.2f}x" if size > 10 * MiB else f"{(o - b) * 1000:+.1f} ms"
            rows.append((f"permissive first open + read, {size // MiB} MiB (S3 loopback)",
                         f"{b:.3f} s (copy_file)", f"{o:.3f} s", verdict))
    finally:
        server.stop()


def write_markdown(rows: list[tuple[str, str, str, str]], runs: int, against: str | None = None) -> str:
    command = f"python bench/bench_mount.py --runs {runs}" + (f" --against {against}" if against else "")
    lines = [f"Measured by `{command}` on {time.strftime('%Y-%m-%d')},"
             f" {os.cpu_count()} cores, kernel {os.uname().release}; medians of {runs} runs.", "",
             "| workload | baseline | isaacfs | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["local", "memory", "first-open"])
    parser.add_argument("--against", metavar="REV",
                        help="also walk through the code of git revision REV, interleaved (a same-run A/B)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--read-ahead-kb", type=int,
                        help="mount read-ahead (128 is what a user without root gets)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it drops the page cache between runs)")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="isaacfs-bench-", dir="/var/tmp") as temp:
        work = Path(temp)
        if args.read_ahead_kb:
            (work / "config.toml").write_text(f"read_ahead_kb = {args.read_ahead_kb}\n")
            ENV["ISAACFS_CONFIG"] = str(work / "config.toml")
        if args.only in (None, "local"):
            bench_local(work, args.runs, rows)
        if args.against:
            bench_walk_against(work, args.runs, args.against, rows)
        if args.only in (None, "first-open"):
            bench_first_open(work, args.runs, rows)
        if args.only in (None, "memory"):
            bench_memory(work, rows)
    table = write_markdown(rows, args.runs, args.against)
    print(table)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "mount.json").write_text(json.dumps(rows, indent=1))
    if not args.no_write and args.only is None:
        write_section("bench_mount", f"{table}\n", "isaacfs against native disk")


if __name__ == "__main__":
    main()
