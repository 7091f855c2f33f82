"""A long-lived usd-core worker process that tells which assets a layer names.

Started on first use and kept (usd-core takes about a second to load; a layer takes
milliseconds). One request at a time per worker. A layer that makes the worker crash
or hang past ``timeout`` costs that answer and the worker (killed, started again for
the next layer), never the caller.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess

import trio

from ..system.launch import python_module

log = logging.getLogger("isaacfs.prefetch")

PARSE_TIMEOUT = 30.0


class ParseFailed(Exception):
    pass


class Parser:
    def __init__(self, timeout: float = PARSE_TIMEOUT) -> None:
        self.timeout = timeout
        self._process: trio.Process | None = None
        self._buffer = b""
        self._lock = trio.Lock()
        self.restarts = 0

    async def start(self) -> None:
        """Start the worker now (usd-core takes about a second to load): call it before the
        first layer has even arrived."""
        async with self._lock:
            await self._start()

    async def _start(self) -> trio.Process:
        if self._process is None or self._process.returncode is not None:
            self._process = await trio.lowlevel.open_process(
                python_module("isaacfs.jobs.usd_deps", "--serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"})
            self._buffer = b""
        return self._process

    async def dependencies(self, path: str) -> list[str]:
        """The asset paths the layer or MDL module at ``path`` names, as written in it."""
        async with self._lock:
            process = await self._start()
            assert process.stdin is not None and process.stdout is not None
            try:
                with trio.fail_after(self.timeout):
                    # JSON: a path may hold a newline, which would split the request in two
                    # and leave every later answer one behind.
                    await process.stdin.send_all(json.dumps(path).encode("ascii") + b"\n")
                    while b"\n" not in self._buffer:
                        chunk = await process.stdout.receive_some(65536)
                        if not chunk:
                            raise ParseFailed("the usd-core worker stopped")
                        self._buffer += chunk
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, ParseFailed) as exc:
                await self._kill()
                raise ParseFailed(f"usd-core could not read it in {self.timeout:g}s" if isinstance(
                    exc, trio.TooSlowError) else str(exc) or "the usd-core worker stopped") from None
            line, _, self._buffer = self._buffer.partition(b"\n")
        answer = json.loads(line)
        if answer.get("path") != path:  # out of step: never hand one layer another's answer
            async with self._lock:
                await self._kill()
            raise ParseFailed("the usd-core worker answered for another layer; restarted it")
        if "error" in answer:
            raise ParseFailed(str(answer["error"]))
        deps = answer.get("deps", [])
        return [str(dep) for dep in deps] if isinstance(deps, list) else []

    async def _kill(self) -> None:
        if self._process is not None:
            self.restarts += 1
            try:
                self._process.kill()
            except ProcessLookupError:
                pass
            with trio.move_on_after(5):
                await self._process.wait()
            self._process = None

    async def aclose(self) -> None:
        if self._process is not None and self._process.returncode is None:
            if self._process.stdin is not None:
                await self._process.stdin.aclose()
            with trio.move_on_after(2):
                await self._process.wait()
            await self._kill()
