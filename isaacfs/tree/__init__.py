"""The tree a mount shows: the inode table and its folders merged from the mirror and the
upstream's listings (``namespace``), the listings with their TTL (``listings``), and the
record of misses (``misses``). Above the core, the store and the fetcher; below fuse/ and
jobs/."""
