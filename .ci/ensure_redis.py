"""Print the URL of a Redis the tests can use, starting or installing one if none answers.

Order: $VTW_TEST_REDIS_URL, then 127.0.0.1:6379, then a `redis-server` of our own on a free
port (left running for the test session), then Debian's `redis-server` package.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_own() -> str:
    if shutil.which("redis-server") is None:
        print("no Redis answers: installing Debian's redis-server", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"], check=True, stdout=sys.stderr
        )
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="vtw-test-redis-")
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data_dir,
            "--daemonize",
            "yes",
        ],
        check=True,
        stdout=sys.stderr,
    )
    for _ in range(100):
        if answers("127.0.0.1", port):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise SystemExit(f"redis-server on port {port} did not answer")


def main() -> None:
    url = os.environ.get("VTW_TEST_REDIS_URL")
    if url:
        print(url)
        return
    if answers("127.0.0.1", 6379):
        print("redis://127.0.0.1:6379/0")
        return
    print(start_own())


if __name__ == "__main__":
    main()
