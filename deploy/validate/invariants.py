"""Cross-file rules of the deploy files that no schema can see.

    python deploy/validate/invariants.py --compose CONFIG.json... --k8s RENDERED.yaml...
        [--lock deploy/requirements.lock]

CONFIG.json: `docker compose config --format json` output; RENDERED.yaml: a rendered overlay;
--lock: the image's pinned requirements, checked against pyproject.toml's dependencies.
Prints one line per broken rule and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

Doc = dict[str, Any]
# Time a worker needs after its grace period: cancel what is left, close the pools.
STOP_MARGIN_SECONDS = 5.0
DEFAULT_GRACE_SECONDS = 10.0
REDIS_SETTINGS = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
VTWATCH_SERVICES = {"api", "worker", "simulator", "receiver"}
REDIS = "redis-server"


def seconds(duration: str) -> float:
    """A Go duration as compose writes it ("30s", "1m30s")."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    return sum(float(number) * units[unit] for number, unit in parts)


def redis_settings(words: list[str]) -> dict[str, str]:
    """The `--name value` pairs of a redis-server command line."""
    pairs = itertools.pairwise(words)
    return {name.removeprefix("--"): value for name, value in pairs if name.startswith("--")}


def check_compose(path: Path) -> Iterator[str]:
    services: dict[str, Doc] = json.loads(path.read_text())["services"]
    for name, service in services.items():
        if "stop_grace_period" not in service:
            yield f"{name}: no stop_grace_period (podman's Docker API then kills at once)"
        if name in VTWATCH_SERVICES and not service.get("read_only"):
            yield f"{name}: root filesystem not read_only"
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD"] and any(" " in word for word in test[1:]):
            yield f"{name}: healthcheck CMD argument with a space (podman splits it: CMD-SHELL)"
    worker = services["worker"]
    grace = float(worker["environment"].get("VTW_SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))
    stop = seconds(worker.get("stop_grace_period", "10s"))
    if stop < grace + STOP_MARGIN_SECONDS:
        yield f"worker: stop_grace_period {stop:g}s leaves no room after the {grace:g}s grace"
    nodes = {n: s["command"] for n, s in services.items() if s.get("command", [])[:1] == [REDIS]}
    if not nodes:
        yield "no redis-server service"
    for name, command in nodes.items():  # one Redis, or each node of a cluster
        for key, value in REDIS_SETTINGS.items():
            if redis_settings(command).get(key) != value:
                yield f"{name}: command lacks --{key} {value}"


def pod_spec(doc: Doc) -> Doc:
    """The pod template's spec of a workload; {} for other kinds."""
    spec: Doc = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def check_k8s(path: Path) -> Iterator[str]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_kind: dict[str, dict[str, Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind.get("ConfigMap", {}).get("vtwatch-config", {}).get("data", {})
    grace = float(config.get("VTW_SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE_SECONDS))
    deployments = by_kind.get("Deployment", {})
    api, worker = deployments["vtwatch-api"], deployments["vtwatch-worker"]
    if api["spec"].get("replicas", 1) < 2:
        yield "vtwatch-api: fewer than 2 replicas"
    probes = pod_spec(api)["containers"][0]
    if probes.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        yield "vtwatch-api: liveness probe is not /healthz"
    if probes.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        yield "vtwatch-api: readiness probe is not /readyz"
    termination = pod_spec(worker).get("terminationGracePeriodSeconds", 30)
    if termination < grace + STOP_MARGIN_SECONDS:
        yield f"vtwatch-worker: terminationGracePeriodSeconds {termination} too close to {grace:g}"
    budgets = {
        d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component")
        for d in by_kind.get("PodDisruptionBudget", {}).values()
    }
    for component in ("api", "worker"):
        if component not in budgets:
            yield f"no PodDisruptionBudget for the {component}"
    targets = {
        d["spec"]["scaleTargetRef"]["name"]
        for d in by_kind.get("HorizontalPodAutoscaler", {}).values()
    }
    if "vtwatch-worker" not in targets:
        yield "no HorizontalPodAutoscaler for vtwatch-worker"
    if "vtwatch-default-deny" not in by_kind.get("NetworkPolicy", {}):
        yield "no default-deny NetworkPolicy"
    for doc in docs:
        spec = pod_spec(doc)
        if not spec:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            yield f"{name}: pods may run as root"
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            if not context.get("readOnlyRootFilesystem"):
                yield f"{name}/{container['name']}: root filesystem not read-only"
            if context.get("allowPrivilegeEscalation") is not False:
                yield f"{name}/{container['name']}: privilege escalation allowed"
            if "resources" not in container:
                yield f"{name}/{container['name']}: no resources"
    if "vtwatch-redis" in by_kind.get("StatefulSet", {}):
        conf = by_kind["ConfigMap"]["vtwatch-redis"]["data"]["redis.conf"]
        lines = [line.split() for line in conf.splitlines() if line and not line.startswith("#")]
        settings = {words[0]: " ".join(words[1:]) for words in lines}
        for key, value in REDIS_SETTINGS.items():
            if settings.get(key) != value:
                yield f"vtwatch-redis: redis.conf lacks `{key} {value}`"
        if not by_kind["StatefulSet"]["vtwatch-redis"]["spec"].get("volumeClaimTemplates"):
            yield "vtwatch-redis: no PersistentVolumeClaim"


def check_lock(lock: Path, pyproject: Path = Path("pyproject.toml")) -> Iterator[str]:
    """Every runtime dependency is pinned in the lock, at a version its specifier admits."""
    pins = {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock.read_text(), re.M)
    }
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            yield f"{requirement.name} not pinned (run deploy/lock.sh)"
        elif not requirement.specifier.contains(pinned, prereleases=True):
            yield f"{requirement.name}=={pinned} outside {requirement.specifier} (deploy/lock.sh)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", type=Path, nargs="*", default=[])
    parser.add_argument("--k8s", type=Path, nargs="*", default=[])
    parser.add_argument("--lock", type=Path)
    args = parser.parse_args()
    problems = [f"{p}: {msg}" for p in args.compose for msg in check_compose(p)]
    problems += [f"{p}: {msg}" for p in args.k8s for msg in check_k8s(p)]
    if args.lock:
        problems += [f"{args.lock}: {msg}" for msg in check_lock(args.lock)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
