"""Run the fault-injection tests and write their table to docs/faults.md.

Run as root (real mounts, tmpfs): .venv/bin/python bench/fault_table.py [--lookups 1000000]
Each row is one test: what fault, whether isaacfs survived it (the test passed), what the
user saw (recorded by the test), and bytes wrong in the mirror afterwards (must be 0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SAYS = "test_bad_input.py::test_a_permissive_mount_says_at_once_what_its_upstream_answered"
# test id -> (fault, what the test itself proves when it records nothing)
FAULTS = {
    "test_faults.py::test_latency_200ms": ("upstream latency, 200 ms per connection", ""),
    "test_faults.py::test_body_cut_short_or_reset[cut]": ("body cut short (FIN after 256 KiB)", ""),
    "test_faults.py::test_body_cut_short_or_reset[reset]": ("connection reset mid-body (RST after 256 KiB)", ""),
    "test_faults.py::test_server_errors[500]": ("HTTP 500 answers", ""),
    "test_faults.py::test_server_errors[503]": ("HTTP 503 answers", ""),
    "test_faults.py::test_corrupt_body_is_caught": ("body of the right length with one byte flipped", ""),
    "test_fetch.py::test_dead_upstream_mirror_keeps_serving_and_misses_fail_fast[stall]": (
        "a stall that never answers", "EIO within 10 s; mirrored files served in < 1 s with the page cache dropped"),
    "test_fetch.py::test_dead_upstream_mirror_keeps_serving_and_misses_fail_fast[refuse]": (
        "a refused connection", "EIO within 10 s; mirrored files served in < 1 s with the page cache dropped"),
    "test_fetch.py::test_mount_starts_while_upstream_is_down": (
        "upstream down at mount time", "mounted within 10 s, empty until it answers"),
    "test_fetch.py::test_kill_9_mid_download_leaves_no_partial_file": (
        "kill -9 of the daemon during a lazy fetch; restart",
        "no partial file; the next mount detaches the stale mount, cleans tmp, fetches it whole (sha256 equal)"),
    "test_fetch.py::test_stop_during_download_discards_it_cleanly": (
        "SIGTERM during a lazy fetch", "download discarded, tmp empty, clean unmount"),
    "test_faults.py::test_kill_9_during_warm_then_verify": ("kill -9 of a warm; rerun; verify", ""),
    "test_fetch.py::test_full_mirror_disk_fails_the_fetch_cleanly": (
        "mirror on a 20 MiB tmpfs that a fetch would fill", "ENOSPC to the reader, nothing partial, still serves"),
    "test_warm.py::test_warm_stops_on_a_full_disk_without_partial_files": (
        "a warm that fills a 20 MiB tmpfs", "stopped with a message, exit 1, nothing partial"),
    "test_faults.py::test_64_readers_across_1000_cold_files": ("64 concurrent readers across 1,000 cold files", ""),
    "test_faults.py::test_wide_listing_long_and_too_long_names": (
        "a folder of 10,000 entries, a 255-byte name, a 256-byte name", ""),
    "test_fetch.py::test_hostile_names_in_listing_are_skipped": (
        "hostile names in a listing (.., ., empty, slash)", "skipped with a log line, never followed"),
    "test_fetch.py::test_32_processes_one_download": (
        "32 processes opening one cold file", "one download; server body bytes == file size"),
    "test_faults.py::test_memory_stays_flat_under_a_lookup_storm": ("a storm of missing-path lookups", ""),
    "test_survival.py::test_ctrl_c_on_a_warm_through_the_mount_costs_only_that_warm": (
        "Ctrl-C on `isaacfs warm` through a live mount, 3 times",
        "each warm ended; the same daemon served a mirrored read in < 1 s (page cache dropped) after each"),
    "test_survival.py::test_names_that_are_not_utf8_are_served_or_skipped": (
        "file names that are not UTF-8: in a file: upstream, in an adopted mirror (ls -la, xattrs)",
        "listed and read; xattr URL percent-encoded; adoption finished; mirrored read in < 1 s"),
    "test_survival.py::test_an_upstream_that_is_itself_a_mirror": (
        "an upstream whose root holds .isaacfs/", "state folder never shown; files served; read in < 1 s"),
    "test_survival.py::test_a_broken_mirror_gives_errnos_not_a_dead_mount": (
        "a symlink loop and a 200-byte folder name in the mirror", "ls answers; mirrored read in < 1 s"),
    "test_survival.py::test_hostile_control_clients": (
        "control socket: 60 KB of nested JSON; 2,000 connections held open",
        "error line; daemon held < 200 fds during the flood, read in < 1 s, status answered after"),
    "test_survival.py::test_umount_of_a_wedged_daemon_works": (
        "a wedged daemon (SIGSTOP): isaacfs umount", "killed, connection aborted, detached in < 10 s; remounted"),
    "test_survival.py::test_special_files_and_links_out_of_a_file_upstream_are_not_assets": (
        "a FIFO, /etc/shadow and /etc symlinked into a file: upstream",
        "never listed or fetched; opens fail in < 5 s; links within the tree served"),
    "test_survival.py::test_a_hung_network_file_system_upstream_is_a_stall_not_a_wait": (
        "a file: upstream whose reads hang mid-file (a hung NFS server), 200 MiB file, stall timeout 3 s",
        "EIO in < 30 s (not after 213 s); mirrored read in < 1 s meanwhile; umount in < 10 s, remount works"),
    "test_survival.py::test_names_the_kernel_forgets_are_freed": (
        "5,000 listed names, then the kernel drops its caches",
        "the daemon freed > 4,000 names; the folder loads again"),
    "test_store.py::test_index_queries_run_on_a_copy_while_the_loop_goes_on": (
        "status/manifest/verify scanning a 20,000-file index (unit tier)",
        "scan in a worker thread on a copy; the loop kept turning and writing"),
    "test_priorities.py::test_a_reader_behind_a_warm_waits_one_transfer": (
        "a reader's cold open behind a 100-file warm (unit tier)", "waited < 3 transfers, not the whole queue"),
    "test_same_object.py::test_an_object_replaced_mid_transfer_is_never_installed_as_a_mix": (
        "an object replaced upstream while its parts stream, ETags not MD5s (unit tier)",
        "later parts refused by If-Match, listed afresh, the new version installed whole: never a mix"),
    "test_same_object.py::test_an_answer_must_be_of_the_object_and_range_asked_for": (
        "answers of another ETag, of the wrong range, of a grown or shrunk object (unit tier)",
        "each refused by its ETag or Content-Range, never written"),
    "test_same_object.py::test_a_full_disk_while_streaming_is_enospc": (
        "the mirror disk fills while a large file streams (unit tier)",
        "ENOSPC to the reader, not a broken connection; not tried again; nothing partial"),
    "test_same_object.py::test_pages_a_closed_reader_was_served_are_dropped_when_the_check_fails": (
        "a reader reads part of a streaming file and closes before its check fails (unit tier)",
        "the kernel is told to drop the file's pages all the same"),
    "test_operations.py::test_a_reader_whose_reads_come_out_of_order_gets_eio_when_the_check_fails": (
        "a corrupt large file read through by a reader whose reads come out of order (unit tier)",
        "EIO at the read that completes the file (it used to end with exit 0)"),
    "test_pipeline.py::test_a_flood_of_large_cold_reads_stays_inside_the_memory_budget": (
        "8 cold large files at once under a memory budget of two parts' buffers (unit tier)",
        "every file whole and right; the budget never exceeded"),
    "test_prefetch.py::test_a_layer_naming_90000_assets_queues_only_its_budget": (
        "a layer naming 90,000 assets, then 1,000 layers (unit tier)",
        "its budget of 100 queued, counted over budget once; what the prefetcher remembers stays bounded"),
    "test_control_server.py::test_a_client_that_stops_reading_costs_a_bounded_buffer": (
        "a control client that never reads its events (unit tier)",
        "the job ran to its end; events past 10,000 dropped and counted, not queued"),
    "test_fetch.py::test_the_daemon_gives_memory_back_after_32_concurrent_cold_large_reads": (
        "32 concurrent cold reads of 24 MiB files", "idle daemon RSS under 150 MB afterwards"),
    "test_survival.py::test_a_hung_file_system_inside_the_mirror_costs_its_readers_eio_not_the_mount": (
        "a part of the mirror on a file system whose reads hang (bind-mounted into it), stall timeout 3 s",
        "its reader got EIO in < 20 s; other files read in < 1 s and the folder listed meanwhile; clean umount"),
    "test_run.py::test_a_permissive_run_finds_a_new_folder_under_mirrored_folders_a_strict_run_walked": (
        "a strict run walks mirrored folders first, then a permissive run asks for a new folder under them",
        "the permissive run got the file (it used to get ENOENT for the folder)"),
    "test_tiers.py::test_a_bad_object_in_the_site_is_refused_by_the_manifests_hash_and_fetched_from_the_cloud": (
        "a site store's object flipped, truncated or stale behind its manifest (unit tier)",
        "refused by the manifest's hash, fetched from the next tier, counted: 0 wrong bytes installed"),
    "test_tiers.py::test_a_dead_site_fails_over_at_once_later_requests_skip_it_and_it_is_used_again": (
        "the site store refuses (a tier in front of the cloud) (unit tier)",
        "the cloud served at once; later requests skipped the store; used again once it answered"),
    f"{SAYS}[file:///nonexistent/misspelt-the upstream folder /nonexistent/misspelt does not exist]": (
        "a misspelt file: upstream at mount time", "mounted, saying the folder does not exist; status the same"),
    f"{SAYS}[https://127.0.0.1:1/Assets/Isaac/5.1-connection refused]": (
        "an upstream host that refuses at mount time", "mounted, saying connection refused; status the same"),
}
UNIT_TIER = {"test_priorities.py", "test_store.py", "test_same_object.py", "test_operations.py", "test_pipeline.py",
             "test_prefetch.py", "test_control_server.py", "test_tiers.py"}  # rows proven in tests/unit (no mount)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp()) / "faults.xml"
    ids = [f"tests/{'unit' if test_id.split('::')[0] in UNIT_TIER else 'mount'}/{test_id}" for test_id in FAULTS]
    env = {**os.environ, "ISAACFS_TEST_LOOKUPS": str(args.lookups)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *ids],
                   cwd=REPO, env=env, check=False)
    results: dict[str, tuple[bool, dict[str, str | None], float]] = {}
    for case in ET.parse(report).iter("testcase"):
        module = Path(case.get("file") or case.get("classname", "").split(".")[-1] + ".py").name
        name = f"{module}::{case.get('name')}"  # a parameter may hold a slash: the name is kept whole
        failed = any(child.tag in ("failure", "error") for child in case)
        props = {p.get("name") or "": p.get("value") for p in case.iter("property")}
        results[name] = (failed, props, float(case.get("time") or 0))
    rows = []
    for test_id, (fault, proven) in FAULTS.items():
        # A row may name a parametrized test without its parameters: every case of it counts.
        cases = [found for name, found in results.items() if name == test_id or name.startswith(f"{test_id}[")]
        failed = not cases or any(case[0] for case in cases)
        props = cases[0][1] if len(cases) == 1 else {}
        seconds = sum(case[2] for case in cases)
        survived = "no (test failed)" if failed else "yes"
        seen = props.get("seen") or proven
        wrong = props.get("bytes_wrong", "not measured by this test (it asserts what the previous column says)")
        rows.append(f"| {fault} | {survived} | {seen} | {wrong} | `{test_id}` ({seconds:.0f} s) |")
    text = (f"# Fault injection\n\nMeasured by `python bench/fault_table.py --lookups {args.lookups}` on"
            f" {date.today().isoformat()} (root, this 2-core VM). Every row is a test in `tests/mount/`"
            " (or `tests/unit/`) that CI runs"
            " (CI's lookup storm is 200,000 lookups). A TCP fault proxy sits between isaacfs (its HTTP"
            " pool, and omni.client where it is used) and a moto S3 server on loopback"
            " (`tests/support/faultproxy.py`); the server can answer 5xx or flip a byte"
            " (`tests/support/s3server.py`). After each fault, every file in the mirror is compared with the"
            " upstream by sha256: **bytes wrong** is the size of files that differ.\n\n"
            "| fault | survived | what the user saw | bytes wrong | test |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    if not args.no_write:
        (REPO / "docs" / "faults.md").write_text(text)


if __name__ == "__main__":
    main()
