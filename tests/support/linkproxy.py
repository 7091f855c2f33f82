"""A long link on loopback: a TCP proxy that delays each direction by RTT/2, pipelined.

This kernel has no netem. Every chunk read from one side is delivered to the other RTT/2
after it was read (a queue per direction, so data stays ordered and in flight: latency,
not a bandwidth cap); a new connection first waits one RTT (the TCP handshake). An
optional cap serialises server-to-client chunks at that many bytes per second.

    python tests/support/linkproxy.py --target 127.0.0.1:PORT --rtt 0.08 [--rate BYTES_PER_S]

prints {"port": N} once listening; runs until killed. Run it as its own process so it does
not share the benchmark's time slices.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import trio

CHUNK = 256 * 1024


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, delay: float, rate: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes] | None](math.inf)

    async def read() -> None:
        try:
            while data := await source.receive_some(CHUNK):
                send.send_nowait((trio.current_time() + delay, data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        send.send_nowait(None)

    async def write() -> None:
        free_at = 0.0
        async for item in receive:
            if item is None:
                break
            due, data = item
            await trio.sleep_until(due)
            if rate:
                free_at = max(free_at, trio.current_time()) + len(data) / rate
                await trio.sleep_until(free_at)
            try:
                await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
        try:
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write)


async def _serve(client: trio.SocketStream, host: str, port: int, rtt: float, rate: float) -> None:
    async with client:
        await trio.sleep(rtt)  # the handshake a real link would cost
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, upstream, rtt / 2, 0.0)
            nursery.start_soon(_pipe, upstream, client, rtt / 2, rate)


async def main(target: str, rtt: float, rate: float, port: int) -> None:
    host, _, target_port = target.rpartition(":")
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)

    async def handle(stream: trio.SocketStream) -> None:
        await _serve(stream, host, int(target_port), rtt, rate)

    await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--rtt", type=float, default=0.08, help="round trip time to add, seconds")
    parser.add_argument("--rate", type=float, default=0.0, help="server-to-client bytes per second (0: no cap)")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    try:
        trio.run(main, arguments.target, arguments.rtt, arguments.rate, arguments.port)
    except KeyboardInterrupt:
        sys.exit(0)
