"""The composition root: the one place that wires a mount together (the mirror and its index,
the upstream, the fetcher, the tree, the FUSE operations, the prefetcher, the control
socket) and runs it (``daemon``). Nothing below imports it."""
