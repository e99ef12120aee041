"""A real Redis Cluster for the tests: 3 masters and 3 replicas on free loopback ports, each
with its own data directory in a temporary one, torn down at the end of the session.

`cluster` (session-scoped) yields a `LocalCluster`; a test is skipped, with the reason, only
where `redis-server` (or `redis-cli`) is missing. PYTEST_DONT_REWRITE: no asserts live here.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

MASTERS = 3
NODE_TIMEOUT_MS = 1000  # how soon a silent master is failed over (replica promoted)
READY_SECONDS = 30.0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """`n` ports free along with their cluster bus ports (port + 10000, so below 55536)."""
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(20_000, 45_000)
        if port not in found and _free(port) and _free(port + 10_000):
            found.append(port)
    return found


def redis_server(port: int, data: Path, *options: str) -> subprocess.Popen[bytes]:
    """A `redis-server` on 127.0.0.1:`port` with its own data directory `data` (made if need
    be), no snapshots and no AOF unless `options` say otherwise, its log in `data`."""
    data.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--save", "", "--appendonly", "no", "--logfile", str(data / "redis.log")),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def replicas_in_sync(master: int) -> bool:
    """Whether the Redis on port `master` has replicas, each `online` with its link up: a
    `WAIT` can succeed (a fresh replica's first sync ends a moment after it connects)."""
    try:
        with redis.Redis(port=master, decode_responses=True, socket_timeout=2) as client:
            info = client.info("replication")
        replicas = [info[f"slave{i}"] for i in range(int(info.get("connected_slaves", 0)))]
        if not replicas or any(r["state"] != "online" for r in replicas):
            return False
        for replica in replicas:
            with redis.Redis(port=int(replica["port"]), socket_timeout=2) as follower:
                if follower.info("replication")["master_link_status"] != "up":
                    return False
        return True
    except redis.RedisError:
        return False


@dataclass
class LocalCluster:
    root: Path
    ports: list[int]
    aof: bool = True
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Any one node: the client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        data = self.root / str(port)
        self.procs[port] = redis_server(
            port,
            data,
            *("--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf")),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
            *(("--appendonly", "yes", "--appendfsync", "everysec") if self.aof else ()),
            # replicas sync at once, not 5 s after they ask
            *("--repl-diskless-sync-delay", "0"),
        )

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def masters(self) -> list[int]:
        """The ports of the masters now (failovers change them)."""
        found = []
        for port in self.ports:
            if self.procs[port].poll() is not None:
                continue
            try:
                with self.node(port) as client:
                    if client.info("replication")["role"] == "master":
                        found.append(port)
            except redis.RedisError:
                continue
        return found

    def wait_ok(self, seconds: float = READY_SECONDS) -> None:
        """Until every running node says `cluster_state:ok` and sees 3 masters."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(self._ok(port) for port in self.ports if self.procs[port].poll() is None):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the test cluster is not ok after {seconds:.0f} s ({self.root})")

    def _ok(self, port: int) -> bool:
        try:
            with self.node(port) as client:
                info = client.cluster("info")
        except redis.RedisError:
            return False
        return info.get("cluster_state") == "ok" and int(info.get("cluster_size", 0)) == 3

    def wait_promoted(self, seconds: float = READY_SECONDS) -> None:
        """After a master was killed: until its replica is a master and the cluster is ok."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(self.masters()) == 3:
                self.wait_ok(deadline - time.monotonic())
                return
            time.sleep(0.1)
        raise RuntimeError(f"no replica was promoted within {seconds:.0f} s ({self.root})")

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait()


def start_cluster(aof: bool = True, replicas: int = 1) -> LocalCluster:
    """Start 3 masters with `replicas` each, make them a cluster, wait until it is ok (`aof`:
    AOF, everysec)."""
    root = Path(tempfile.mkdtemp(prefix="vtw-test-cluster-"))
    local = LocalCluster(root, _free_ports(MASTERS * (1 + replicas)), aof)
    for port in local.ports:
        local.start_node(port)
    try:
        for port in local.ports:
            _wait_ping(local, port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in local.ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        local.wait_ok()
    except BaseException:
        local.stop()
        raise
    return local


def _wait_ping(local: LocalCluster, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with local.node(port) as client:
                if client.ping():
                    return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start (see {local.root})")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no Redis Cluster tests: {' and '.join(missing)} not installed")
    local = start_cluster()
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(local.root, ignore_errors=True)
