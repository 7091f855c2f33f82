"""`mount.isaacfs`: lets mount(8), /etc/fstab and systemd .mount units mount isaacfs.

    /sbin/mount.isaacfs SOURCE MOUNTPOINT [-o OPTIONS]

SOURCE is the upstream URL (or `isaacfs` for the configured default). OPTIONS are
isaacfs settings as ``key=value`` (mode, mirror, upstream, release, jobs, log_level,
listing_ttl, upstream_timeout) and ``allow_other``; the generic mount options that mean
nothing to a read-only FUSE mount (defaults, ro, noauto, user, _netdev, nofail, x-*,
...) are accepted and ignored. Example fstab line:

    https://host/Assets/Isaac/6.2  /home/me/IsaacLab/offline_assets  isaacfs  mode=strict,noauto,user  0 0
"""

from __future__ import annotations

import sys

from . import main as cli

VALUED = {"mode": "--mode", "mirror": "--mirror", "upstream": "--upstream", "release": "--release",
          "jobs": "--jobs", "log_level": "--log-level", "listing_ttl": "--listing-ttl",
          "upstream_timeout": "--upstream-timeout"}
IGNORED = {"defaults", "ro", "rw", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev",
           "nofail", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "sync", "async", "atime", "noatime",
           "relatime", "nodiratime"}


def translate(argv: list[str]) -> list[str]:
    """mount(8)'s arguments to `isaacfs mount` arguments; raises ValueError on anything unknown."""
    positional: list[str] = []
    options: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "-o":
            options.extend(part for part in next(words, "").split(",") if part)
        elif word.startswith("-o") and len(word) > 2:
            options.extend(part for part in word[2:].split(",") if part)
        elif word in ("-t",):
            next(words, None)
        elif word.startswith("-"):
            continue  # -s (sloppy), -f (fake), -n (no mtab), -v (verbose): nothing to do
        else:
            positional.append(word)
    if len(positional) != 2:
        raise ValueError("usage: mount.isaacfs SOURCE MOUNTPOINT [-o OPTIONS]")
    source, mountpoint = positional
    args = ["mount", mountpoint]
    if source not in ("isaacfs", "none", ""):
        args += ["--upstream", source]
    for option in options:
        key, has_value, value = option.partition("=")
        if key in VALUED and has_value:
            if key == "upstream" and "--upstream" in args:
                args[args.index("--upstream") + 1] = value
            else:
                args += [VALUED[key], value]
        elif key == "allow_other" and not has_value:
            args.append("--allow-other")
        elif key in IGNORED or key.startswith("x-") or key.startswith("comment="):
            continue
        else:
            raise ValueError(f"mount.isaacfs: unknown option {option!r}; known: {', '.join(sorted(VALUED))},"
                             " allow_other")
    return args


def main() -> int:
    try:
        args = translate(sys.argv[1:])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
