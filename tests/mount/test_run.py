"""`isaacfs run`: one command's own mode on a shared mount, its misses on its own terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import FRANKA, GO2, POLICY, Mounts, Upstream, isaacfs, sha256, wait_for

READ = ("import sys\ntry:\n    open(sys.argv[1], 'rb').read(); print('read')\n"
        "except OSError as e:\n    print('error', e.errno)\n")


def run(mountpoint: Path, mounts: Mounts, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isaacfs", "run", "--mount", str(mountpoint), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **mounts.env})


def test_a_strict_run_beside_a_plain_process_on_a_permissive_mount(
        file_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    assert sha256(mountpoint / POLICY) == sha256(upstream_tree / POLICY)  # mirrored: both see it
    # Nested: a shell that starts Python that opens the file.
    strict = run(mountpoint, mounts, "--offline", "--", "sh", "-c",
                 f"{sys.executable} -c \"{READ}\" {mountpoint / GO2}; {sys.executable} -c \"{READ}\""
                 f" {mountpoint / POLICY}")
    assert strict.returncode == 0, strict.stderr
    assert strict.stdout.split("\n")[:2] == ["error 2", "read"]
    assert "[isaacfs] ASSET NOT FOUND (offline mode)" in strict.stderr
    assert f"Missing:  {GO2}" in strict.stderr
    assert f"isaacfs warm {mountpoint} --categories IsaacLab/Robots --subset Unitree" in strict.stderr
    assert "missed                          1 file" in strict.stderr and "--manifest" in strict.stderr
    # The plain process, right after: the strict run's answer was not kept by the kernel.
    assert sha256(mountpoint / GO2) == sha256(upstream_tree / GO2)


def test_a_permissive_run_on_a_strict_mount(file_upstream: Upstream, upstream_tree: Path, mountpoint: Path,
                                            mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream)  # strict
    assert not (mountpoint / FRANKA).exists()
    fetched = run(mountpoint, mounts, "--offline-permissive", "--", sys.executable, "-c", READ,
                  str(mountpoint / FRANKA))
    assert fetched.returncode == 0 and fetched.stdout.strip() == "read", fetched.stderr
    assert f"[isaacfs] warning: {FRANKA} was not in the mirror; fetched it" in fetched.stderr
    assert "fetched from upstream           1 file" in fetched.stderr
    # Others keep the mount's strict mode; the file is now mirrored, so they see it.
    assert sha256(mountpoint / FRANKA) == sha256(upstream_tree / FRANKA)
    with pytest.raises(FileNotFoundError):
        (mountpoint / GO2).read_bytes()  # not mirrored: a plain process still gets strict mode


def test_the_command_s_exit_code_signals_and_environment(file_upstream: Upstream, mountpoint: Path,
                                                        mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream)
    assert run(mountpoint, mounts, "--", "sh", "-c", "exit 7").returncode == 7
    shown = run(mountpoint, mounts, "--", "sh", "-c", "echo $ISAACSIM_ASSET_ROOT")
    assert shown.stdout.strip() == str(mountpoint)
    child = subprocess.Popen([sys.executable, "-m", "isaacfs", "run", "--mount", str(mountpoint), "--", "sleep", "30"],
                             env={**os.environ, **mounts.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)
    child.send_signal(signal.SIGTERM)  # reaches the command, which dies of it
    assert child.wait(timeout=30) == 128 + signal.SIGTERM


def test_ctrl_c_reaches_the_command_and_the_run_ends_cleanly(file_upstream: Upstream, mountpoint: Path,
                                                             mounts: Mounts) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: `run` and its
    command. The command gets it (here it cleans up and exits 3); `run` outlives it, prints
    its summary, leaves no registration, and exits with the command's code."""
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    marker = mountpoint.parent / "ready"
    script = ("import signal, sys, time, pathlib\n"
              "def stop(*_):\n    print('command: cleaned up', flush=True); sys.exit(3)\n"
              "signal.signal(signal.SIGINT, stop)\n"
              f"pathlib.Path({str(marker)!r}).write_text('x')\n"
              "time.sleep(60)\n")
    runner = subprocess.Popen([sys.executable, "-m", "isaacfs", "run", "--offline", "--mount", str(mountpoint), "--",
                               sys.executable, "-c", script], env={**os.environ, **mounts.env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(marker.exists, timeout=30)
        os.killpg(runner.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 3, out + err
    assert "command: cleaned up" in out
    assert "Traceback" not in err and "served" in err  # the summary table, no KeyboardInterrupt
    wait_for(lambda: "run of pid" in mounts.log(mountpoint) and " ended:" in mounts.log(mountpoint), timeout=20)
    assert (mountpoint / GO2).read_bytes()  # the mount goes on, in its own (permissive) mode


def test_a_run_whose_root_dies_is_cleaned_up(file_upstream: Upstream, mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    marker = mountpoint.parent / "child.pid"
    runner = subprocess.Popen([sys.executable, "-m", "isaacfs", "run", "--offline", "--mount", str(mountpoint), "--",
                               "sh", "-c", f"echo $$ > {marker}; sleep 60"], env={**os.environ, **mounts.env},
                              start_new_session=True)
    wait_for(lambda: marker.exists() and marker.read_text().strip() != "", timeout=30)
    runner.kill()  # the `run` itself crashes; its command goes on
    runner.wait()
    wait_for(lambda: "ended" in mounts.log(mountpoint) and "run of pid" in mounts.log(mountpoint), timeout=20)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    assert isaacfs("status", str(mountpoint), env=mounts.env).returncode == 0


def test_a_miss_box_appears_within_100_ms(file_upstream: Upstream, mountpoint: Path, mounts: Mounts,
                                         tmp_path: Path) -> None:
    mounts.mount(mountpoint, file_upstream)
    script = tmp_path / "probe.py"
    script.write_text(f"import time, sys\ntry:\n    open({str(mountpoint / GO2)!r})\nexcept OSError:\n"
                      "    print(time.time(), flush=True)\ntime.sleep(1)\n")
    runner = subprocess.Popen([sys.executable, "-m", "isaacfs", "run", "--offline", "--mount", str(mountpoint), "--",
                               sys.executable, str(script)], env={**os.environ, **mounts.env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert runner.stderr is not None and runner.stdout is not None
    failed_at = float(runner.stdout.readline())
    line = runner.stderr.readline()
    seen_at = time.time()
    assert line.startswith("=" * 70)
    assert seen_at - failed_at < 0.1, seen_at - failed_at
    runner.wait(timeout=30)


def test_offline_in_a_process_environment_works_without_run(file_upstream: Upstream, upstream_tree: Path,
                                                            mountpoint: Path, mounts: Mounts) -> None:
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    strict = subprocess.run([sys.executable, "-c", READ, str(mountpoint / FRANKA)], capture_output=True, text=True,
                            env={**os.environ, "OFFLINE": "1"}, timeout=60)
    assert strict.stdout.strip() == "error 2"  # OFFLINE=1: strict for this process only
    misses = isaacfs("misses", str(mountpoint), env=mounts.env)
    assert FRANKA in misses.stdout
    assert sha256(mountpoint / FRANKA) == sha256(upstream_tree / FRANKA)  # a plain process: permissive


def test_run_mounts_for_the_command_and_unmounts_after(file_upstream: Upstream, upstream_tree: Path,
                                                       mountpoint: Path, mounts: Mounts) -> None:
    from isaacfs.system import mounts as table

    env = {**os.environ, **mounts.env, "ISAACFS_UPSTREAM": file_upstream.url}
    done = subprocess.run([sys.executable, "-m", "isaacfs", "run", "--offline-permissive", "--mount", str(mountpoint),
                           "--", sys.executable, "-c", READ, str(mountpoint / GO2)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "read", done.stderr
    assert table.find_mount(mountpoint) is None  # mounted for the run only
    assert (mountpoint / GO2).read_bytes() == (upstream_tree / GO2).read_bytes()  # and the mirror kept it


def test_a_permissive_run_fetches_after_a_strict_run_looked_at_the_same_folder(
        any_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    """The order of issue 22: a strict run's miss, then the mount switched to strict, then a
    permissive run in the same folder: it gets its own mode's answer, the file."""
    there = "Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda"
    missing = "Isaac/Props/Blocks/DexCube/missing.usda"
    mounts.mount(mountpoint, any_upstream, "--mode", "permissive")
    strict = run(mountpoint, mounts, "--offline", "--", "cat", str(mountpoint / missing))
    assert strict.returncode != 0 and "No such file" in strict.stderr, strict.stderr
    assert isaacfs("mode", "strict", str(mountpoint), env=mounts.env).returncode == 0
    permissive = run(mountpoint, mounts, "--offline-permissive", "--", "cat", str(mountpoint / there))
    assert permissive.returncode == 0, permissive.stderr
    assert sha256(mountpoint / there) == sha256(upstream_tree / there)


def test_a_permissive_run_finds_a_new_folder_under_mirrored_folders_a_strict_run_walked(
        any_upstream: Upstream, upstream_tree: Path, mountpoint: Path, mounts: Mounts) -> None:
    """Issue 22's first finding as reported: the folders down to A are mirrored, A/b is not.
    A strict run walked them first (from the mirror alone); a permissive run then got ENOENT
    for the folder A/b. It gets the file."""
    kept = "Isaac/Props/Blocks/DexCube/dex_cube_instanceable.usda"
    wanted = "Isaac/Props/Odd Names/a b%+#é.usda"
    (mountpoint / kept).parent.mkdir(parents=True)
    (mountpoint / kept).write_bytes((upstream_tree / kept).read_bytes())  # an earlier warm's
    mounts.mount(mountpoint, any_upstream, "--mode", "permissive")
    strict = run(mountpoint, mounts, "--offline", "--", "cat", str(mountpoint / kept))
    assert strict.returncode == 0, strict.stderr
    permissive = run(mountpoint, mounts, "--offline-permissive", "--", "cat", str(mountpoint / wanted))
    assert permissive.returncode == 0, permissive.stderr
    assert sha256(mountpoint / wanted) == sha256(upstream_tree / wanted)


def test_the_run_s_mode_is_in_the_command_s_environment(file_upstream: Upstream, mountpoint: Path,
                                                        mounts: Mounts) -> None:
    """A child that leaves the run's process tree (a double fork) keeps the mode through it."""
    mounts.mount(mountpoint, file_upstream, "--mode", "permissive")
    shown = run(mountpoint, mounts, "--offline", "--", "sh", "-c", 'echo "$OFFLINE/$OFFLINE_PERMISSIVE"')
    assert shown.stdout.strip() == "1/", shown.stderr
    shown = run(mountpoint, mounts, "--offline-permissive", "--", "sh", "-c", 'echo "$OFFLINE/$OFFLINE_PERMISSIVE"')
    assert shown.stdout.strip() == "/1", shown.stderr


LIST = "import os, sys; print(' '.join(sorted(os.listdir(sys.argv[1]))))"


def test_the_binding_was_rebuilt_with_every_patch_of_scripts_patches() -> None:
    """scripts/bootstrap rebuilds pyfuse3 with scripts/patches/; where that fails it goes on
    (isaacfs works on the plain binding), so a patch that no longer applies would pass every
    other test, slower. This one says so."""
    import importlib.metadata

    import pyfuse3

    version = importlib.metadata.version("pyfuse3")
    patches = sorted(Path(__file__).resolve().parents[2].glob(f"scripts/patches/pyfuse3-{version}-*.patch"))
    if not patches:
        pytest.skip(f"scripts/patches/ has no patches for pyfuse3 {version}")
    assert [patch.name for patch in patches] == [f"pyfuse3-{version}-opendir-cache-readdir.patch",
                                                 f"pyfuse3-{version}-session-loop.patch"]
    assert getattr(pyfuse3, "OPENDIR_CACHE_READDIR", False), "run scripts/build-pyfuse3 (see its output)"
    assert getattr(pyfuse3, "SESSION_LOOP_KEEPS_READER", False), "run scripts/build-pyfuse3 (see its output)"


def test_a_folder_listing_the_kernel_keeps_is_each_process_s_own_and_follows_the_mirror(
        file_upstream: Upstream, tmp_path: Path, mountpoint: Path, mounts: Mounts) -> None:
    """With the patched pyfuse3 (scripts/build-pyfuse3) the kernel keeps a folder's entries
    between opens (FOPEN_CACHE_DIR). What it keeps for the mount's strict mode must never
    answer a permissive run, nor the other way round, and a file a warm puts in the mirror
    must show at the next listing. (On the plain binding the same answers hold; they are
    listed afresh each time.)"""
    mounts.mount(mountpoint, file_upstream)  # strict, an empty mirror
    go2 = Path(GO2)
    manifest = tmp_path / "one.txt"

    def warm(*names: str) -> None:
        manifest.write_text("".join(f"{go2.parent / name}\n" for name in names))
        result = isaacfs("warm", str(mountpoint), "--manifest", str(manifest), env=mounts.env)
        assert result.returncode == 0, result.stdout + result.stderr

    def listed() -> list[str]:
        return sorted(os.listdir(mountpoint / go2.parent))

    warm(go2.name)
    assert listed() == [go2.name]
    assert listed() == [go2.name]  # the kernel's kept entries, where the binding allows it
    permissive = run(mountpoint, mounts, "--offline-permissive", "--", sys.executable, "-c", LIST,
                     str(mountpoint / go2.parent))
    assert permissive.returncode == 0, permissive.stderr
    assert permissive.stdout.split() == sorted(["Props", "Textures", "go2.usd", "go2_physics.usda",
                                                "go2_sensors.usda"])
    assert listed() == [go2.name]  # the strict process is not handed the permissive run's entries
    warm("go2_physics.usda")
    assert listed() == [go2.name, "go2_physics.usda"]  # the warm's file shows at once
