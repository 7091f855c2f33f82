"""The store: the mirror (a plain asset tree plus .isaacfs/ state) and its index."""
