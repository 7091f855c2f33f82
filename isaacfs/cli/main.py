"""The isaacfs command: thin wrappers over the daemon and the mount helpers."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..core import config
from ..core.errors import UserError
from ..core.types import MODES
from ..system import lifecycle, logs, mounts

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup



def _mountpoint(text: str | None) -> Path:
    """The mount a command acts on: the argument, else $ISAACFS_MOUNTPOINT, else the default."""
    return config.mountpoint(text, os.environ)


def _add_mount_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", metavar="URL", action="append",
                        help="asset root URL (https S3 root, s3://BUCKET/PREFIX?endpoint=URL, omniverse://, file:,"
                        " or a folder); several, in tier order: the first is asked first")
    parser.add_argument("--release", metavar="X.Y",
                        help="the NVIDIA cloud asset root of this Isaac Sim release"
                        f" (default {config.DEFAULT_RELEASE}); with --upstream, the last tier")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--mode", choices=MODES, help="strict (default): only the mirror;"
                      " permissive: fetch misses from the upstream")
    mode.add_argument("--offline", dest="mode", action="store_const", const="strict", help="same as --mode strict")
    mode.add_argument("--offline-permissive", dest="mode", action="store_const", const="permissive",
                      help="same as --mode permissive")
    parser.add_argument("--mirror", metavar="DIR", help="keep the mirror in DIR (default: the mountpoint's own folder)")
    parser.add_argument("--upstream-timeout", type=float, metavar="S", help="seconds an upstream lookup may take")
    parser.add_argument("--listing-ttl", type=float, metavar="S", help="seconds an upstream listing is trusted")
    parser.add_argument("--jobs", dest="fetch_jobs", type=int, metavar="N", help="parallel downloads")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--new-upstream", action="store_true", default=None,
                        help="use a mirror filled from another upstream: keep its files, list the new one afresh")


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", metavar="URL", action="append")
    parser.add_argument("--release", metavar="X.Y")
    parser.add_argument("--new-upstream", action="store_true", default=None,
                        help="use a mirror filled from another upstream: keep its files, list the new one afresh")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isaacfs", description="The Isaac Sim asset root, offline-first.")
    parser.add_argument("--version", action="version", version=f"isaacfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount the asset root at MOUNTPOINT")
    mount.add_argument("mountpoint", nargs="?", help=f"default {config.DEFAULT_MOUNTPOINT}")
    _add_mount_settings(mount)
    mount.add_argument("--foreground", action="store_true", help="stay in the foreground, log to stderr")
    mount.add_argument("--allow-other", action="store_true", default=None,
                       help="let other users (containers) read the mount")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    warm = commands.add_parser(
        "warm", help="fetch chosen assets into the mirror (through a live mount's daemon, or directly)")
    warm.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                      help="the live mount or mirror folder to fill (put it before the options;"
                      f" default $ISAACFS_MOUNTPOINT or {config.DEFAULT_MOUNTPOINT})")
    warm.add_argument("--categories", nargs="+", default=[], metavar="C",
                      help="folders under Isaac/ (Robots, IsaacLab/Robots), paths from the root"
                      " (NVIDIA/Materials), or all")
    warm.add_argument("--subset", nargs="+", default=[], metavar="S", help="keep only these sub-folders, at any depth")
    warm.add_argument("--manifest", metavar="FILE", help="fetch the paths listed in FILE (one per line; - for stdin)")
    warm.add_argument("--closure", nargs="+", default=[], metavar="PATH.usd",
                      help="fetch USD assets and everything they depend on, transitively")
    warm.add_argument("--from-misses", action="store_true", help="fetch what strict mode recorded as missing")
    warm.add_argument("--dry-run", action="store_true", help="list what would be fetched, from listings alone")
    warm.add_argument("--to", metavar="s3://BUCKET/PREFIX?endpoint=URL",
                      help="then copy the selection into this S3-compatible store and write its manifest"
                      " (a site tier: the cluster's nodes read it instead of the cloud)")
    _add_source(warm)
    warm.add_argument("--mirror", metavar="DIR", help="an unmounted mirror folder to fill (default: the"
                      " mount's: $ISAACFS_MIRROR, else the mountpoint's own folder)")
    warm.add_argument("--jobs", dest="fetch_jobs", type=int, metavar="N",
                      help="parallel downloads (default 8; files of 256 KiB or less go four to a place)")
    warm.add_argument("--upstream-timeout", type=float, metavar="S")
    warm.add_argument("--listing-ttl", type=float, metavar="S",
                      help="reuse upstream listings the mirror's index got within S seconds (default 86400;"
                      " 0 lists afresh: new upstream files become visible, on a live mount too)")

    verify = commands.add_parser("verify", help="check every mirrored file against the index")
    verify.add_argument("mountpoint", nargs="?", help="a live mount or a mirror folder")
    verify.add_argument("--mirror", metavar="DIR", help="the mirror or live mount")
    verify.add_argument("--repair", action="store_true", help="fetch wrong or missing files again")
    verify.add_argument("--against-upstream", dest="upstream_check", action="store_true",
                        help="also list the upstream afresh and report (with --repair: refetch) what changed there")
    _add_source(verify)

    manifest = commands.add_parser("manifest", help="list the paths the mirror served or was asked for")
    manifest.add_argument("mountpoint", nargs="?", help="a live mount or a mirror folder")
    manifest.add_argument("--mirror", metavar="DIR")
    manifest.add_argument("--since", metavar="WHEN", help="only since then: 2h, 30m, 1d, or a date/time")
    manifest.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    status = commands.add_parser("status", help="what a mount (or a bare mirror) holds and does")
    status.add_argument("mountpoint", nargs="?")
    status.add_argument("--mirror", metavar="DIR")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--prometheus", action="store_true",
                        help="Prometheus text format (for node_exporter's textfile collector)")

    misses = commands.add_parser("misses", help="the paths strict mode refused, newest first")
    misses.add_argument("mountpoint", nargs="?")
    misses.add_argument("--mirror", metavar="DIR")
    misses.add_argument("--json", action="store_true")
    misses.add_argument("--clear", action="store_true", help="forget the recorded misses")

    mode = commands.add_parser("mode", help="switch a running mount between strict and permissive")
    mode.add_argument("mode", choices=MODES, help="strict: only the mirror; permissive: fetch what is missing")
    mode.add_argument("mountpoint", nargs="?")

    env = commands.add_parser("env", help="print the export line for Isaac Lab 3.x / Isaac Sim 6.x")
    env.add_argument("mountpoint", nargs="?")
    kit = commands.add_parser("kit-args", help="print the Kit settings for Isaac Lab 2.x (--kit_args)")
    kit.add_argument("mountpoint", nargs="?")
    isaaclab = commands.add_parser("isaaclab", help="make an Isaac Lab checkout use the mount")
    isaaclab_commands = isaaclab.add_subparsers(dest="isaaclab_command", required=True, metavar="ACTION")
    configure = isaaclab_commands.add_parser("configure", help="write the asset root into the checkout's apps/*.kit")
    configure.add_argument("--isaaclab", required=True, metavar="DIR", help="the Isaac Lab checkout")
    configure.add_argument("mountpoint", nargs="?")
    configure.add_argument("--undo", action="store_true", help="restore every changed file byte for byte")

    service = commands.add_parser("service", help="run a mount as a systemd service")
    service_commands = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    install = service_commands.add_parser("install", help="write and enable isaacfs@<mountpoint>.service")
    install.add_argument("mountpoint", nargs="?")
    _add_mount_settings(install)
    install.add_argument("--allow-other", action="store_true", default=None)
    install.add_argument("--no-start", action="store_true", help="enable, but do not start it now")
    remove = service_commands.add_parser("remove", help="stop, disable and delete the service of a mountpoint")
    remove.add_argument("mountpoint", nargs="?")
    for action in (install, remove):
        action.add_argument("--user", action="store_true",
                            help="a user unit even when run as root (root gets a system unit otherwise)")

    run = commands.add_parser(
        "run", help="run a command with the mount as its asset root, in its own mode",
        usage="isaacfs run [--offline | --offline-permissive] [--mount MOUNTPOINT] -- COMMAND ...")
    run_mode = run.add_mutually_exclusive_group()
    run_mode.add_argument("--offline", dest="run_mode", action="store_const", const="strict",
                          help="this command sees only the mirror (a miss fails at once, shown here)")
    run_mode.add_argument("--offline-permissive", dest="run_mode", action="store_const", const="permissive",
                          help="this command fetches what the mirror lacks (each fetch shown here)")
    run.add_argument("--mount", metavar="MOUNTPOINT", help="the mount to use (default $ISAACFS_MOUNTPOINT, else"
                     f" {config.DEFAULT_MOUNTPOINT};"
                     " mounted for the run if it is not)")
    run.add_argument("command_args", nargs=argparse.REMAINDER, metavar="COMMAND",
                     help="the command and its arguments, after --")

    umount = commands.add_parser("umount", help="unmount cleanly (also recovers a stale mount)")
    umount.add_argument("mountpoint", nargs="?")
    umount.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    _finish_help(parser)
    return parser


# Help for options that many commands share, where a command gave none of its own.
SHARED_HELP = {
    "mountpoint": f"the mountpoint (default {config.DEFAULT_MOUNTPOINT})",
    "mirror": "the mirror folder, or a live mount (default: the mountpoint)",
    "json": "print JSON instead of text",
    "upstream": "asset root URL (https S3 root, omniverse://, file:, or a folder)",
    "release": f"the NVIDIA cloud asset root of this Isaac Sim release (default {config.DEFAULT_RELEASE})",
    "upstream_timeout": "seconds one upstream lookup may take (default 10)",
    "log_level": "how much the daemon logs (default INFO)",
    "allow_other": "let other users (containers) read the mount; needs user_allow_other in /etc/fuse.conf",
}


def _finish_help(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's --help opens with its one-line purpose; every option has a help line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                sub.description = sub.description or choice.help
                _finish_help(sub)
        elif action.help is None and action.dest in SHARED_HELP:
            action.help = SHARED_HELP[action.dest]


# Settings a flag gives, with the flag as the user types it (errors name the real flag).
SETTING_FLAGS = {"upstream": "--upstream", "release": "--release", "mode": "--mode", "mirror": "--mirror",
                 "upstream_timeout": "--upstream-timeout", "listing_ttl": "--listing-ttl", "fetch_jobs": "--jobs",
                 "log_level": "--log-level", "allow_other": "--allow-other", "new_upstream": "--new-upstream"}


def settings_from(args: argparse.Namespace) -> config.Settings:
    flags: dict[str, Any] = {key: getattr(args, key, None) for key in SETTING_FLAGS}
    return config.load(flags, flag_names=SETTING_FLAGS)


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    mountpoint = _mountpoint(args.mountpoint)
    settings = settings_from(args)
    if args.foreground:
        from ..app.daemon import Daemon, MountRequest

        logs.setup(settings.log_level, settings.request_log)
        log_path = Path(os.environ["ISAACFS_LOG_FILE"]) if "ISAACFS_LOG_FILE" in os.environ else None
        return Daemon(MountRequest(mountpoint, settings, log_path, args.ready_fd)).run()
    return lifecycle.start_background(mountpoint, argv)


def cmd_warm(args: argparse.Namespace) -> int:
    from ..jobs.spec import WarmSpec
    from . import warm as warm_cli

    if not (args.categories or args.manifest or args.closure or args.from_misses):
        raise UserError("say what to warm: --categories, --manifest FILE, --closure PATH.usd or --from-misses")
    if args.subset and not args.categories:
        raise UserError("--subset narrows --categories; give the categories too")
    # `warm --categories Robots ~/mnt`: argparse takes the folder for a category.
    folders = [c for c in args.categories if c.startswith(("/", "~", "./")) and Path(c).expanduser().is_dir()]
    if folders and not args.mountpoint:
        args.mountpoint = folders[0]
        args.categories = [c for c in args.categories if c != folders[0]]
    settings = settings_from(args)
    spec = WarmSpec(args.categories, args.subset, closure=args.closure, from_misses=args.from_misses,
                    dry_run=args.dry_run, listing_ttl=args.listing_ttl)
    if args.manifest:
        spec.manifest, spec.manifest_name = _read_lines(args.manifest), args.manifest
    if args.to:
        return warm_cli.fill_and_report(settings, _mirror_arg(args, settings), spec, args.to)
    return warm_cli.warm_and_report(settings, _mirror_arg(args, settings), spec)


def _read_lines(name: str) -> list[str]:
    """A manifest's lines, split at newlines only (str.splitlines() also splits at U+2028,
    U+0085 ..., which may stand in a name)."""
    if name == "-":
        return sys.stdin.read().split("\n")
    try:
        return Path(name).read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    except OSError as exc:
        raise UserError(f"cannot read manifest {name}: {exc.strerror}") from None


def _mirror_arg(args: argparse.Namespace, settings: config.Settings) -> Path:
    """The folder a command works on: --mirror DIR; else the mount (MOUNTPOINT, else
    $ISAACFS_MOUNTPOINT, else the default) while it is mounted; unmounted, that mount's
    mirror: the configured one ($ISAACFS_MIRROR, the config file's ``mirror``) or its own folder."""
    if getattr(args, "mirror", None):
        return Path(args.mirror).expanduser().absolute()
    mountpoint = _mountpoint(getattr(args, "mountpoint", None))
    if mounts.find_mount(mountpoint) is None and settings.mirror is not None:
        return settings.mirror
    return mountpoint


def cmd_verify(args: argparse.Namespace) -> int:
    from . import inspect as inspect_cli

    settings = settings_from(args)
    return inspect_cli.verify(settings, _mirror_arg(args, settings), args.repair, args.upstream_check)


def cmd_manifest(args: argparse.Namespace) -> int:
    from . import inspect as inspect_cli

    settings = settings_from(args)
    return inspect_cli.manifest(_mirror_arg(args, settings), args.since, args.output)


def cmd_status(args: argparse.Namespace) -> int:
    from . import inspect as inspect_cli

    settings = settings_from(args)
    return inspect_cli.show_status(_mirror_arg(args, settings), args.json, args.prometheus)


def cmd_misses(args: argparse.Namespace) -> int:
    from . import inspect as inspect_cli

    settings = settings_from(args)
    return inspect_cli.misses(_mirror_arg(args, settings), args.json, args.clear)


def cmd_mode(args: argparse.Namespace) -> int:
    from . import inspect as inspect_cli

    return inspect_cli.switch_mode(_mountpoint(args.mountpoint), args.mode)


def _mount_for_isaaclab(text: str | None) -> Path:
    mountpoint = _mountpoint(text)
    if mounts.find_mount(mountpoint) is None:
        print(f"isaacfs: note: {mountpoint} is not mounted now; mount it with: isaacfs mount {mountpoint}",
              file=sys.stderr)
    return mountpoint


def cmd_env(args: argparse.Namespace) -> int:
    from ..system import isaaclab

    print(isaaclab.env_line(_mount_for_isaaclab(args.mountpoint)))
    return 0


def cmd_kit_args(args: argparse.Namespace) -> int:
    from ..system import isaaclab

    print(isaaclab.kit_args(_mount_for_isaaclab(args.mountpoint)))
    return 0


def cmd_isaaclab(args: argparse.Namespace) -> int:
    from ..system import isaaclab

    checkout = Path(args.isaaclab).expanduser().absolute()
    if args.undo:
        undone = isaaclab.undo(checkout)
        for change in undone:
            print(f"isaacfs: restored {change.path} ({change.lines} line(s))")
        if not undone:
            print(f"isaacfs: nothing to undo in {checkout}/apps")
        return 0
    mountpoint = _mount_for_isaaclab(args.mountpoint)
    changes, releases = isaaclab.configure(checkout, mountpoint)
    for change in changes:
        print(f"isaacfs: {change.path}: {change.lines} asset-root line(s) now point at {mountpoint}")
    if not changes:
        print(f"isaacfs: {checkout}/apps already points at {mountpoint} (or names no asset root)")
    expected = ", ".join(sorted(releases)) or "unknown"
    print(f"isaacfs: this checkout expects asset release {expected}; undo with:"
          f" isaacfs isaaclab configure --isaaclab {checkout} --undo")
    try:
        serving = os.getxattr(mountpoint, "user.isaacfs.upstream").decode()
    except OSError:
        serving = ""
    served = isaaclab.release_of(serving) if serving else None
    if served and releases and served not in releases:
        print(f"isaacfs: warning: {mountpoint} serves release {served} ({serving}), but this checkout expects"
              f" {expected}; remount with: isaacfs mount {mountpoint} --release {sorted(releases)[-1]}",
              file=sys.stderr)
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from ..system import service

    mountpoint = _mountpoint(args.mountpoint)
    if args.service_command == "install":
        if not mountpoint.is_dir():
            raise UserError(f"mountpoint {mountpoint} does not exist; create it with: mkdir -p {mountpoint}")
        lines = service.install(mountpoint, settings_from(args), start=not args.no_start, user=args.user)
    else:
        lines = service.remove(mountpoint, user=args.user)
    for line in lines:
        print(f"isaacfs: {line}")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    for line in lifecycle.stop(_mountpoint(args.mountpoint), args.lazy):
        print(f"isaacfs: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # no command: what there is to do, not just "arguments are required"
        parser.print_help(sys.stderr)
        print("\nisaacfs: name a command; `isaacfs COMMAND --help` tells more", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args, argv)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "run":
            from .run import run as run_command

            command = list(args.command_args)
            if command[:1] == ["--"]:
                command = command[1:]
            return run_command(_mountpoint(args.mount), args.run_mode, command)
        handler = {"warm": cmd_warm, "verify": cmd_verify, "manifest": cmd_manifest, "status": cmd_status,
                   "misses": cmd_misses, "mode": cmd_mode, "env": cmd_env, "kit-args": cmd_kit_args,
                   "isaaclab": cmd_isaaclab, "service": cmd_service}.get(args.command)
        if handler is not None:
            return handler(args)
    except UserError as exc:
        print(f"isaacfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `isaacfs status | head`: the reader has gone, which is no error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BaseExceptionGroup as group:  # trio delivers Ctrl-C inside a task group
        if group.subgroup(KeyboardInterrupt) is not None:
            return 130
        raise
    raise AssertionError(args.command)
