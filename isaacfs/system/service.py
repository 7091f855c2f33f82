"""`isaacfs service install|remove`: the mount as a systemd service (user unit, or system unit as root).

The unit is the template ``systemd/isaacfs@.service`` with ExecStart pointing at the
Python that runs this command; the instance name is the escaped mountpoint, and the
instance's settings (mode, upstream, mirror, ...) live in ``<config>/isaacfs/<instance>.env``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.config import Settings
from ..core.errors import UserError

TEMPLATE = "isaacfs@.service"


@dataclass(frozen=True)
class Layout:
    system: bool  # root: a system unit in /etc; otherwise a user unit
    unit_dir: Path
    env_dir: Path

    @classmethod
    def here(cls, user: bool = False) -> Layout:
        if os.geteuid() == 0 and not user:
            return cls(True, Path("/etc/systemd/system"), Path("/etc/isaacfs"))
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return cls(False, config / "systemd" / "user", config / "isaacfs")

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.system else ["--user"]), *args]


def escape_path(path: Path) -> str:
    """What `systemd-escape --path` prints."""
    tool = shutil.which("systemd-escape")
    if tool:
        return subprocess.run([tool, "--path", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    text = str(path).strip("/") or "-"
    out = []
    for index, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif char.isalnum() or char in "_:" or (char == "." and index > 0):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def template_text() -> str:
    # systemd/isaacfs@.service in the repository links to this packaged copy.
    return resources.files("isaacfs").joinpath("data").joinpath(TEMPLATE).read_text()


def unit_text(layout: Layout) -> str:
    text = template_text().replace("ExecStart=/usr/bin/env isaacfs ", f"ExecStart={sys.executable} -m isaacfs ")
    if layout.system:
        text = text.replace("WantedBy=default.target", "WantedBy=multi-user.target")
    return text


def env_text(settings: Settings) -> str:
    lines = ["# isaacfs settings for this mount (see docs/configuration.md)"]
    keys = {"mode": "ISAACFS_MODE", "upstream": "ISAACFS_UPSTREAM", "mirror": "ISAACFS_MIRROR",
            "upstream_timeout": "ISAACFS_UPSTREAM_TIMEOUT", "listing_ttl": "ISAACFS_LISTING_TTL",
            "fetch_jobs": "ISAACFS_FETCH_JOBS", "log_level": "ISAACFS_LOG_LEVEL"}
    for key, var in keys.items():
        if key in settings.sources:  # only what the user chose; the rest keeps its defaults
            value = getattr(settings, key)
            if key == "upstream" and settings.tiers:
                value = " ".join([*settings.tiers, settings.upstream])  # the tiers, in order
            lines.append(f"{var}={value}")
    if settings.allow_other:
        lines.append("ISAACFS_ALLOW_OTHER=1")
    return "\n".join(lines) + "\n"


SYSTEMD_RUNNING = Path("/run/systemd/system")  # present while systemd is the init (sd_booted)


def why_no_systemd(layout: Layout) -> str | None:
    """Why the units cannot be enabled here, with what to do; None where systemd answers."""
    if shutil.which("systemctl") is None:
        return "systemd is not installed here (no systemctl); run the mount with `isaacfs mount` instead"
    if not SYSTEMD_RUNNING.is_dir():
        return ("systemd is not running on this machine (a container, or another init); run the mount with"
                " `isaacfs mount`, or from the container's own entry point")
    probe = subprocess.run(layout.systemctl("is-system-running"), capture_output=True, text=True)
    if probe.stdout.strip() in ("", "offline") or "Failed to connect" in probe.stderr:
        if layout.system:
            return f"systemd does not answer ({probe.stderr.strip() or probe.stdout.strip()})"
        user = os.environ.get("USER") or str(os.getuid())
        if not os.environ.get("XDG_RUNTIME_DIR"):
            return ("there is no user session with a systemd user manager here (XDG_RUNTIME_DIR is not set:"
                    " su or sudo, not a login); log in as this user, or have root run: loginctl enable-linger"
                    f" {user}, or install the system unit as root: sudo isaacfs service install")
        return (f"the systemd user manager does not answer ({probe.stderr.strip() or 'no answer'}); have root run:"
                f" loginctl enable-linger {user}, then log in again, or install the system unit as root")
    return None


def _systemd_running(layout: Layout) -> bool:
    return why_no_systemd(layout) is None


def install(mountpoint: Path, settings: Settings, start: bool, user: bool = False) -> list[str]:
    layout = Layout.here(user)
    instance = escape_path(mountpoint)
    unit = f"isaacfs@{instance}.service"
    layout.unit_dir.mkdir(parents=True, exist_ok=True)
    layout.env_dir.mkdir(parents=True, exist_ok=True)
    (layout.unit_dir / TEMPLATE).write_text(unit_text(layout))
    # The settings may hold an upstream URL with credentials: readable by the owner only.
    env_file = layout.env_dir / f"{instance}.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with open(fd, "w") as stream:
        stream.write(env_text(settings))
    said = [f"wrote {layout.unit_dir / TEMPLATE} and {layout.env_dir / f'{instance}.env'}"]
    commands = [layout.systemctl("daemon-reload"), layout.systemctl("enable", *(["--now"] if start else []), unit)]
    why = why_no_systemd(layout)
    if why is not None:
        raise UserError(f"wrote {layout.unit_dir / TEMPLATE} and {env_file}, but did not enable the service: {why};"
                        " then: " + " && ".join(" ".join(c) for c in commands))
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    said.append(f"enabled {unit}" + (" and started it" if start else ""))
    if not layout.system:
        said.append(f"to keep it running while you are logged out: loginctl enable-linger {os.environ.get('USER', '')}")
    return said


def remove(mountpoint: Path, user: bool = False) -> list[str]:
    layout = Layout.here(user)
    instance = escape_path(mountpoint)
    unit = f"isaacfs@{instance}.service"
    env_file = layout.env_dir / f"{instance}.env"
    said = []
    if _systemd_running(layout):
        subprocess.run(layout.systemctl("disable", "--now", unit), capture_output=True, text=True)
        said.append(f"stopped and disabled {unit}")
    if env_file.exists():
        env_file.unlink()
        said.append(f"removed {env_file}")
    if not any(layout.env_dir.glob("*.env")) and (layout.unit_dir / TEMPLATE).exists():
        (layout.unit_dir / TEMPLATE).unlink()
        said.append(f"removed {layout.unit_dir / TEMPLATE} (no other isaacfs mounts use it)")
    if not said:
        raise UserError(f"no isaacfs service is installed for {mountpoint}")
    return said
