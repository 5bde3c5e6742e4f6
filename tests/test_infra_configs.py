"""The cluster configs in infra/ parse and carry what their tools require, checked offline.

- Ray cluster launcher configs (infra/cluster/*.yaml): Ray's own config preparation and JSON-schema validation (what
  `ray up` runs before touching a cloud), plus this project's requirements: GPU workers that scale from zero on spot,
  the package installed on every node, token authentication, no credentials.
- KubeRay manifests (infra/k8s/*.yaml): validated against the v1 OpenAPI schemas of the RayCluster / RayJob CRDs the
  way `kubectl apply --validate=strict` would (unknown fields are errors), plus GPU limits, token auth, credentials
  only through a Secret or the service account, and the RayJob's cluster equal to the RayCluster.
- The Dockerfile: the instructions and build args it must have, and files it copies that exist.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
CLUSTER_CONFIGS = sorted((INFRA / "cluster").glob("*.yaml"))
K8S = INFRA / "k8s"
SHARED_CRDS = REPO.parent / "shared" / "k8s-crds"  # CI sees shared/ beside the clone, read-only, or not at all
IMAGE_REPOSITORY = "splice-pipeline"
CREDENTIAL_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crd_vendor = _load_module(K8S / "crds" / "vendor.py", "infra_crd_vendor")


def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


# --- Ray cluster launcher configs -------------------------------------------------------------------------


def test_both_clouds_have_a_launcher_config():
    assert {p.name for p in CLUSTER_CONFIGS} >= {"aws.yaml", "gcp.yaml"}


@pytest.fixture(params=CLUSTER_CONFIGS, ids=lambda p: p.name)
def launcher_config(request) -> dict:
    return load_yaml(request.param)


def test_launcher_config_has_the_keys_ray_up_needs(launcher_config):
    config = launcher_config
    for key in (
        "cluster_name",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "max_workers",
    ):
        assert key in config, f"missing top-level key {key!r}"
    assert config["provider"]["type"] in ("aws", "gcp")
    assert config["provider"].get("region")
    assert config["auth"].get("ssh_user")
    assert config["head_node_type"] in config["available_node_types"]
    for name, node_type in config["available_node_types"].items():
        assert node_type.get("node_config"), f"node type {name} has no node_config"


def test_launcher_config_passes_rays_own_validation(launcher_config):
    """What `ray up` does before it calls a cloud API: fill in the provider's defaults, then schema-check."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher_config)))


def _gpu_worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {
        name: t
        for name, t in config["available_node_types"].items()
        if name != head and _has_gpu(config["provider"]["type"], t)
    }


def _has_gpu(provider: str, node_type: dict) -> bool:
    if node_type.get("resources", {}).get("GPU", 0) > 0:
        return True
    node_config = node_type["node_config"]
    if provider == "aws":  # GPU families: g (graphics/inference), p (training)
        return node_config["InstanceType"].split(".")[0][0] in "gp"
    return node_config["machineType"].startswith(("g2-", "a2-", "a3-")) or bool(node_config.get("guestAccelerators"))


def _is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


def test_launcher_config_has_a_cpu_head_and_gpu_workers_on_spot_that_scale_from_zero(launcher_config):
    config = launcher_config
    provider = config["provider"]["type"]
    head = config["available_node_types"][config["head_node_type"]]
    assert not _has_gpu(provider, head), "the head should be a CPU node: GPUs idle there"
    assert not _is_spot(provider, head["node_config"]), "the head holds the cluster's state: never on spot"
    assert head["resources"].get("CPU") == 0, "pairs must not be scheduled on the head"
    workers = _gpu_worker_types(config)
    assert workers, "no GPU worker node type"
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, f"{name} should scale from zero"
        assert node_type.get("max_workers", 0) >= 1, f"{name} can never start"
        assert _is_spot(provider, node_type["node_config"]), f"{name} is not a spot / preemptible node type"
    assert config["max_workers"] >= max(t["max_workers"] for t in workers.values())


def test_launcher_config_installs_the_package_on_every_node(launcher_config):
    config = launcher_config
    # the checkout is copied to every node (file_mounts reach workers too) ...
    mounted = [remote for remote, local in config["file_mounts"].items() if local in (".", "./")]
    assert mounted, "the repository checkout is not among file_mounts"
    # ... and installed by the commands that run on every node (not head-only ones)
    installs = [c for c in config["setup_commands"] if "pip install" in c and mounted[0] in c]
    assert installs, f"setup_commands do not pip install {mounted[0]}"
    # the image that holds the dependencies is this project's
    assert IMAGE_REPOSITORY in config["docker"]["image"]
    # the rest of the checkout's junk stays home
    assert ".venv" in config.get("rsync_exclude", []) or ".gitignore" in config.get("rsync_filter", [])


