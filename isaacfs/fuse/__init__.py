"""The FUSE layer: operations, kernel-cache bookkeeping, the daemon's lifecycle. The only
place that imports pyfuse3."""
