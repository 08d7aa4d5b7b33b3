"""`multigrain serve` in a subprocess for the service benchmarks, and what /proc says of it.

``ServerProcess`` starts ``python -m multigrain serve ARGS --port P`` (a free loopback port)
and returns once /health answers; ``kill()`` is ``kill -9``; leaving the ``with`` block
stops it with SIGINT (uvicorn's graceful shutdown). ``chunked_upload`` sends a chunked
body without Content-Length on a raw socket, as a hostile client would.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_S = 300


def _proc_field(pid: int, name: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/{name}")


def resident_bytes(pid: int) -> int:
    """The process's resident memory now (VmRSS)."""
    return _proc_field(pid, "status", "VmRSS:") * 1024


class ServerProcess:
    """A `multigrain serve` subprocess on a free port of 127.0.0.1 (see the module doc)."""

    def __init__(self, args: list[str], *, cwd: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "multigrain", "serve", *args, "--port", str(self.port)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        deadline = time.monotonic() + STARTUP_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("the server did not start in time")
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def written_bytes(self) -> int:
        """Bytes written so far to files and sockets (/proc/PID/io wchar)."""
        return _proc_field(self.pid, "io", "wchar:")

    def high_water(self) -> int:
        """The lifetime peak of its resident memory (VmHWM)."""
        return _proc_field(self.pid, "status", "VmHWM:") * 1024

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def chunked_upload(port: int, path: str, total: int, *, timeout: float = 120.0) -> tuple[int, str]:
    """POST a chunked multipart body of `total` bytes (no Content-Length) on a raw socket.

    Returns (body bytes sent before the server answered or closed, its status line, or ''
    when the connection was reset before the answer could be read). Used by
    tests/test_service_hardening.py too.
    """
    boundary = "b0undary"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk, sent = 64 * 1024, 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            body = part
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered (or closed) before the end of the body
                payload = body + b"\0" * (chunk - len(body))
                body = b""
                sock.sendall(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                sent += len(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096).decode("latin-1")
        except ConnectionResetError:
            answer = ""
    return sent, answer.split("\r\n", 1)[0]
