"""The deployments as the tests read them, offline: the compose files, and the kustomizations
in k8s/ rendered by `build`, a small `kustomize build` that handles exactly the features those
kustomizations use and refuses any other. test_manifests.py checks that its output is
`kubectl kustomize`'s wherever kubectl is installed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# --- compose --------------------------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!reset`, `!override`), read as their plain value."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )


def load_compose(path: Path) -> dict[str, Any]:
    # ComposeLoader is a SafeLoader: it resolves the `<<: *service` merge keys too.
    return yaml.load(path.read_text(), Loader=ComposeLoader)


# --- kustomize ------------------------------------------------------------------------------

Document = dict[str, Any]

# The fields of a kustomization.yaml this renderer knows; any other is an error.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "labels"}
# Lists a strategic merge patch merges item by item, by the key the Kubernetes API declares for
# them (patchMergeKey). A patch giving any other list that the target has too is refused.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
DELETE = {"$patch": "delete"}
# Where `labels` with includeTemplates adds its pairs besides metadata.labels.
TEMPLATE_KINDS = {"Deployment", "StatefulSet"}


class Unsupported(Exception):
    """A kustomization uses what this renderer does not handle: extend it, or kustomize less."""


def build(directory: Path) -> list[Document]:
    """The objects `kustomize build directory` gives (in the order they are listed)."""
    kustomization = read_yaml(directory / "kustomization.yaml")[0]
    if kustomization.get("kind") != "Kustomization" or set(kustomization) - KUSTOMIZATION_FIELDS:
        raise Unsupported(f"{directory}: {sorted(set(kustomization) - KUSTOMIZATION_FIELDS)}")
    documents: list[Document] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        documents += build(path) if path.is_dir() else read_yaml(path)
    names = [identity(document) for document in documents]
    if len(names) != len(set(names)):
        raise Unsupported(f"{directory}: an object is defined twice: {names}")
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise Unsupported(f"{directory}: only patches given by path: {entry}")
        for patch in read_yaml(directory / entry["path"]):
            documents = apply_patch(documents, patch)
    for entry in kustomization.get("labels", []):
        documents = [add_labels(document, entry) for document in documents]
    return documents


def read_yaml(path: Path) -> list[Document]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def identity(document: Document) -> tuple[str, str, str]:
    return document["apiVersion"], document["kind"], document["metadata"]["name"]


def apply_patch(documents: list[Document], patch: Document) -> list[Document]:
    """A strategic merge patch onto the object of its apiVersion, kind and name."""
    targets = [d for d in documents if identity(d) == identity(patch)]
    if len(targets) != 1:
        raise Unsupported(f"patch {identity(patch)}: no object to patch")
    [target] = targets
    if patch.get("$patch") == "delete":
        return [d for d in documents if d is not target]
    return [merged(target, patch, ()) if d is target else d for d in documents]


def merged(target: Any, patch: Any, path: tuple[str, ...]) -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        if any(key.startswith("$") for key in patch):
            raise Unsupported(f"{'.'.join(path)}: directive {patch}")
        result = dict(target)
        for key, value in patch.items():
            result[key] = merged(target[key], value, (*path, key)) if key in target else value
        return without_directives(result, path)
    if isinstance(patch, list) and isinstance(target, list):
        if path[-1] not in MERGE_KEYS:
            raise Unsupported(f"{'.'.join(path)}: how kustomize merges this list")
        return merged_list(target, patch, MERGE_KEYS[path[-1]], path)
    return copy.deepcopy(patch)


def merged_list(
    target: list[Document], patch: list[Document], key: str, path: tuple[str, ...]
) -> list[Document]:
    """Items merged by their key; those the target lacks come first, as kustomize puts them;
    an item `{key: ..., $patch: delete}` deletes the target's."""
    patches = {item[key]: item for item in patch}
    if len(patches) != len(patch):
        raise Unsupported(f"{'.'.join(path)}: an item twice")
    present = {item[key] for item in target}
    added, result = [], []
    for item in patch:
        if item[key] not in present:
            if item.get("$patch") == "delete":
                raise Unsupported(f"{'.'.join(path)}: nothing to delete at {item}")
            added.append(without_directives(item, path))
    for item in target:
        change = patches.get(item[key])
        if change is None:
            result.append(item)
        elif change == {key: item[key], **DELETE}:
            continue
        else:
            result.append(merged(item, change, (*path, str(item[key]))))
    return added + result


def without_directives(value: Any, path: tuple[str, ...]) -> Any:
    """A patch's own new content: it must hold no directive, which only existing items take."""
    if isinstance(value, dict):
        if any(str(key).startswith("$") for key in value):
            raise Unsupported(f"{'.'.join(path)}: directive on nothing: {value}")
        return {key: without_directives(item, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [without_directives(item, path) for item in value]
    return copy.deepcopy(value)


def add_labels(document: Document, entry: dict[str, Any]) -> Document:
    """`labels`, without selectors: on every object, and its pod and claim templates."""
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get(
        "includeSelectors"
    ):
        raise Unsupported(f"labels: {entry}")
    document = copy.deepcopy(document)
    pairs = entry["pairs"]
    metadatas = [document["metadata"]]
    if entry.get("includeTemplates") and document["kind"] in TEMPLATE_KINDS:
        spec = document["spec"]
        metadatas.append(spec["template"].setdefault("metadata", {}))
        metadatas += [claim["metadata"] for claim in spec.get("volumeClaimTemplates", [])]
    for metadata in metadatas:
        metadata["labels"] = {**metadata.get("labels", {}), **pairs}
    return document
