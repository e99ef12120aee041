"""Render a kustomization without kubectl: exactly the subset deploy/k8s uses.

    python deploy/validate/kustomize_lite.py DIR [--expect RENDERED.yaml]

Supported: `resources` (files, and directories holding a kustomization.yaml), `namespace`,
`images`, `replicas`, and JSON 6902 `patches` aimed by kind and name. Anything else is refused,
so a kustomization that outgrows this renderer fails validation instead of rendering wrongly.
With --expect, compares its output with another rendering (validate.sh passes `kubectl
kustomize`'s wherever kubectl exists) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}
SCALABLE = {"Deployment", "ReplicaSet", "ReplicationController", "StatefulSet"}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Doc]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = sorted(set(spec) - FIELDS)
    if unknown:
        raise Unsupported(f"{directory}: fields {unknown} are not supported")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    # kustomize's order of built-in transformers: patches, namespace, replicas, images.
    for patch in spec.get("patches", []):
        apply_patch(docs, patch, directory)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    for replicas in spec.get("replicas", []):
        for doc in docs:
            if doc["kind"] in SCALABLE and doc["metadata"]["name"] == replicas["name"]:
                doc["spec"]["replicas"] = replicas["count"]
    for image in spec.get("images", []):
        for container in containers(docs):
            container["image"] = retag(container["image"], image)
    return docs


def apply_patch(docs: list[Doc], patch: Doc, directory: Path) -> None:
    target = patch.get("target", {})
    if set(target) - {"kind", "name"} or set(patch) - {"target", "patch", "path"}:
        raise Unsupported(f"patch {patch}: only a kind/name target and patch or path")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported("only JSON 6902 patches (a list of operations) are supported")
    matched = [
        doc
        for doc in docs
        if doc["kind"] == target.get("kind", doc["kind"])
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
    ]
    for doc in matched:
        for operation in operations:
            apply_operation(doc, operation)


def apply_operation(doc: Doc, operation: Doc) -> None:
    op, path = operation["op"], operation["path"]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON patch op {op!r}")
    *parents, last = (t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/"))
    node: Any = doc
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        else:
            del node[index]
    elif op == "add":
        node[last] = operation["value"]
    elif last not in node:
        raise KeyError(f"{path}: no such field to {op}")
    elif op == "replace":
        node[last] = operation["value"]
    else:
        del node[last]


def containers(node: Any) -> list[Doc]:
    """Every container and init container anywhere below `node`."""
    found: list[Doc] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict) and "image" in c]
            else:
                found += containers(value)
    elif isinstance(node, list):
        for item in node:
            found += containers(item)
    return found


def retag(reference: str, image: Doc) -> str:
    name, digest = reference.partition("@")[::2]
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return reference
    name = str(image.get("newName", name))
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def keyed(docs: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    return {
        (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]): doc
        for doc in docs
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--expect", type=Path, help="compare with this rendering instead")
    args = parser.parse_args()
    try:
        docs = render(args.directory)
    except (Unsupported, KeyError, IndexError, ValueError) as exc:
        print(f"kustomize_lite: {args.directory}: {exc!r}", file=sys.stderr)
        return 1
    if args.expect is None:
        yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
        return 0
    mine, theirs = keyed(docs), keyed(list(yaml.safe_load_all(args.expect.read_text())))
    differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    for key in differing:
        print(f"kustomize_lite: differs from {args.expect}: {'/'.join(key)}", file=sys.stderr)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
