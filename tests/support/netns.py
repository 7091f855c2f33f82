"""A silent link for the real tiers: a server address inside a network namespace of the
test's own, reached over a veth pair. ``silence()`` takes the far end of the pair down (with
the near end's neighbour entry pinned, so no ARP failure answers either): every packet to the
address is dropped, new connections get no SYN-ACK and no refusal, open ones hear nothing.
That is the link a firewall that drops, a dead switch or a pulled cable gives, which a proxy
on loopback cannot (it always completes the handshake).

The listening socket is made inside the namespace by a short-lived thread that enters it
(setns is per thread), then served from this process: a FaultProxy forwards what arrives to a
server on this host's loopback."""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.faultproxy import FaultProxy

CLONE_NEWNET = 0x40000000
_numbers = itertools.count()


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)}: {done.stderr.strip()}")


def namespaces_work() -> str | None:
    """None when this host lets the tests make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"isaacfs-probe-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot make a network namespace here: {exc}"
    _ip("netns", "del", name)
    return None


def _listen_inside(netns: str, address: str) -> socket.socket:
    made: list[socket.socket | BaseException] = []

    def enter_and_listen() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(f"/run/netns/{netns}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            made.append(socket.create_server((address, 0)))
        except BaseException as exc:  # handed to the caller
            made.append(exc)

    thread = threading.Thread(target=enter_and_listen)  # this thread never comes back: it ends
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class SilentLink:
    """``host:port`` reaches loopback port ``target`` until ``silence()``, again after ``restore()``."""

    def __init__(self, target: int) -> None:
        number = next(_numbers)
        self.netns = f"isaacfs-{os.getpid()}-{number}"
        subnet = 200 + (os.getpid() + number) % 50
        self.near, self.host = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.near_dev, self.far_dev = f"isf{os.getpid() % 10000}n{number}", f"isf{os.getpid() % 10000}f{number}"
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "add", self.near_dev, "type", "veth", "peer", "name", self.far_dev)
            _ip("link", "set", self.far_dev, "netns", self.netns)
            _ip("addr", "add", f"{self.near}/30", "dev", self.near_dev)
            _ip("link", "set", self.near_dev, "up")
            _ip("addr", "add", f"{self.host}/30", "dev", self.far_dev, netns=self.netns)
            _ip("link", "set", self.far_dev, "up", netns=self.netns)
            _ip("link", "set", "lo", "up", netns=self.netns)
            mac = subprocess.run(["ip", "-n", self.netns, "-o", "link", "show", self.far_dev], capture_output=True,
                                 text=True, check=True).stdout.split("link/ether", 1)[1].split()[0]
            _ip("neigh", "replace", self.host, "lladdr", mac, "dev", self.near_dev, "nud", "permanent")
            self.proxy = FaultProxy(target, listener=_listen_inside(self.netns, self.host))
        except BaseException:
            self.close()
            raise
        self.port = self.proxy.port

    def silence(self) -> None:
        _ip("link", "set", self.far_dev, "down", netns=self.netns)

    def restore(self) -> None:
        _ip("link", "set", self.far_dev, "up", netns=self.netns)

    def close(self) -> None:
        if getattr(self, "proxy", None) is not None:
            self.proxy.close()
        subprocess.run(["ip", "link", "del", self.near_dev], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


@contextmanager
def silent_link(target: int) -> Iterator[SilentLink]:
    link = SilentLink(target)
    try:
        yield link
    finally:
        link.close()
