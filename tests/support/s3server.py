"""A real S3 implementation (moto) on loopback over TLS, for tests and benchmarks.

Run as a process: it fills one bucket from a local folder, serves it on 127.0.0.1
with a self-signed certificate, prints one JSON line (port, cert path, bucket) and
serves until killed. omni.client reaches it through its S3 provider when an
``omniverse.toml`` names ``127.0.0.1`` as an S3 host (see write_omniverse_toml).

It also counts object GETs and the body bytes sent per key, readable at ``/__isaacfs_stats`` (JSON), so tests
can prove how many downloads really reached the upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

BUCKET = "omniverse-content-test"
REGION = "us-west-2"
PREFIX = "Assets/Isaac/5.1"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Self-signed certificate for IP:127.0.0.1 that is its own CA (so SSL_CERT_FILE trusts it)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True,
        )
    return cert, key


def write_omniverse_toml(config_dir: Path, bucket: str = BUCKET) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "omniverse.toml").write_text(
        f'[s3."127.0.0.1"]\nbucket = "{bucket}"\nregion = "{REGION}"\n'
    )


def iter_files(root: Path) -> Iterable[tuple[str, Path]]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            yield path.relative_to(root).as_posix(), path


def fill_bucket(source: Path, prefix: str, bucket: str) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import get_canned_acl, s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(bucket, REGION)
    count = 0
    for rel, path in iter_files(source):
        key = backend.put_object(bucket, f"{prefix}/{rel}", path.read_bytes())
        key.acl = get_canned_acl("public-read")
        # Real S3 stores an object's ETag when it is written; moto computes it (an MD5 of the
        # whole body) the first time a listing names the object. For a 256 MiB object that
        # put half a second of this server's CPU into the first listing of its folder, a
        # cost no real bucket has, charged to whichever client listed first.
        _ = key.etag
        count += 1
    return count


def put_raw(objects: dict[str, str], bucket: str) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import get_canned_acl, s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key, text in objects.items():
        backend.put_object(bucket, key, text.encode()).acl = get_canned_acl("public-read")
    return len(objects)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(bucket: str, gets: Counter[str], sent: Counter[str], lock: threading.Lock,
             refuse_agent: str = "") -> WSGIApp:
    from moto.server import DomainDispatcherApplication, create_backend_app

    moto_app = DomainDispatcherApplication(create_backend_app)
    virtual_host = f"{bucket}.s3.{REGION}.amazonaws.com"

    faults: dict[str, int] = {"status": 0, "count": 0, "corrupt": 0}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/__isaacfs_fault":
            # ?status=503&count=N: the next N object GETs answer that status;
            # ?corrupt=N: the next N object GETs send their body with one byte flipped.
            query = dict(part.split("=", 1) for part in environ.get("QUERY_STRING", "").split("&") if "=" in part)
            with lock:
                faults["status"] = int(query.get("status", faults["status"]))
                faults["count"] = int(query.get("count", faults["count"]))
                faults["corrupt"] = int(query.get("corrupt", faults["corrupt"]))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if path == "/__isaacfs_put":
            # ?key=K with the object's new body as the request body: the upstream changes.
            query = dict(part.split("=", 1) for part in environ.get("QUERY_STRING", "").split("&") if "=" in part)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            data = environ["wsgi.input"].read(length)
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.s3.models import get_canned_acl, s3_backends

            key_object = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].put_object(bucket, unquote(query["key"]), data)
            key_object.acl = get_canned_acl("public-read")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if path == "/__isaacfs_stats":
            with lock:
                body = json.dumps({"gets": dict(gets), "bytes": dict(sent)}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if refuse_agent and environ.get("HTTP_USER_AGENT", "").startswith(refuse_agent):
            # A bucket that wants signed requests: this client's anonymous ones are refused
            # (omni.client, standing for a client with the credentials, is served).
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>"]
        # omni.client sends the key as the path (virtual-hosted style): tell moto the bucket.
        if not path.startswith(f"/{bucket}"):
            environ["HTTP_HOST"] = virtual_host
        if environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING"):
            key = unquote(path.lstrip("/"))
            with lock:
                failing = faults["count"] > 0 and not key.endswith(".toml")
                if failing:
                    faults["count"] -= 1
                    gets[key] += 1
                corrupting = not failing and faults["corrupt"] > 0 and not key.endswith(".toml")
                if corrupting:
                    faults["corrupt"] -= 1
            if failing:
                status = f"{faults['status']} Injected"
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                        b"<Message>injected by the test</Message></Error>")
                start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
                return [body]
            if corrupting:
                captured: dict[str, Any] = {}

                def capture(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                    captured["args"] = (status, headers, *rest)
                    return lambda data: None

                chunks = b"".join(moto_app(environ, capture))
                flipped = bytes([chunks[0] ^ 0xFF]) + chunks[1:] if chunks else chunks
                with lock:
                    gets[key] += 1
                start_response(*captured["args"])
                return [flipped]

            ranged = _serve_range(bucket, key, environ.get("HTTP_RANGE", ""), start_response)
            if ranged is not None:
                with lock:
                    gets[key] += 1
                    sent[key] += len(ranged)
                return [ranged]

            def counting_start_response(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                with lock:
                    gets[key] += 1
                    sent[key] += length if status.startswith("20") else 0
                return start_response(status, headers, *rest)

            return moto_app(environ, counting_start_response)  # type: ignore[no-any-return]
        return moto_app(environ, start_response)  # type: ignore[no-any-return]

    return app


def _serve_range(bucket: str, key: str, header: str, start_response: Callable[..., Any]) -> bytes | None:
    """A ranged GET answered from the object's bytes at that offset, as S3 does. moto itself
    reads the whole object for every range, which would make the test server, not the
    client, the cost of a ranged download."""
    if not header.startswith("bytes="):
        return None
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    try:
        item = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, key)
    except Exception:
        return None
    if item is None:
        return None
    first, _, last = header[len("bytes="):].partition("-")
    if not first.isdigit():
        return None
    size = item.contentsize
    begin = int(first)
    end = min(size - 1, int(last)) if last.isdigit() else size - 1
    if begin >= size or begin > end:
        return None
    with item.lock:  # moto computes an ETag by reading the same buffer: never beside a read
        etag = item.etag
        item._value_buffer.seek(begin)
        data = item._value_buffer.read(end - begin + 1)
    start_response("206 Partial Content", [
        ("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data))),
        ("Content-Range", f"bytes {begin}-{end}/{size}"), ("Accept-Ranges", "bytes"), ("ETag", etag),
        ("Last-Modified", item.last_modified_RFC1123)])
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--prefix", default=PREFIX)
    parser.add_argument("--bucket", default=BUCKET)
    parser.add_argument("--certdir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--refuse-agent", default="",
                        help="answer 403 to requests whose User-Agent starts with this (a private bucket)")
    parser.add_argument("--extra", type=Path, help="JSON {key: text} of raw keys to add (hostile names)")
    parser.add_argument("--keepalive", action="store_true",
                        help="serve with cheroot, which keeps connections alive as real S3 does (werkzeug's"
                        " development server closes every one)")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from werkzeug.serving import make_server

    cert, key = make_certificate(args.certdir)
    count = fill_bucket(args.source, args.prefix, args.bucket)
    if args.extra:
        count += put_raw(json.loads(args.extra.read_text()), args.bucket)
    gets: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    app = make_app(args.bucket, gets, sent, threading.Lock(), args.refuse_agent)
    if args.keepalive:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        # cheroot gives each kept-alive connection a thread of its own: enough for every client
        # of a benchmark (omni.client and the HTTP reader each keep a pool), as S3 has no such cap.
        kept = wsgi.Server(("127.0.0.1", args.port), app, numthreads=160)
        # cheroot closes kept-alive connections beyond 10 idle ones (its default); S3 keeps
        # each client's connections: a client of 16 parallel requests paid new TCP and TLS
        # handshakes (3 round trips) on 6 of every 16.
        kept.keep_alive_conn_limit = 1000

        class LazyHandshake(BuiltinSSLAdapter):
            """cheroot shakes hands in its one acceptor thread: over a long link every new
            connection would wait for those before it. Here the handshake happens on the
            connection's first read, in its own worker thread, as a real S3 front end does."""

            def wrap(self, sock: Any) -> tuple[Any, dict[str, str]]:
                wrapped = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
                return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}

        kept.ssl_adapter = LazyHandshake(str(cert), str(key))
        kept.prepare()
        print(json.dumps({"port": kept.bind_addr[1], "cert": str(cert), "bucket": args.bucket,
                          "objects": count}), flush=True)
        kept.serve()
        return
    server = make_server("127.0.0.1", args.port, app, threaded=True, ssl_context=(str(cert), str(key)))
    print(json.dumps({"port": server.server_port, "cert": str(cert), "bucket": args.bucket,
                      "objects": count}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
