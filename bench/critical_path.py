"""The critical path of a load, read from an isaacfs daemon's log written with request_log on.

Run: python bench/critical_path.py LOG [--after "2026-12-02 23:59:59.000"]
(the daemon's log: `isaacfs mount` prints where it is; under systemd the journal drops the
timestamps this reads: `ISAACFS_LOG_FILE` or a plain mount.)

Each request line says when a request ended and how long it took, so when it started. The
path is read backwards from the request that ended last: each request's predecessor is the
one that ended last before it started, what it most likely waited on (a layer's GET before
the GETs of what the layer names; a folder's listing before a file's GET). The requests on
the path are the load's sequential round trips, whatever the link's RTT; the gaps between
them are the client's own time (parsing, FUSE, the loop). bench/bench_wan.py prints this for
every isaacfs cold load.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \w+ request (\S+) (.*): (.*?) in ([\d.]+) ms"
                  r"(?:, first byte after ([\d.]+) ms)?$")
# Log times have millisecond steps: a request that started within this of another's end
# may have waited on it.
SLACK = 0.002


@dataclass(frozen=True)
class Request:
    start: float  # seconds since the epoch
    end: float
    method: str
    target: str
    status: str

    def describe(self) -> str:
        return f"{self.method} {self.target}: {self.status}"


def parse(lines: Iterable[str], after: str = "") -> list[Request]:
    """The request lines among ``lines`` (a daemon log), logged at or after ``after``."""
    found = []
    for line in lines:
        match = LINE.match(line.rstrip("\n"))
        if match is None or match.group(1) < after:
            continue
        end = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        took = float(match.group(5)) / 1000
        found.append(Request(end - took, end, match.group(2), match.group(3), match.group(4)))
    return found


def critical_path(requests: list[Request]) -> list[Request]:
    """The chain of requests, first to last, each the one that ended last before the next
    began, ending with the request that ended last."""
    if not requests:
        return []
    current = max(requests, key=lambda request: request.end)
    chain = [current]
    while True:
        before = [request for request in requests if request.end <= current.start + SLACK and request != current]
        if not before:
            break
        current = max(before, key=lambda request: request.end)
        chain.append(current)
    return chain[::-1]


def report(requests: list[Request]) -> str:
    chain = critical_path(requests)
    if not chain:
        return "no request lines (is request_log on, ISAACFS_REQUEST_LOG=1?)"
    origin = min(request.start for request in requests)
    waiting = sum(request.end - request.start for request in chain)
    total = chain[-1].end - origin
    lines = [f"{len(requests)} requests; {len(chain)} on the critical path, {total * 1000:.0f} ms from the first"
             f" request's start to the last one's end: {waiting * 1000:.0f} ms waiting on them,"
             f" {(total - waiting) * 1000:.0f} ms between them"]
    previous = origin
    for request in chain:
        lines.append(f"  +{(request.start - origin) * 1000:7.1f} ms (after {(request.start - previous) * 1000:6.1f} ms)"
                     f"  {(request.end - request.start) * 1000:7.1f} ms  {request.describe()}")
        previous = request.end
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--after", default="", help="only lines logged at or after this time (as the log writes it)")
    args = parser.parse_args()
    try:
        text = args.log.read_text(errors="replace")
    except OSError as exc:
        sys.exit(f"critical_path: cannot read {args.log}: {exc.strerror}")
    print(report(parse(text.splitlines(), args.after)))


if __name__ == "__main__":
    main()
