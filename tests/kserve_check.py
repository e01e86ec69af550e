"""Check Kubernetes manifests against the KServe Python SDK's models, strictly.

Run as ``python kserve_check.py FILE...``; prints ``{"FILE": ["error", ...]}`` as JSON.

Each document is built into the SDK's model class for its kind (``kserve.models`` for
KServe kinds, ``kubernetes.client`` for the core types they embed), field by field from the
classes' own ``openapi_types``/``attribute_map``: an unknown key is an error (as with
``kubectl apply --validate=strict``), a value of the wrong type is an error, and each
class's constructor checks its required fields. The SDK's own ``ApiClient.deserialize``
would silently drop unknown keys, hiding typos.

A separate process on purpose: importing ``kserve`` registers the ``inference.*`` protobuf
symbols, which clash with ``tritonclient.grpc``'s in the test process.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import kserve.models
import kubernetes.client
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


if __name__ == "__main__":
    print(json.dumps({path: check(path) for path in sys.argv[1:]}))
