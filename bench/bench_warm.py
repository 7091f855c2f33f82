"""isaacfs warm vs `rclone copy` of the same loopback S3 bucket, in the same run; closure vs category.

Run: .venv/bin/python bench/bench_warm.py [--files 5000] [--mb 1000] [--runs 3]
Needs rclone (Debian: apt-get install rclone). Prints a table of medians and writes it to
docs/benchmarks.md between the bench_warm markers.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from tests.support.helpers import S3_PREFIX, copy_sample, start_s3  # noqa: E402
from tests.support.s3server import BUCKET  # noqa: E402

ENV = {**os.environ, "OMNICLIENT_HUB_MODE": "disabled"}


def make_tree(root: Path, files: int, total_mb: int) -> tuple[int, int]:
    """A category of robots: many small USD layers and a few large textures (~total_mb)."""
    rng = random.Random(7)
    large = max(1, files // 50)
    large_size = total_mb * 1_000_000 * 9 // 10 // large
    small_size = max(1, total_mb * 1_000_000 // 10 // (files - large))
    written = 0
    for index in range(files):
        folder = root / "Isaac" / "Robots" / f"Vendor{index % 10}" / f"Robot{index % 100}"
        folder.mkdir(parents=True, exist_ok=True)
        size = large_size if index < large else rng.randint(small_size // 2, small_size * 3 // 2)
        name = f"texture_{index}.png" if index < large else f"layer_{index}.usda"
        # Layers are real (if empty) USD text, so --closure can read every one it meets.
        body = os.urandom(size) if index < large else b"#usda 1.0\n# " + os.urandom(size // 2).hex().encode() + b"\n"
        (folder / name).write_bytes(body)
        size = len(body)
        written += size
    # Each robot gets a root layer naming its own files, so --closure has a real asset to follow.
    for robot in sorted({p.parent for p in (root / "Isaac" / "Robots").rglob("*_*.*")}):
        names = sorted(p.name for p in robot.iterdir() if p.is_file())
        attributes = "".join(f'    asset file{i} = @./{name}@\n' for i, name in enumerate(names))
        (robot / "robot.usda").write_text(f'#usda 1.0\ndef Xform "Robot"\n{{\n{attributes}}}\n')
        files += 1
        written += (robot / "robot.usda").stat().st_size
    return files, written


def rclone_config(path: Path, port: int) -> None:
    path.write_text(f"""[s3]