def test_launcher_config_turns_on_token_authentication_without_carrying_the_token(launcher_config):
    config = launcher_config
    docker_env = " ".join(config["docker"].get("run_options", []))
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in docker_env + start
    # the token travels as a file from the launching machine, never as a literal in the config
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in json.dumps(config)


# --- KubeRay manifests --------------------------------------------------------------------------------------


def strict(schema: dict) -> dict:
    """A copy of a structural CRD schema in which objects reject unknown fields, as the API server does.

    Kubernetes prunes (and with --validate=strict rejects) fields a structural schema does not declare, unless the
    node says x-kubernetes-preserve-unknown-fields; JSON Schema allows them unless additionalProperties is false.
    """
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict(sub) for sub in schema[key]]
    return out


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict]:
    """kind -> v1 openAPIV3Schema: from ../shared/k8s-crds when present, else the copies in infra/k8s/crds/."""
    schemas = {}
    for kind, crd_name in crd_vendor.CRD_FILES.items():
        if (SHARED_CRDS / crd_name).exists():
            schemas[kind] = crd_vendor.v1_schema(crd_vendor.load_crd(SHARED_CRDS / crd_name))
        else:
            schemas[kind] = json.loads(crd_vendor.schema_file(kind).read_text())
    return schemas


@pytest.fixture(scope="module")
def validators(crd_schemas) -> dict[str, jsonschema.Draft7Validator]:
    return {kind: jsonschema.Draft7Validator(strict(schema)) for kind, schema in crd_schemas.items()}


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with open(path) as f:
            docs += [(path.name, doc) for doc in yaml.safe_load_all(f) if doc]
    return docs


def _by_kind(kind: str) -> dict:
    found = [doc for _, doc in k8s_documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in infra/k8s, found {len(found)}"
    return found[0]


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_vendored_crd_schemas_match_the_shared_crds():
    if not SHARED_CRDS.exists():
        pytest.skip("../shared/k8s-crds is not here: nothing to compare the vendored copies with")
    for kind, crd_name in crd_vendor.CRD_FILES.items():
        shared = crd_vendor.v1_schema(crd_vendor.load_crd(SHARED_CRDS / crd_name))
        vendored = json.loads(crd_vendor.schema_file(kind).read_text())
        assert vendored == shared, f"infra/k8s/crds copy of {kind} is stale: run infra/k8s/crds/vendor.py"


def test_k8s_manifests_are_valid_against_the_crd_schemas(validators):
    kinds = set()
    for name, doc in k8s_documents():
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), f"{name}: bad metadata.name"
        kinds.add(doc["kind"])
        if doc["kind"] in validators:
            assert doc["apiVersion"] == "ray.io/v1", name
            assert _errors(validators[doc["kind"]], doc) == [], name
    assert {"RayCluster", "RayJob"} <= kinds


def test_strict_validation_rejects_what_the_api_server_would(validators):
    """The validator is not vacuous: an unknown field and a wrongly typed one are both caught."""
    cluster = copy.deepcopy(_by_kind("RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["gpus"] = 1  # no such field
    assert any("gpus" in e for e in _errors(validators["RayCluster"], cluster))
    cluster = copy.deepcopy(_by_kind("RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    assert any("maxReplicas" in e for e in _errors(validators["RayCluster"], cluster))
    job = copy.deepcopy(_by_kind("RayJob"))
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envv"] = []
    assert _errors(validators["RayJob"], job)


def _pod_specs(cluster_spec: dict) -> dict[str, dict]:
    pods = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]}
    for group in cluster_spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


@pytest.fixture(params=["RayCluster", "RayJob"])
def cluster_spec(request) -> dict:
    doc = _by_kind(request.param)
    return doc["spec"] if request.param == "RayCluster" else doc["spec"]["rayClusterSpec"]


def test_gpu_worker_group_requests_gpus_and_autoscales(cluster_spec):
    assert cluster_spec["enableInTreeAutoscaling"] is True
    assert cluster_spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "pairs must not run on the head"
    head = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {}), "the head should not hold a GPU"
    gpu_groups = [
        g
        for g in cluster_spec["workerGroupSpecs"]
        if any(
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
            for c in g["template"]["spec"]["containers"]
        )
    ]
    assert gpu_groups, "no worker group with an nvidia.com/gpu limit"
    for group in gpu_groups:
        assert group["minReplicas"] == 0 < group["maxReplicas"]


def test_token_authentication_is_on(cluster_spec):
    assert cluster_spec["authOptions"]["mode"] == "token"


def test_store_credentials_come_from_a_secret_or_the_service_account_never_a_literal(cluster_spec):
    service_account = _by_kind("ServiceAccount")["metadata"]["name"]
    for name, pod in _pod_specs(cluster_spec).items():
        assert pod.get("serviceAccountName") == service_account, f"{name} pods do not run as {service_account}"
        for container in pod["containers"]:
            assert IMAGE_REPOSITORY in container["image"]
            for env in container.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, f"{name}: {env['name']} is a literal"
            secrets = [s["secretRef"] for s in container.get("envFrom", []) if "secretRef" in s]
            assert secrets and all(s.get("optional") for s in secrets), (
                f"{name}: read the store Secret through envFrom, optional (a cloud role may stand in for it)"
            )


def test_rayjob_runs_a_manifest_end_to_end_on_the_same_cluster_as_the_raycluster():
    job = _by_kind("RayJob")["spec"]
    assert job["rayClusterSpec"] == _by_kind("RayCluster")["spec"], "rayjob.yaml and raycluster.yaml drifted"
    assert job["entrypoint"].startswith("splice run ")
    assert "splice evaluate" in job["entrypoint"] and "splice report" in job["entrypoint"]
    # the GPU group starts at 0 pods: only an explicit GPU request makes the autoscaler start one
    assert "--gpus-per-task" in job["entrypoint"].split("&&")[0]
    assert job["shutdownAfterJobFinishes"] is True


def test_no_credentials_anywhere_in_infra():
    access_key = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    # a 40-character secret key after its name (placeholders such as `...` or `$SECRET` are fine)
    literal_secret = re.compile(r"aws_secret_access_key\W{1,3}[A-Za-z0-9/+]{30,}", re.IGNORECASE)
    for path in INFRA.rglob("*"):
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".md", ".py", ".dockerignore"):
            text = path.read_text()
            assert not access_key.search(text), f"{path}: looks like an AWS access key"
            assert not literal_secret.search(text), f"{path}: a secret key value"


