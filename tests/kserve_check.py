"""Check Kubernetes manifests against the KServe Python SDK's models, strictly, and serving
runtimes against KServe's admission webhook rule on auto-selection priorities.

Run as ``python kserve_check.py FILE...``; prints ``{"FILE": ["error", ...]}`` as JSON.

Each document is built into the SDK's model class for its kind (``kserve.models`` for
KServe kinds, ``kubernetes.client`` for the core types they embed), field by field from the
classes' own ``openapi_types``/``attribute_map``: an unknown key is an error (as with
``kubectl apply --validate=strict``), a value of the wrong type is an error, and each
class's constructor checks its required fields. The SDK's own ``ApiClient.deserialize``
would silently drop unknown keys, hiding typos.

A separate process on purpose: importing ``kserve`` registers the ``inference.*`` protobuf
symbols, which clash with ``tritonclient.grpc``'s in the test process. The priority rule
(:func:`admission_errors`) needs no SDK: it is imported by the tests directly, and ``kserve``
is imported only when a document is built.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import yaml

KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    # Quantities ("500m", "1Gi", 8): the SDK types them by name only.
    "ResourceQuantity": (str, int, float),
    "V1beta1MetricQuantity": (str, int, float),
}


def model_class(name: str) -> Any:
    import kserve.models
    import kubernetes.client

    for module in (kserve.models, kubernetes.client):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise LookupError(f"the SDK has no model {name}")


def build(type_name: str, value: Any, where: str, errors: list[str]) -> Any:
    if value is None:
        return None
    if (m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name)) is not None:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list")
            return None
        return [build(m.group(1), item, f"{where}[{i}]", errors) for i, item in enumerate(value)]
    if (m := re.fullmatch(r"dict\((.+?), (.+)\)|Dict\[(.+?), (.+)\]", type_name)) is not None:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping")
            return None
        item_type = m.group(2) or m.group(4)
        return {k: build(item_type, v, f"{where}.{k}", errors) for k, v in value.items()}
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (type_name == "int" and isinstance(value, bool)):
            errors.append(f"{where}: expected {type_name}, got {type(value).__name__}")
        return value
    cls = model_class(type_name)
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping ({type_name})")
        return None
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        attr = by_key.get(key)
        if attr is None:
            errors.append(f"{where}.{key}: unknown field of {type_name}")
            continue
        kwargs[attr] = build(cls.openapi_types[attr], item, f"{where}.{key}", errors)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.append(f"{where}: {exc}")
        return None


def check(path: str) -> list[str]:
    errors: list[str] = []
    with open(path, encoding="utf-8") as file:
        documents = [d for d in yaml.safe_load_all(file) if d is not None]
    if not documents:
        return ["no document"]
    for index, doc in enumerate(documents):
        kind = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        if kind is None:
            errors.append(f"document {index}: unknown kind {doc.get('apiVersion')}/{doc.get('kind')}")
            continue
        build(kind, doc, f"document {index}", errors)
    return errors


# --------------------------------------------------------------------------- auto-selection priorities
#
# KServe's validating webhook for (Cluster)ServingRuntimes (pkg/webhook/admission/servingruntime,
# servingruntime_webhook.go) refuses to create or update a runtime, unless it is disabled, when:
#
# - two of its own auto-selected formats of one name carry different priorities
#   (validateModelFormatPrioritySame; names compared exactly, versions not at all);
# - an existing runtime of the same kind, other name, same multi-model setting and not
#   disabled, that shares a protocol version with it, has an auto-selected format equal to one
#   of its auto-selected formats (name without regard to case, versions both unset or equal)
#   with the same priority (validateServingRuntimePriority). A missing priority never clashes.
#
# Its error texts are reproduced, so that a failing test reads as kubectl would.


def _auto_selected(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in spec.get("supportedModelFormats") or [] if f.get("autoSelect") is True]


def _same_format(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return str(a["name"]).lower() == str(b["name"]).lower() and a.get("version") == b.get("version")


def _priorities_differ_within(spec: dict[str, Any]) -> str | None:
    seen: dict[str, Any] = {}
    for fmt in _auto_selected(spec):
        if fmt["name"] not in seen:
            seen[fmt["name"]] = fmt.get("priority")
        elif seen[fmt["name"]] is not None and fmt.get("priority") is not None and seen[fmt["name"]] != fmt["priority"]:
            return f"different priorities assigned for the model format {fmt['name']}"
    return None


def _priority_clash(new: dict[str, Any], new_name: str, existing: dict[str, Any], existing_name: str) -> str | None:
    if bool(new.get("multiModel")) != bool(existing.get("multiModel")) or existing.get("disabled") is True:
        return None
    if existing_name == new_name:
        return None  # an update of the same runtime
    if not set(existing.get("protocolVersions") or []) & set(new.get("protocolVersions") or []):
        return None
    for old in _auto_selected(existing):
        for fmt in _auto_selected(new):
            same_priority = old.get("priority") is not None and old.get("priority") == fmt.get("priority")
            if _same_format(old, fmt) and same_priority:
                return f"same priority assigned for the model format {fmt['name']}"
    return None


def admission_errors(new: dict[str, Any], existing: list[dict[str, Any]]) -> list[str]:
    """Why KServe's webhook would refuse to admit the runtime ``new`` (a parsed manifest) into
    a cluster that holds the runtimes ``existing`` (of any kind: only ``new``'s kind counts);
    empty when it admits it. Like the webhook, it stops at the first refusal."""
    spec = new["spec"]
    if spec.get("disabled") is True:
        return []
    cluster = new["kind"] == "ClusterServingRuntime"
    name = new["metadata"]["name"]
    for other in (o for o in existing if o["kind"] == new["kind"]):
        within = _priorities_differ_within(spec)
        if within is not None:
            where = "clusterservingruntime" if cluster else "servingruntime"
            return [f"{within} under the {where} {name}"]
        clash = _priority_clash(spec, name, other["spec"], other["metadata"]["name"])
        if clash is not None:
            if cluster:
                return [f"{clash} in the clusterservingruntimes {other['metadata']['name']} and {name}"]
            namespace = new["metadata"].get("namespace", "default")
            return [f"{clash} in the servingruntimes {other['metadata']['name']} and {name} in namespace {namespace}"]
    return []


if __name__ == "__main__":
    print(json.dumps({path: check(path) for path in sys.argv[1:]}))
