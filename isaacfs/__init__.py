"""isaacfs: the Isaac Sim / Isaac Lab asset root as an offline-first FUSE filesystem."""

from pathlib import Path

__version__ = "0.1.0"


def sample_assets() -> Path:
    """The embedded sample asset root (a tiny tree shaped like NVIDIA's), shipped with the package.

    The one place that knows where it lives: the demo, the tests and the benchmarks ask here."""
    root = Path(__file__).resolve().parent / "sample_assets"
    if not (root / "Isaac").is_dir():
        raise FileNotFoundError(f"the embedded sample asset root is missing at {root}; reinstall isaacfs")
    return root
