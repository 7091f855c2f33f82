"""isaacfs: the Isaac Sim / Isaac Lab asset root as an offline-first FUSE filesystem."""

__version__ = "0.1.0"
