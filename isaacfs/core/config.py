"""Settings, resolved in one place: flags > environment > config file > defaults."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import UserError
from .s3url import parse_s3
from .types import MODES, Mode

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04): the same parser, from PyPI
    import tomli as tomllib

CLOUD_ROOT = "https://omniverse-content-production.s3-us-west-2.amazonaws.com/Assets/Isaac"
DEFAULT_RELEASE = "6.2"  # Isaac Sim 6.x / Isaac Lab 3.0; Isaac Lab 2.3 uses 5.1.
DEFAULT_MOUNTPOINT = Path("~/IsaacLab/offline_assets")


def mountpoint(given: str | None, env: Mapping[str, str]) -> Path:
    """The mount a command acts on: ``given``, else $ISAACFS_MOUNTPOINT, else the default.
    (``ISAACFS_MIRROR`` is never a mountpoint: it says where a mount keeps its mirror.)"""
    return Path(given or env.get("ISAACFS_MOUNTPOINT") or DEFAULT_MOUNTPOINT).expanduser().absolute()
UPSTREAM_SCHEMES = ("https", "omniverse", "omni", "file", "s3")
RELEASE = re.compile(r"^\d+\.\d+$")


def release_root(release: str) -> str:
    if not RELEASE.match(release):
        raise UserError(f"--release {release!r} is not a release number; write it as 6.2 (Isaac Lab 3.0)"
                        " or 5.1 (Isaac Lab 2.3)")
    return f"{CLOUD_ROOT}/{release}"


@dataclass(frozen=True)
class Settings:
    """Everything a mount or a command needs to know; see docs/configuration.md."""

    upstream: str = release_root(DEFAULT_RELEASE)
    # Upstreams asked before ``upstream``, in order (a site's store in front of the cloud):
    # every --upstream but the last. ``upstream``, the last, names the mirror's source.
    tiers: tuple[str, ...] = ()
    mode: Mode = "strict"
    mirror: Path | None = None  # None: the mountpoint's own underlying folder.
    # Seconds one upstream list/stat may take before the lookup fails (never a hang).
    upstream_timeout: float = 10.0
    # A download is abandoned after stall_timeout + size / min_download_rate seconds.
    stall_timeout: float = 30.0
    min_download_rate: float = 1_000_000.0  # bytes per second
    # Seconds an upstream folder listing is trusted before it is asked again.
    listing_ttl: float = 24 * 3600.0
    # Seconds the upstream is left alone after it failed to answer.
    upstream_retry_after: float = 30.0
    fetch_jobs: int = 8
    fetch_retries: int = 3
    allow_other: bool = False
    # Mount (or warm) a mirror filled from another upstream: keep its files, drop its listings.
    new_upstream: bool = False
    # Stream files from S3 upstreams in ranged parts over HTTP (false: omni.client whole bodies).
    http_ranges: bool = True
    # Permissive mode: fetch what a USD layer names before it is asked for (jobs/prefetch.py).
    prefetch: bool = True
    prefetch_files: int = 2000  # per root layer
    prefetch_mb: int = 2048  # per root layer
    # A folder listed upstream for the first time has its whole tree read beside (one
    # request, at most 1,000 files below it): the folders below answer with no request.
    listing_trees: bool = True
    read_ahead_kb: int = 1024
    # Every download buffer in all (streamed parts, whole bodies, read-aheads), in MiB.
    download_memory_mb: int = 256
    log_level: str = "INFO"
    # One line per upstream request in the daemon's log (method, path, status, time): what a
    # slow first load waited on (bench/critical_path.py reads them).
    request_log: bool = False
    # Where each value came from (flag, variable, config file), for error messages and tests.
    sources: dict[str, str] = field(default_factory=dict, compare=False)


ENV_KEYS: dict[str, str] = {
    "ISAACFS_UPSTREAM": "upstream",
    "ISAACFS_MODE": "mode",
    "ISAACFS_MIRROR": "mirror",
    "ISAACFS_UPSTREAM_TIMEOUT": "upstream_timeout",
    "ISAACFS_STALL_TIMEOUT": "stall_timeout",
    "ISAACFS_MIN_DOWNLOAD_RATE": "min_download_rate",
    "ISAACFS_LISTING_TTL": "listing_ttl",
    "ISAACFS_UPSTREAM_RETRY_AFTER": "upstream_retry_after",
    "ISAACFS_FETCH_JOBS": "fetch_jobs",
    "ISAACFS_LOG_LEVEL": "log_level",
    "ISAACFS_REQUEST_LOG": "request_log",
    "ISAACFS_ALLOW_OTHER": "allow_other",
    "ISAACFS_HTTP_RANGES": "http_ranges",
    "ISAACFS_PREFETCH": "prefetch",
    "ISAACFS_LISTING_TREES": "listing_trees",
    "ISAACFS_DOWNLOAD_MEMORY_MB": "download_memory_mb",
}


def config_file_path(env: dict[str, str]) -> Path:
    if "ISAACFS_CONFIG" in env:
        return Path(env["ISAACFS_CONFIG"]).expanduser()
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "isaacfs" / "config.toml"


def _coerce(key: str, value: Any, origin: str) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = str(kinds[key])
    try:
        if key == "mirror":
            return Path(str(value)).expanduser().absolute()
        if key == "mode":
            if value not in MODES:
                raise ValueError(f"must be one of {', '.join(MODES)}")
            return value
        if key == "upstream":
            return check_upstream_url(str(value))
        if key == "tiers":
            return tuple(check_upstream_url(str(url)) for url in value)
        if "float" in kind:
            number = float(value)
            if number < 0 or (number == 0 and key != "listing_ttl"):  # a TTL of 0: always list afresh
                raise ValueError("must be positive")
            return number
        if "int" in kind:
            whole = int(value)
            if whole <= 0:
                raise ValueError("must be positive")
            return whole
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            return str(value).lower() in ("1", "true", "yes", "on")
        return str(value)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserError(f"{origin}: invalid value {value!r} for {key}: {exc}") from None


def check_upstream_url(url: str) -> str:
    """Accept an asset-root URL omni.client can serve, or a local folder (made a file: URL)."""
    text = url.strip()
    if text.startswith("/"):
        return Path(text).as_uri()
    parts = urlsplit(text)
    if parts.scheme == "s3":
        parse_s3(text)  # an s3://BUCKET/PREFIX?endpoint=URL tier: UserError naming the fix
        return text
    if parts.scheme == "http":
        raise UserError(f"upstream URL {url!r} is not usable: omni.client lists folders only over https://"
                        " (S3) or omniverse:// (Nucleus); write https://")
    if parts.scheme not in UPSTREAM_SCHEMES:
        raise UserError(
            f"upstream URL {url!r} is not usable: expected https://, s3://, omniverse:// or file:"
            " (or an absolute folder path)"
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise UserError(f"upstream URL {url!r} is not usable: write file:/abs/path or file:///abs/path")
    elif not parts.hostname:
        raise UserError(f"upstream URL {url!r} is not usable: it names no host")
    if parts.query or parts.fragment:
        raise UserError(f"upstream URL {url!r} is not usable: it must not carry ?query or #fragment")
    return text.rstrip("/")


def load(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    config_file: Path | None = None,
    flag_names: dict[str, str] | None = None,
) -> Settings:
    """Resolve settings. ``flags`` holds only options the user actually gave; ``flag_names``
    says how the user typed each (an error names the flag, not the setting)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = {f.name for f in fields(Settings)} - {"sources"}

    path = config_file or config_file_path(env)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"config file {path} cannot be read: {exc}") from None
        for key, value in data.items():
            if key not in known - {"tiers"}:
                raise UserError(f"config file {path}: unknown key {key!r}")
            if key == "upstream" and isinstance(value, list):
                _upstreams(values, sources, value, str(path))
                continue
            values[key] = _coerce(key, value, str(path))
            sources[key] = str(path)

    if env.get("OFFLINE_PERMISSIVE") == "1":
        values["mode"], sources["mode"] = "permissive", "OFFLINE_PERMISSIVE"
    elif env.get("OFFLINE") == "1":
        values["mode"], sources["mode"] = "strict", "OFFLINE"
    for var, key in ENV_KEYS.items():
        if env.get(var):
            if key == "upstream":
                _upstreams(values, sources, env[var].split(), var)
                continue
            values[key] = _coerce(key, env[var], var)
            sources[key] = var

    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key == "release":
            continue
        if key == "upstream":
            given = value if isinstance(value, list) else [value]
            if flags and flags.get("release") is not None:
                given = [*given, release_root(str(flags["release"]))]  # the tiers in front of the release's root
            _upstreams(values, sources, given, (flag_names or {}).get(key, "--upstream"), "flag")
            continue
        values[key] = _coerce(key, value, (flag_names or {}).get(key, f"--{key.replace('_', '-')}"))
        sources[key] = "flag"
    if flags and flags.get("release") is not None and flags.get("upstream") is None:
        values["upstream"], values["tiers"] = release_root(str(flags["release"])), ()
        sources["upstream"] = "--release"
    return replace(Settings(), **values, sources=sources)


def _upstreams(values: dict[str, Any], sources: dict[str, str], given: list[Any], origin: str,
               source: str | None = None) -> None:
    """Several upstreams, in tier order: the last is ``upstream``, the ones before ``tiers``."""
    urls = [str(url) for url in given if str(url).strip()]
    if not urls:
        raise UserError(f"{origin}: no upstream URL given")
    checked = [_coerce("upstream", url, origin) for url in urls]
    values["upstream"], values["tiers"] = checked[-1], tuple(checked[:-1])
    sources["upstream"] = sources["tiers"] = source or origin


def redact(url: str) -> str:
    """The URL without any user:password part, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