# --- the container image --------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def test_dockerfile_has_the_required_instructions():
    instructions = dockerfile_instructions(INFRA / "docker" / "Dockerfile")
    keywords = [k for k, _ in instructions]
    assert set(keywords) <= {"ARG", "FROM", "ENV", "RUN", "COPY", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL"}
    assert keywords[0] in ("ARG", "FROM") and "FROM" in keywords
    assert all(k == "ARG" for k in keywords[: keywords.index("FROM")])
    args = {rest.split("=")[0] for k, rest in instructions if k == "ARG"}
    assert {"PREFETCH_WEIGHTS", "TORCH_INDEX_URL"} <= args
    runs = " ".join(rest for k, rest in instructions if k == "RUN")
    assert "pip install" in runs and "prefetch_weights.py $PREFETCH_WEIGHTS" in runs
    assert "splice --help" in runs, "the build should prove the CLI is installed"
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    for variable in ("HF_HOME=", "TORCH_HOME=", "NVIDIA_VISIBLE_DEVICES=", "HF_HUB_OFFLINE=", "SPLICE_OFFLINE="):
        assert variable in env
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image should not run Ray as root"
    assert not CREDENTIAL_NAME.search(" ".join(rest for k, rest in instructions if k in ("ARG", "ENV"))), (
        "no credential may be a build arg or baked into the environment"
    )


def test_dockerfile_copies_files_that_exist_and_ignores_the_local_environment():
    for keyword, rest in dockerfile_instructions(INFRA / "docker" / "Dockerfile"):
        if keyword == "COPY":
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    ignored = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


def test_prefetch_script_loads_weights_through_the_projects_loader(capsys):
    prefetch = _load_module(INFRA / "docker" / "prefetch_weights.py", "infra_prefetch_weights")
    assert prefetch.main(["random:vit_tiny_patch16_224"]) == 0
    assert "random:vit_tiny_patch16_224: random" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown weights"):
        prefetch.main(["dino_vitz99"])


def test_all_routes_use_the_same_image():
    images = {load_yaml(p)["docker"]["image"] for p in CLUSTER_CONFIGS}
    for spec in (_by_kind("RayCluster")["spec"], _by_kind("RayJob")["spec"]["rayClusterSpec"]):
        images |= {c["image"] for pod in _pod_specs(spec).values() for c in pod["containers"]}
    assert len(images) == 1, f"the routes use different images: {sorted(images)}"


def test_infra_readme_covers_every_config():
    readme = (INFRA / "README.md").read_text()
    for path in [*CLUSTER_CONFIGS, *K8S.glob("*.yaml"), INFRA / "docker" / "Dockerfile"]:
        assert str(path.relative_to(REPO)) in readme, f"infra/README.md never mentions {path.relative_to(REPO)}"
    for command in (
        "ray up",
        "ray down",
        "ray job submit",
        "--working-dir .",
        "splice status",
        "splice evaluate",
        "splice report",
        "RAY_AUTH_MODE=token",
        "kubectl delete",
    ):
        assert command in readme, f"infra/README.md does not show {command!r}"