type = s3
provider = Other
env_auth = false
access_key_id = test
secret_access_key = test
region = us-west-2
endpoint = https://127.0.0.1:{port}
force_path_style = true
""")


def settle_disk() -> None:
    """Start each run with no dirty pages left by the one before (they would slow its writes)."""
    subprocess.run(["sync"], check=True)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def count(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and ".isaacfs" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16, help="parallel transfers, the same for both tools")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if shutil.which("rclone") is None:
        raise SystemExit("rclone is not installed (apt-get install rclone)")
    work = Path(tempfile.mkdtemp(prefix="isaacfs-bench-warm-"))
    server = None
    try:
        source = copy_sample(work / "source")
        files, size = make_tree(source, args.files, args.mb)
        print(f"tree: {files} files, {size / 1e6:.0f} MB (+ the 14-file sample)", flush=True)
        server = start_s3(source, work / "s3")
        env = {**ENV, **server.env}
        # rclone's AWS SDK rejects a custom CA bundle with its transport; Go reads SSL_CERT_FILE instead.
        env.pop("AWS_CA_BUNDLE", None)
        config = work / "rclone.conf"
        rclone_config(config, server.port)
        rclone = ["rclone", "--config", str(config), "copy", "--transfers",
                  str(args.jobs), "--checkers", str(args.jobs), f"s3:{BUCKET}/{S3_PREFIX}/Isaac/Robots"]
        isaacfs = [sys.executable, "-m", "isaacfs", "warm", "--upstream", server.url, "--categories", "Robots",
                   "--jobs", str(args.jobs)]
        category = (0, 0)
        times: dict[str, list[float]] = {key: [] for key in ("rclone", "isaacfs", "isaacfs-noop", "rclone-noop",
                                                             "rclone-durable", "isaacfs-durable")}
        for run in range(args.runs):
            for tool in ("rclone", "isaacfs") if run % 2 == 0 else ("isaacfs", "rclone"):
                target = work / f"{tool}-{run}"
                if tool == "rclone":
                    command = [*rclone, str(target / "Isaac" / "Robots")]
                else:
                    command = [*isaacfs, "--mirror", str(target)]
                settle_disk()
                times[tool].append(timed(command, env))
                # Until the data is on disk: isaacfs fsyncs each file before it counts as mirrored;
                # rclone does not, so its files are still being written back when it returns.
                times[f"{tool}-durable"].append(times[tool][-1] + timed(["sync"], env))
                times[f"{tool}-noop"].append(timed(command, env))
                got = count(target)
                print(f"run {run + 1} {tool}: {times[tool][-1]:.2f}s (+sync {times[tool + '-durable'][-1]:.2f}s),"
                      f" no-op {times[tool + '-noop'][-1]:.2f}s,"
                      f" {got[0]} files {got[1] / 1e6:.0f} MB", flush=True)
                if got[0] < files:
                    raise SystemExit(f"{tool} copied {got[0]} of {files} files")
                if tool == "isaacfs":
                    category = got
                shutil.rmtree(target)
        # Closure of one robot vs its whole category.
        closure_dir = work / "closure"
        closure_time = timed([sys.executable, "-m", "isaacfs", "warm", "--upstream", server.url, "--mirror",
                              str(closure_dir), "--closure", "Isaac/Robots/Vendor0/Robot0/robot.usda"], env)
        closure = count(closure_dir)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {key: statistics.median(values) for key, values in times.items()}
    rows = [
        ("warm of Robots from loopback S3, cold", f"{med['rclone']:.2f} s ({files / med['rclone']:.0f} files/s,"
         f" {size / 1e6 / med['rclone']:.0f} MB/s)", f"{med['isaacfs']:.2f} s ({files / med['isaacfs']:.0f} files/s,"
         f" {size / 1e6 / med['isaacfs']:.0f} MB/s)", f"{med['isaacfs'] / med['rclone']:.2f}x of rclone",
         "<= 1.0"),
        ("same, until the data is on disk (tool + sync)", f"{med['rclone-durable']:.2f} s",
         f"{med['isaacfs-durable']:.2f} s", f"{med['isaacfs-durable'] / med['rclone-durable']:.2f}x of rclone",
         "<= 1.0"),
        ("second, no-op run", f"{med['rclone-noop']:.2f} s", f"{med['isaacfs-noop']:.2f} s",
         f"{100 * med['isaacfs-noop'] / med['isaacfs']:.1f}% of isaacfs's first run", "< 5%"),
        ("--closure of one robot (Robot0/robot.usda) vs its category Robots",
         f"category: {category[0]:,} files, {category[1] / 1e6:,.0f} MB, {med['isaacfs']:.1f} s",
         f"closure: {closure[0]} files, {closure[1] / 1e6:,.1f} MB, {closure_time:.1f} s",
         f"{100 * closure[1] / category[1]:.1f}% of the bytes", "only what it needs"),
    ]
    header = ("| workload | rclone copy / baseline | isaacfs warm | ratio | target |\n"
              "|---|---|---|---|---|\n")
    table = header + "".join(f"| {' | '.join(row)} |\n" for row in rows)
    note = (f"\n`python bench/bench_warm.py --files {args.files} --mb {args.mb} --runs {args.runs} --jobs {args.jobs}`,"
            f" medians of {args.runs} runs, both tools at {args.jobs} parallel transfers, tools alternating order.\n")
    print(table + note)
    if not args.no_write:
        write_section("bench_warm", table + note, "isaacfs warm vs rclone copy")


if __name__ == "__main__":
    main()
