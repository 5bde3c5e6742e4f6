"""Copy the served v1 OpenAPI schemas of KubeRay's RayCluster and RayJob CRDs into this folder.

The CRD files are large (about 2 MB of YAML, two API versions each); tests only need the v1 `openAPIV3Schema`,
which is what a Kubernetes API server checks a RayCluster / RayJob against. Refresh after a KubeRay upgrade:

    python infra/k8s/crds/vendor.py PATH/TO/kuberay/ray-operator/config/crd/bases   (or ../shared/k8s-crds)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
VERSION = "v1"


def schema_file(kind: str) -> Path:
    """Where the vendored schema of `kind` lives."""
    return HERE / f"{kind.lower()}.{VERSION}.schema.json"


def v1_schema(crd: dict) -> dict:
    """The openAPIV3Schema of the CRD's v1 version."""
    for version in crd["spec"]["versions"]:
        if version["name"] == VERSION:
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(f"CRD {crd['metadata']['name']} has no {VERSION} version")


def load_crd(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return yaml.load(f, Loader=loader)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    for kind, name in CRD_FILES.items():
        schema = v1_schema(load_crd(source / name))
        schema_file(kind).write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{kind}: {schema_file(kind)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
