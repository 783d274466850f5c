"""Deployment files, checked by the tools that consume them and against the code they run.

Real tools: PyYAML parses every file; `kubernetes-validate` (its bundled Kubernetes JSON schemas,
strict: unknown fields are errors) checks every built-in kind, also as a CLI run with no network;
`jsonschema` checks the KEDA objects against the openAPIV3Schema of the CRDs in crds/ (hand-written
subsets, see their header); `kubectl kustomize` builds deploy/kubernetes; `docker-compose config`
(Debian's docker-compose) reads deploy/compose.yaml; `systemd-analyze verify` reads the units; the
`hookstream` argument parser, `Settings.from_env` and `ApiConfig.from_env` read the commands and the
settings; the API app itself answers its probe path.

Hand-written here: the cross-references (selectors, ports, probes, names of ConfigMaps, Secrets and
keys), the shutdown budgets, and the short table of KEDA trigger parameters (TRIGGER_PARAMETERS).

A test that needs a Debian tool fails when the tool is missing under CI (.ci/run installs it) and
is skipped, with the package to install, elsewhere.
"""

from __future__ import annotations

import configparser
import copy
import inspect
import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version
from rq import Queue
from starlette.testclient import TestClient

from api.app import create_app
from api.auth import ApiTokens
from api.config import ApiConfig
from api.dashboard import Dashboard
from hookstream import cli
from hookstream.embedded import free_port
from shared.errors import ConfigError
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CRDS = Path(__file__).resolve().parent / "crds"
IN_CI = bool(os.environ.get("CI"))

# The oldest Kubernetes these manifests are meant for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", latest_version())
KEDA_GROUP = "keda.sh"
# Kinds of these API groups are checked against the CRDs in crds/, not by kubernetes-validate.
CUSTOM_GROUPS = frozenset({KEDA_GROUP, "monitoring.coreos.com"})
# The image deploy/Dockerfile builds (`make image`): the manifests name it without a tag, which
# kustomization.yaml's `images:` sets to pyproject.toml's version; compose.yaml names it with that tag.
IMAGE = "hookstream"
NOT_KUBERNETES_OBJECTS = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# Margin on top of a batch's job timeout before the kubelet / Compose / systemd may SIGKILL a worker.
WORKER_STOP_MARGIN_S = 15
# Margin on top of preStop sleep + uvicorn's drain before the kubelet may SIGKILL an ingress pod.
INGRESS_STOP_MARGIN_S = 5
# PostgreSQL's default max_connections.
POSTGRES_MAX_CONNECTIONS = 100

# KEDA trigger metadata keys, hand-written from the KEDA 2.x scaler pages (redis lists and streams,
# with their Sentinel and Cluster variants, and prometheus) and checked against the scalers' source
# (pkg/scalers/redis_scaler.go, redis_streams_scaler.go, prometheus_scaler.go); a misspelt key is
# otherwise ignored by KEDA without a word. Connection parameters may also come from a
# TriggerAuthentication (AUTH_PARAMETERS) or, as <name>FromEnv, from the scale target's environment.
_REDIS_CONNECTION = {
    "address", "addressFromEnv", "addresses", "addressesFromEnv", "host", "hostFromEnv", "hosts", "hostsFromEnv",
    "port", "portFromEnv", "ports", "portsFromEnv", "username", "usernameFromEnv", "password", "passwordFromEnv",
    "databaseIndex", "enableTLS", "unsafeSsl",
}
_SENTINEL = {
    "sentinelUsername", "sentinelUsernameFromEnv", "sentinelPassword", "sentinelPasswordFromEnv",
    "sentinelMaster", "sentinelMasterFromEnv",
}
_LISTS = {"listName", "listLength", "activationListLength"}
_STREAMS = {
    "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
    "activationStreamLength",
}
TRIGGER_PARAMETERS = {
    "redis": _REDIS_CONNECTION | _LISTS,
    "redis-sentinel": _REDIS_CONNECTION | _SENTINEL | _LISTS,
    "redis-cluster": _REDIS_CONNECTION | _LISTS,
    "redis-streams": _REDIS_CONNECTION | _STREAMS,
    "redis-sentinel-streams": _REDIS_CONNECTION | _SENTINEL | _STREAMS,
    "redis-cluster-streams": _REDIS_CONNECTION | _STREAMS,
    "prometheus": {
        "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
        "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout", "authModes", "awsRegion", "identityOwner",
    },
}
AUTH_PARAMETERS = {"address", "addresses", "host", "hosts", "port", "ports", "username", "password",
                   "sentinelUsername", "sentinelPassword", "sentinelMaster", "tls", "ca", "cert", "key", "keyPassword",
                   "bearerToken", "customAuthHeader", "customAuthValue"}


# -- loading --------------------------------------------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@cache
def manifest_files() -> tuple[Path, ...]:
    return tuple(sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))


@cache
def manifests() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in manifest_files() for doc in load_yaml(path))


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def all_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            yield workload, container


def image_name(image: str) -> str:
    """`registry:5000/name:tag` → `registry:5000/name`: a tag is a colon after the last slash."""
    head, _, last = image.rpartition("/")
    return (head + "/" if head else "") + last.split(":")[0]


def image_tag(image: str) -> str | None:
    last = image.rpartition("/")[2]
    return last.split(":", 1)[1] if ":" in last else None


def runs_hookstream(container: dict[str, Any]) -> bool:
    return image_name(container["image"]) == IMAGE


def hookstream_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The containers that run a `hookstream` command; the others (PgBouncer) run an image of their own."""
    return ((workload, container) for workload, container in all_containers() if runs_hookstream(container))


@cache
def project_version() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert isinstance(version, str) and version
    return version


def by_component(component: str) -> dict[str, Any]:
    found = [w for w in workloads() if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one workload for component {component!r}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def selected_workloads(selector: dict[str, Any]) -> list[str]:
    return [w["metadata"]["name"] for w in workloads() if selects(selector, w["spec"]["template"]["metadata"]["labels"])]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    assert "data" not in secret, "the Secret template uses stringData (readable placeholders)"
    return secret.get("stringData", {})


def parse_command(argv: list[str]) -> Any:
    """The real `hookstream` parser: an unknown subcommand or option fails here as it would there."""
    assert Path(argv[0]).name == "hookstream", f"not a hookstream command: {argv}"
    try:
        return cli.parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"`{shlex.join(argv)}` is refused by hookstream's argument parser (exit {exc.code})")


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if IN_CI:
        pytest.fail(f"`{name}` is missing; .ci/run installs the Debian package {package}")
    pytest.skip(f"`{name}` is not installed here (apt-get install -y {package}); CI installs it")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


@cache
def settings_from_manifests() -> Settings:
    """The settings every pod gets: the ConfigMap, plus the Secret template's placeholders."""
    env: dict[str, str] = dict(one("ConfigMap", "hookstream-config")["data"])
    env.update(secret_data(one("Secret", "hookstream-providers")))
    env["HOOKSTREAM_REDIS_URL"] = secret_data(one("Secret", "hookstream-redis"))["url"]
    env["HOOKSTREAM_DATABASE_URL"] = secret_data(one("Secret", "hookstream-postgres"))["url"]
    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        pytest.fail(f"the ConfigMap and Secret template do not parse as hookstream settings: {exc}")


class _RecordingEnv(dict):  # type: ignore[type-arg]
    """An empty environment that records every name asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.names.add(key)
        return default

    def __getitem__(self, key: Any) -> Any:
        self.names.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self.names.add(str(key))
        return False


@cache
def variables_the_code_reads() -> frozenset[str]:
    """HOOKSTREAM_* names read by Settings.from_env and ApiConfig.from_env (asked, not grepped:
    Settings builds some names from the provider list) and the ones spelt out in the modules that
    read the environment: the settings, the commands, the API's and the dashboard's."""
    recorder = _RecordingEnv()
    Settings.from_env(recorder)
    ApiConfig.from_env(recorder)
    names = {name for name in recorder.names if name.startswith("HOOKSTREAM_")}
    for source in (ROOT / "shared" / "settings.py", ROOT / "hookstream" / "cli.py", ROOT / "hookstream" / "api.py",
                   ROOT / "api" / "config.py", ROOT / "api" / "auth.py", ROOT / "api" / "dashboard" / "app.py",
                   ROOT / "api" / "dashboard" / "session.py"):
        names |= set(re.findall(r"[\"'](HOOKSTREAM_[A-Z0-9_]+)[\"']", source.read_text(encoding="utf-8")))
    return frozenset(names)


# -- (a) everything parses ------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *CRDS.glob("*.yaml")])
    assert {DEPLOY / "compose.yaml", K8S / "kustomization.yaml"} <= set(files)
    for path in files:
        docs = load_yaml(path)
        assert docs, f"{path.relative_to(ROOT)} holds no document"
        # A JSON patch (RFC 6902) of a kustomization is a list of operations; anything else a mapping.
        json_patch = [doc for doc in docs if isinstance(doc, list)
                      and all(isinstance(op, dict) and {"op", "path"} <= set(op) for op in doc)]
        assert all(isinstance(doc, dict) for doc in docs if doc not in json_patch), \
            f"{path.relative_to(ROOT)}: a document is not a mapping"


def test_manifests_are_namespace_agnostic_and_uniquely_named() -> None:
    seen: set[tuple[str, str]] = set()
    for doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} is defined twice"
        seen.add(key)
        assert "namespace" not in doc["metadata"], f"{key}: the manifests are applied with -n <namespace>"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "hookstream", key


def test_kustomization_lists_every_manifest_file() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert sorted(listed) == sorted(p.name for p in manifest_files())


def test_kubectl_kustomize_builds_every_object() -> None:
    kubectl = need_tool("kubectl", "kubernetes-client")
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in manifests())
    images = {c["image"] for d in built if d["kind"] in WORKLOAD_KINDS for c in d["spec"]["template"]["spec"]["containers"]}
    # Every hookstream container as `make image` tags it; PgBouncer as pinned in pgbouncer.yaml.
    assert images == {f"{IMAGE}:{project_version()}", pgbouncer_container()["image"]}


# -- (c) schemas: Kubernetes built-in kinds --------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_validate_strictly_against_kubernetes_schemas(version: str) -> None:
    errors, validated = [], set()
    for doc in manifests():
        if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            validated.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError as exc:  # a kind nobody checks would slip through: refuse it
            errors.append(f"{name}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert validated >= {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "Job"}


def test_kubernetes_validate_cli_runs_offline() -> None:
    """The tool's own entry point, with no network at all where a network namespace can be made."""
    isolate: list[str] = []
    unshare = shutil.which("unshare")
    if unshare and run([unshare, "--net", "true"]).returncode == 0:
        isolate = [unshare, "--net", "--"]
    elif IN_CI:
        pytest.fail("cannot make a network namespace (unshare --net) to prove kubernetes-validate runs offline")
    files = [str(p) for p in manifest_files()]
    result = run([*isolate, sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                  "-k", KUBERNETES_VERSIONS[0], *files], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # It only warns about the kinds it has no schema for: the KEDA ones, checked below.
    for line in result.stdout.splitlines():
        assert line.startswith("WARN ") and any(f"api version {group}/" in line for group in CUSTOM_GROUPS), line


def test_kubernetes_validate_refuses_a_misspelt_field() -> None:
    """Strict mode bites: a field Kubernetes would drop (here a misspelt probe) is an error."""
    broken = copy.deepcopy(one("Deployment", "hookstream-ingress"))
    container = pod_spec(broken)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# -- (c) schemas: KEDA, against the CRDs' openAPIV3Schema ------------------------------------------


def _strict(schema: Any) -> Any:
    """Every object schema that lists properties refuses the others, as the API server's strict field
    validation refuses the fields it would prune (x-kubernetes-preserve-unknown-fields keeps them)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = load_yaml(path)
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validators[(api_version, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


def keda_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
    if validator is None:
        return [f"no CRD in {CRDS.relative_to(ROOT)} for {doc['apiVersion']} {doc['kind']}"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def test_crds_are_valid_custom_resource_definitions() -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = load_yaml(path)
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)
        # Structural schemas: properties and additionalProperties never together.
        def walk(node: Any, where: str, name: str = path.name) -> None:
            if isinstance(node, dict):
                assert not ("properties" in node and "additionalProperties" in node), f"{name}: {where}"
                assert "$ref" not in node, f"{name}: {where}: CRD schemas cannot use $ref"
                for key, value in node.items():
                    walk(value, f"{where}.{key}")
            elif isinstance(node, list):
                for index, item in enumerate(node):
                    walk(item, f"{where}[{index}]")
        walk(crd["spec"]["versions"], "versions")
    assert set(crd_validators()) >= {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
                                     ("monitoring.coreos.com/v1", "PrometheusRule")}


def test_keda_objects_validate_against_the_crd_schemas() -> None:
    keda = [doc for doc in manifests() if doc["apiVersion"].split("/")[0] == KEDA_GROUP]
    assert {doc["kind"] for doc in keda} == {"ScaledObject", "TriggerAuthentication"}
    errors = [f"{doc['kind']}/{doc['metadata']['name']}: {error}" for doc in keda for error in keda_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_prometheus_rule_validates_against_its_crd_schema() -> None:
    [rule] = [doc for doc in manifests() if doc["apiVersion"].split("/")[0] == "monitoring.coreos.com"]
    assert keda_errors(rule) == []
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["fro"] = broken["spec"]["groups"][0]["rules"][0].pop("for")
    assert "'fro' was unexpected" in "\n".join(keda_errors(broken))


def test_crd_schema_refuses_misspelt_fields_and_numeric_trigger_parameters() -> None:
    scaled = copy.deepcopy(one("ScaledObject", "hookstream-worker"))
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 10000
    errors = "\n".join(keda_errors(scaled))
    assert "'minReplicas' was unexpected" in errors
    assert "10000 is not of type 'string'" in errors


# -- (b) references ------------------------------------------------------------------------------


def test_every_workload_selector_matches_its_own_pods_and_no_other() -> None:
    for workload in workloads():
        if workload["kind"] == "Job":
            continue
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"], labels), f"{name}: selector does not match its pod labels"
        assert selected_workloads(workload["spec"]["selector"]) == [name], f"{name}: selector also matches other pods"
    components = {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads()}
    assert components == {"ingress", "dispatch", "worker", "migrate", "api", "pgbouncer"}


def _container_port(container: dict[str, Any], port: int | str) -> int:
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    pytest.fail(f"container {container['name']} declares no port {port!r}")


# Service → (the component it fronts, the port that component's command listens on).
SERVICES = {"hookstream-ingress": ("ingress", 8000), "hookstream-api": ("api", 8080)}


def test_services_select_their_pods_on_the_declared_port() -> None:
    assert {service["metadata"]["name"] for service in objects("Service")} == {*SERVICES, "hookstream-pgbouncer"}
    for name, (component, listen) in SERVICES.items():
        service = one("Service", name)
        workload = by_component(component)
        assert selected_workloads({"matchLabels": service["spec"]["selector"]}) == [workload["metadata"]["name"]]
        (container,) = pod_spec(workload)["containers"]
        args = parse_command(container["command"])
        assert args.command == component and args.host == "0.0.0.0"
        for port in service["spec"]["ports"]:
            assert _container_port(container, port["targetPort"]) == args.port == listen


def test_probes_hit_healthz_and_readyz_on_the_ingress_port() -> None:
    (container,) = pod_spec(by_component("ingress"))["containers"]
    args = parse_command(container["command"])
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and liveness["path"] == "/healthz"
    assert _container_port(container, readiness["port"]) == _container_port(container, liveness["port"]) == args.port
    # The routes exist in the app, and /readyz is the one that is address-restricted.
    app_source = (ROOT / "ingress" / "app.py").read_text(encoding="utf-8")
    assert 'Route("/healthz", healthz' in app_source
    assert 'Route("/readyz", _internal_only(readyz)' in app_source


API_LIVENESS, API_READINESS = "/healthz", "/readyz"


def test_api_probes_hit_a_route_that_needs_no_token_on_the_api_port() -> None:
    (container,) = pod_spec(by_component("api"))["containers"]
    args = parse_command(container["command"])
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (liveness["path"], readiness["path"]) == (API_LIVENESS, API_READINESS)
    assert _container_port(container, readiness["port"]) == _container_port(container, liveness["port"]) == args.port
    assert "httpHeaders" not in readiness and "httpHeaders" not in liveness, "a probe cannot hold a Secret's token"


def test_the_api_probes_answer_without_a_token() -> None:
    """The real app with Postgres unreachable: liveness answers 200 and readiness 503 to anyone,
    while a consent route refuses a request without a token. /metrics needs no token either, only an
    address in HOOKSTREAM_METRICS_ALLOWED_IPS, which the test client's is not."""
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", redis_url="redis://127.0.0.1:1/0")
    tokens = ApiTokens.parse("probe:" + "x" * 32)
    dashboard = Dashboard(settings, tokens)
    try:
        with TestClient(create_app(settings, tokens, dashboard=dashboard)) as client:
            assert client.get(API_LIVENESS).status_code == 200
            assert client.get(API_READINESS).status_code == 503
            assert client.get("/v1/consent/changes").status_code == 401
            assert client.get("/metrics").status_code == 403
    finally:
        dashboard.close()


def test_kubelet_probe_addresses_are_admitted_to_readyz() -> None:
    """/readyz answers only HOOKSTREAM_METRICS_ALLOWED_IPS: the usual node and pod networks must pass."""
    allowed = settings_from_manifests().metrics_allowed_ips
    for address in ("127.0.0.1", "10.1.2.3", "172.16.5.6", "192.168.1.10", "fd00::1"):
        assert allowed.admits(ipaddress.ip_address(address)), address
    assert not allowed.admits(ipaddress.ip_address("203.0.113.7"))


def test_pod_disruption_budgets_select_existing_pods() -> None:
    covered = set()
    for pdb in objects("PodDisruptionBudget"):
        matched = selected_workloads(pdb["spec"]["selector"])
        assert len(matched) == 1, f"PodDisruptionBudget {pdb['metadata']['name']} selects the pods of {matched}"
        (selected,) = matched
        covered.add(one("Deployment", selected)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    assert covered == {"ingress", "worker", "api", "pgbouncer"}
    # minAvailable 1 leaves room to drain only with more than one replica.
    for component in ("ingress", "api", "pgbouncer"):
        assert by_component(component)["spec"]["replicas"] >= 2, component


def test_config_and_secret_references_name_defined_objects_and_keys() -> None:
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in objects("ConfigMap")}
    secrets = {s["metadata"]["name"]: secret_data(s) for s in objects("Secret")}
    used = set()
    for workload, container in all_containers():
        where = f"{workload['metadata']['name']}/{container['name']}"
        for source in container.get("envFrom", []):
            ref, pool = (source["configMapRef"], config_maps) if "configMapRef" in source else (source["secretRef"], secrets)
            assert ref["name"] in pool, f"{where}: envFrom names undefined {ref['name']!r}"
            assert not ref.get("optional"), f"{where}: an optional reference hides a missing object"
            used.add(ref["name"])
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            for kind, pool in (("configMapKeyRef", config_maps), ("secretKeyRef", secrets)):
                if kind in value_from:
                    ref = value_from[kind]
                    assert ref["name"] in pool, f"{where}: {var['name']} names undefined {ref['name']!r}"
                    assert ref["key"] in pool[ref["name"]], f"{where}: {ref['name']} has no key {ref['key']!r}"
                    used.add(ref["name"])
        for volume in pod_spec(workload).get("volumes", []):
            for kind, field, pool in (("configMap", "name", config_maps), ("secret", "secretName", secrets)):
                if kind in volume:
                    assert volume[kind][field] in pool, f"{where}: volume names undefined {volume[kind][field]!r}"
                    used.add(volume[kind][field])
    for auth in objects("TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["key"] in secrets.get(ref["name"], {}), f"TriggerAuthentication: no secret key {ref['name']}/{ref['key']}"
            assert ref["parameter"] in AUTH_PARAMETERS, f"TriggerAuthentication: unknown parameter {ref['parameter']!r}"
            used.add(ref["name"])
    assert used == set(config_maps) | set(secrets), "a ConfigMap or Secret is defined but used by nothing"


def _env_names(container: dict[str, Any]) -> set[str]:
    names = {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(one("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            names |= set(secret_data(one("Secret", source["secretRef"]["name"])))
    return names


def test_every_environment_variable_is_one_the_code_reads() -> None:
    known = variables_the_code_reads()
    assert {"HOOKSTREAM_REDIS_URL", "HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_CM_TOKEN", "HOOKSTREAM_LOG_LEVEL"} <= known
    for workload, container in all_containers():
        unknown = _env_names(container) - known
        assert not unknown, f"{workload['metadata']['name']}: hookstream reads no {sorted(unknown)}"
    for service in load_yaml(DEPLOY / "compose.yaml")[0]["services"].values():
        unknown = {name for name in service.get("environment", {}) if name.startswith("HOOKSTREAM_")} - known
        assert not unknown, f"compose.yaml: hookstream reads no {sorted(unknown)}"


def test_each_workload_gets_only_the_secrets_it_needs() -> None:
    def env(component: str) -> set[str]:
        return set().union(*(_env_names(c) for c in containers(by_component(component))))

    api_secrets = set(secret_data(one("Secret", "hookstream-api")))
    provider_secrets = set(secret_data(one("Secret", "hookstream-providers")))
    assert "HOOKSTREAM_DATABASE_URL" not in env("ingress"), "the ingress never connects to Postgres"
    assert "HOOKSTREAM_REDIS_URL" in env("ingress")
    assert not api_secrets & env("ingress"), "the ingress never sees the API's tokens"
    for component in ("dispatch", "worker"):
        assert {"HOOKSTREAM_REDIS_URL", "HOOKSTREAM_DATABASE_URL"} <= env(component)
        assert not any(name.endswith(("_TOKEN", "_TOKENS", "_SECRET")) for name in env(component)), component
    assert "HOOKSTREAM_DATABASE_URL" in env("migrate")
    # The API: Postgres, Redis for the dashboard's flow numbers, its own tokens, no provider secret.
    assert {"HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_REDIS_URL", "HOOKSTREAM_API_TOKENS"} <= env("api")
    assert not provider_secrets & env("api"), "the API never takes webhooks"


def test_api_tokens_come_from_the_api_secret_with_no_usable_placeholder() -> None:
    (container,) = pod_spec(by_component("api"))["containers"]
    assert {"secretRef": {"name": "hookstream-api"}} in container["envFrom"]
    secret = secret_data(one("Secret", "hookstream-api"))
    assert set(secret) == {"HOOKSTREAM_API_TOKENS", "HOOKSTREAM_DASHBOARD_SECRET"}
    # No token anyone could guess ships in the template: as it stands, the API refuses to start.
    env = {**one("ConfigMap", "hookstream-config")["data"], **secret}
    assert not ApiConfig.from_env(env).tokens
    # What an operator writes there parses: labelled tokens, two of them during a rotation.
    assert ApiTokens.parse("crm:" + "a" * 48 + ",crm-next:" + "b" * 48).labels == ("crm", "crm-next")


def test_the_api_refuses_to_start_without_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """What Compose (empty HOOKSTREAM_API_TOKENS), the Secret template and a systemd unit without
    api.env lead to: a clear message and status 2 (hookstream-api.service does not retry on 2)."""
    args = parse_command(["hookstream", "api"])
    settings = Settings.from_env({})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HOOKSTREAM_API_TOKENS", raising=False)
        assert args.handler(settings, args) == 2
    assert "HOOKSTREAM_API_TOKENS is not set" in capsys.readouterr().err


def test_configmap_and_secret_template_are_valid_settings() -> None:
    settings = settings_from_manifests()
    assert settings.redis_url and settings.database_url
    # Empty provider values in the template mean "not set", not "an empty secret".
    assert all(token is None for token in settings.tokens.values())


# -- commands -----------------------------------------------------------------------------------


def test_kubernetes_commands_are_real_hookstream_subcommands() -> None:
    commands = {}
    for _workload, container in hookstream_containers():
        assert container["image"] == IMAGE, "the tag comes from kustomization.yaml's images: (the version)"
        args = parse_command(container["command"])
        commands[args.command] = args
    assert set(commands) == {"ingress", "dispatch", "worker", "migrate", "api"}
    assert commands["worker"].processes == 2 and not commands["worker"].burst
    assert commands["api"].host == "0.0.0.0" and commands["api"].port == 8080
    assert by_component("dispatch")["spec"]["replicas"] == 2


def _compose() -> dict[str, Any]:
    (compose,) = load_yaml(DEPLOY / "compose.yaml")
    return compose


def test_compose_services_run_real_hookstream_subcommands() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "postgres", "pgbouncer", "migrate", "ingress", "dispatch", "worker", "api",
                             "prometheus", "grafana"}  # the last two: tests/deploy/test_grafana.py
    subcommands = {}
    for name, service in services.items():
        if image_name(service["image"]) == IMAGE:
            assert service["image"] == f"{IMAGE}:{project_version()}", name
            subcommands[name] = parse_command(service["command"])
    assert {name: args.command for name, args in subcommands.items()} == {
        "migrate": "migrate", "ingress": "ingress", "dispatch": "dispatch", "worker": "worker", "api": "api"}
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "HOOKSTREAM_DATABASE_URL" not in services["ingress"]["environment"]
    redis = services["redis"]
    assert redis["command"] == ["redis-server", "/etc/redis/redis.conf"]
    assert "./redis.conf:/etc/redis/redis.conf:ro" in redis["volumes"]
    conf = (DEPLOY / "redis.conf").read_text(encoding="utf-8")
    assert re.search(r"^appendonly yes$", conf, re.M) and re.search(r"^maxmemory-policy noeviction$", conf, re.M)


def test_compose_puts_pgbouncer_in_transaction_mode_before_postgres_but_not_before_migrate() -> None:
    services = _compose()["services"]
    ini = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    ini.read(DEPLOY / "pgbouncer.ini", encoding="utf-8")
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    mounts = {volume.split(":")[1]: DEPLOY / volume.split(":")[0] for volume in services["pgbouncer"]["volumes"]}
    assert mounts[bouncer["auth_file"]].is_file() and mounts["/etc/pgbouncer/pgbouncer.ini"].is_file()
    [(database, target)] = ini["databases"].items()
    assert dict(item.split("=") for item in target.split()) == {"host": "postgres", "port": "5432",
                                                                 "dbname": database}
    through = f"@pgbouncer:{bouncer['listen_port']}/{database}"
    for name in ("dispatch", "worker", "api"):
        assert services[name]["environment"]["HOOKSTREAM_DATABASE_URL"].endswith(through), name
    assert services["migrate"]["environment"]["HOOKSTREAM_DATABASE_URL"].endswith(f"@postgres:5432/{database}")


def pgbouncer_container() -> dict[str, Any]:
    (container,) = pod_spec(by_component("pgbouncer"))["containers"]
    return container


def pgbouncer_ini() -> configparser.ConfigParser:
    """pgbouncer.ini as the ConfigMap mounts it for the PgBouncer pods."""
    ini = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    ini.read_string(one("ConfigMap", "hookstream-pgbouncer")["data"]["pgbouncer.ini"])
    return ini


def _mounted_file(workload: dict[str, Any], path: str) -> tuple[str, str, str]:
    """(kind, object name, key) of the ConfigMap or Secret key a container sees at `path`."""
    (container,) = pod_spec(workload)["containers"]
    volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
    for mount in container["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder) and "subPath" not in mount:
            volume = volumes[mount["name"]]
            key = path[len(folder):]
            if "configMap" in volume:
                return "ConfigMap", volume["configMap"]["name"], key
            return "Secret", volume["secret"]["secretName"], key
    pytest.fail(f"nothing is mounted at {path}")


def test_kubernetes_runs_pgbouncer_in_transaction_mode_before_postgres_but_not_before_migrate() -> None:
    """The workers, the dispatchers and the API's primary pool go through PgBouncer; migrate (the
    advisory lock, DDL) and the API's read-only paths (per-session settings) reach Postgres directly."""
    workload = by_component("pgbouncer")
    container = pgbouncer_container()
    ini = pgbouncer_ini()
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    # The command runs pgbouncer on the mounted ini (the image's entrypoint would write its own).
    assert container["command"][0].endswith("/pgbouncer") and len(container["command"]) == 2
    assert _mounted_file(workload, container["command"][1]) == ("ConfigMap", "hookstream-pgbouncer", "pgbouncer.ini")
    kind, name, key = _mounted_file(workload, bouncer["auth_file"])
    assert kind == "Secret" and key in secret_data(one(kind, name))
    # The same PgBouncer as Compose's, pinned.
    compose_image = _compose()["services"]["pgbouncer"]["image"]
    assert container["image"] == compose_image and image_tag(compose_image) not in (None, "latest")
    # Service → pod port → the ini's listen_port → the URL the hookstream pods are given.
    service = one("Service", "hookstream-pgbouncer")
    assert selected_workloads({"matchLabels": service["spec"]["selector"]}) == [workload["metadata"]["name"]]
    (port,) = service["spec"]["ports"]
    assert _container_port(container, port["targetPort"]) == int(bouncer["listen_port"])
    [(database, target)] = ini["databases"].items()
    urls = secret_data(one("Secret", "hookstream-postgres"))
    through, direct = urlsplit(urls["url"]), urlsplit(urls["direct-url"])
    assert (through.hostname, through.port, through.path) == (service["metadata"]["name"], port["port"], f"/{database}")
    server = dict(item.split("=") for item in target.split())
    assert (direct.hostname, direct.port, direct.path) == (server["host"], int(server["port"]), f"/{server['dbname']}")
    assert through.username == direct.username, "PgBouncer logs in to Postgres as the client's user"
    userlist = secret_data(one(kind, name))[key]
    assert re.search(rf'^"{re.escape(str(through.username))}" "', userlist, re.M), "the user is not in the password file"

    def key_of(component: str, variable: str) -> str | None:
        for _, found in [(w, c) for w, c in hookstream_containers()
                         if w is by_component(component)]:
            for var in found.get("env", []):
                if var["name"] == variable:
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "hookstream-postgres"
                    return str(ref["key"])
        return None

    for component in ("dispatch", "worker", "api"):
        assert key_of(component, "HOOKSTREAM_DATABASE_URL") == "url", component
    assert key_of("migrate", "HOOKSTREAM_DATABASE_URL") == "direct-url"
    assert key_of("api", "HOOKSTREAM_DATABASE_READ_URL") == "direct-url"
    assert key_of("ingress", "HOOKSTREAM_DATABASE_URL") is None
    # What Compose's PgBouncer does, this one does too (the listen address and files aside).
    compose_ini = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    compose_ini.read(DEPLOY / "pgbouncer.ini", encoding="utf-8")
    for option in ("pool_mode", "auth_type", "listen_port", "ignore_startup_parameters"):
        assert bouncer[option] == compose_ini["pgbouncer"][option], option


def test_pgbouncer_pods_stop_after_the_transactions_in_flight() -> None:
    """preStop: out of the Service, then SIGINT to PgBouncer (PID 1: the command bypasses the image's
    entrypoint), then a wait no shorter than a batch's transaction; all inside the grace period."""
    spec = pod_spec(by_component("pgbouncer"))
    container = pgbouncer_container()
    assert Path(container["command"][0]).name == "pgbouncer"
    shell, flag, script = container["lifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag) == ("sh", "-c")
    steps = [step.strip() for step in script.split(";")]
    assert "kill -INT 1" in steps, script
    sleeps = [int(step.split()[1]) for step in steps if step.startswith("sleep ")]
    assert sleeps[-1] >= settings_from_manifests().job_timeout_s, "preStop returns before a batch's transaction ended"
    assert spec["terminationGracePeriodSeconds"] >= sum(sleeps) + INGRESS_STOP_MARGIN_S


def test_kubernetes_pgbouncer_ini_starts_a_real_pgbouncer() -> None:
    """The ConfigMap's ini, as Debian's pgbouncer reads it: it starts and listens, with no warning."""
    debian = Path("/usr/sbin/pgbouncer")  # not on a user's PATH
    binary = str(debian) if debian.exists() else need_tool("pgbouncer", "pgbouncer")
    ini = pgbouncer_ini()
    kind, name, key = _mounted_file(by_component("pgbouncer"), ini["pgbouncer"]["auth_file"])
    # A folder of its own: as root, PgBouncer runs as postgres, which cannot enter pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="hookstream-deploy-pgbouncer-"))
    (folder / "userlist.txt").write_text(secret_data(one(kind, name))[key], encoding="utf-8")
    port = free_port()
    ini["pgbouncer"].update(listen_addr="127.0.0.1", listen_port=str(port), auth_file=str(folder / "userlist.txt"))
    with (folder / "pgbouncer.ini").open("w", encoding="utf-8") as handle:
        ini.write(handle)
    prefix: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    log = folder / "pgbouncer.log"
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen([*prefix, binary, str(folder / "pgbouncer.ini")], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, log.read_text(encoding="utf-8")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
                    time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        complaints = [line for line in log.read_text(encoding="utf-8").splitlines()
                      if re.search(r"WARNING|ERROR|FATAL", line)]
        assert not complaints, "\n".join(complaints)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_compose_api_service_is_reachable_on_loopback_and_checked_on_the_probe_path() -> None:
    api = _compose()["services"]["api"]
    args = parse_command(api["command"])
    assert api["ports"] == [f"127.0.0.1:{args.port}:{args.port}"], "the API and its dashboard stay on loopback"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert f"http://127.0.0.1:{args.port}{API_LIVENESS}" in api["healthcheck"]["test"][-1]
    # From the environment, with no default: unset, the API refuses to start (see above).
    assert api["environment"]["HOOKSTREAM_API_TOKENS"] == "${HOOKSTREAM_API_TOKENS:-}"
    for name, service in _compose()["services"].items():
        if name != "api":
            assert "HOOKSTREAM_API_TOKENS" not in (service.get("environment") or {}), name


def _systemd_units() -> dict[str, configparser.ConfigParser]:
    units = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(path, encoding="utf-8")
        units[path.name] = parser
    return units


def _exec_argv(exec_start: str, instance: str) -> list[str]:
    """ExecStart= as systemd runs it: the instance specifier %i (and %%) replaced, split with quotes,
    `$$` made `$`. The units use no other specifier and no environment variable of systemd's."""
    assert not re.search(r"%[^i%]", exec_start), f"a specifier this test does not expand: {exec_start}"
    text = re.sub(r"%[i%]", lambda match: instance if match.group() == "%i" else "%", exec_start)
    assert not re.search(r"\$(?!\$)", text.replace("$$", "")), f"systemd would expand a variable: {exec_start}"
    return [arg.replace("$$", "$") for arg in shlex.split(text)]


def _as_started(exec_start: str, instance: str = "1") -> tuple[dict[str, str], list[str]]:
    """(the HOOKSTREAM_* variables the command line sets, the hookstream argv) of a unit's ExecStart.
    A `/bin/sh -c` line is run by the real shell, with a stub in place of the hookstream binary that
    prints what it was given."""
    argv = _exec_argv(exec_start, instance)
    assert argv[0].startswith("/"), f"ExecStart needs an absolute path: {exec_start}"
    if argv[:2] != ["/bin/sh", "-c"]:
        return {}, argv
    (binary,) = set(re.findall(r"/\S+/hookstream\b", argv[2]))
    with tempfile.TemporaryDirectory() as folder:
        stub = Path(folder) / "hookstream"
        stub.write_text('#!/bin/sh\nenv | grep "^HOOKSTREAM_"\necho --\nprintf "%s\\n" "$0" "$@"\n', encoding="utf-8")
        stub.chmod(0o755)
        shell = run(["/bin/sh", "-c", argv[2].replace(binary, str(stub))], env={"PATH": os.defpath})
    assert shell.returncode == 0, shell.stderr
    variables, _, started = shell.stdout.partition("--\n")
    env = dict(line.split("=", 1) for line in variables.splitlines())
    return env, [binary, *started.splitlines()[1:]]


def test_systemd_units_start_real_hookstream_subcommands() -> None:
    started = {}
    for name, unit in _systemd_units().items():
        env, argv = _as_started(unit["Service"]["ExecStart"])
        started[name] = parse_command(argv).command
        assert set(env) <= variables_the_code_reads(), name
    assert started == {"hookstream-dispatch.service": "dispatch", "hookstream-ingress.service": "ingress",
                       "hookstream-worker@.service": "worker", "hookstream-api.service": "api",
                       "hookstream-migrate.service": "migrate"}
    # migrate runs once, by hand or before an upgrade, not as a service that restarts.
    migrate = _systemd_units()["hookstream-migrate.service"]
    assert migrate["Service"]["Type"] == "oneshot" and "Install" not in migrate
    # The API's tokens live in a file of its own, which no other unit reads (read as text: the
    # parser above keeps only the last of repeated keys).
    for path in sorted(SYSTEMD.glob("*.service")):
        files = re.findall(r"^EnvironmentFile=-?(\S+)$", path.read_text(encoding="utf-8"), re.M)
        assert "/etc/hookstream/env" in files, path.name
        assert ("/etc/hookstream/api.env" in files) == (path.name == "hookstream-api.service"), path.name
    api = _systemd_units()["hookstream-api.service"]["Service"]
    assert parse_command(shlex.split(api["ExecStart"])).host == "127.0.0.1"
    assert api["RestartPreventExitStatus"] == "2", "a configuration error (exit 2) must not be retried forever"


# -- shutdown, sizing, hardening -----------------------------------------------------------------


def _seconds(value: str | int) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", str(value).strip())
    assert match, f"cannot read {value!r} as seconds"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _uvicorn_drain_s(source: str = "hookstream/cli.py") -> int:
    match = re.search(r"timeout_graceful_shutdown=(\d+)", (ROOT / source).read_text(encoding="utf-8"))
    assert match, f"{source} no longer sets uvicorn's timeout_graceful_shutdown: review the shutdown budgets"
    return int(match.group(1))


def test_shutdown_budgets_let_work_in_flight_finish() -> None:
    job_timeout = settings_from_manifests().job_timeout_s
    worker_budget = job_timeout + WORKER_STOP_MARGIN_S
    # The HTTP servers (uvicorn) drain for as long as the command that starts them says.
    servers = {"ingress": ("hookstream-ingress.service", _uvicorn_drain_s() + INGRESS_STOP_MARGIN_S),
               "api": ("hookstream-api.service", _uvicorn_drain_s("hookstream/api.py") + INGRESS_STOP_MARGIN_S)}
    # Kubernetes: the worker finishes its batch; the servers leave their Service, then drain.
    assert pod_spec(by_component("worker"))["terminationGracePeriodSeconds"] >= worker_budget
    for component, (_, budget) in servers.items():
        spec = pod_spec(by_component(component))
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", component
        assert spec["terminationGracePeriodSeconds"] >= _seconds(pre_stop[1]) + budget, component
    # Compose: its default of 10 s would SIGKILL a worker in the middle of a batch.
    services = _compose()["services"]
    assert _seconds(services["worker"]["stop_grace_period"]) >= worker_budget
    # systemd.
    units = _systemd_units()
    assert _seconds(units["hookstream-worker@.service"]["Service"]["TimeoutStopSec"]) >= worker_budget
    for component, (unit, budget) in servers.items():
        assert _seconds(services[component]["stop_grace_period"]) >= budget, component
        assert _seconds(units[unit]["Service"]["TimeoutStopSec"]) >= budget, unit


def test_the_image_holds_every_package_hookstream_installs() -> None:
    """`pip install .` in the Dockerfile installs what was copied: a package left out (hookstream/cli.py
    imports the api command) breaks every command in the image."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.M))
    assert packages <= copied, f"the Dockerfile copies no {sorted(packages - copied)}"
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for port in line.split()}
    assert exposed >= {port for _, port in SERVICES.values()}


def test_compose_kustomize_and_make_image_name_the_version_of_pyproject() -> None:
    """One version, pyproject.toml's: `make image` tags the build with it, compose.yaml runs that tag,
    and kustomization.yaml sets it on every hookstream container (test_kubectl_kustomize_builds_...)."""
    version = project_version()
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["images"] == [{"name": IMAGE, "newTag": version}]
    services = _compose()["services"]
    built = [name for name, service in services.items() if "build" in service]
    assert built and all(services[name]["image"] == f"{IMAGE}:{version}" for name in built)
    make = need_tool("make", "make")
    dry = run([make, "-s", "-n", "image"], cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    (command,) = [shlex.split(line) for line in dry.stdout.splitlines() if line.strip()]
    assert command[:2] == ["docker", "build"] and command[-1] == "."
    assert command[command.index("-t") + 1] == f"{IMAGE}:{version}"
    assert (ROOT / command[command.index("-f") + 1]).resolve() == DEPLOY / "Dockerfile"
    assert services["ingress"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_containers_have_requests_limits_and_run_as_the_image_user() -> None:
    match = re.search(r"^USER (\d+)(?::(\d+))?$", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"), re.M)
    assert match, "the Dockerfile's USER must be numeric, for runAsNonRoot"
    uid = int(match.group(1))
    for workload, container in all_containers():
        where = f"{workload['metadata']['name']}/{container['name']}"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: resources.{bound}"
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True, where
        # hookstream runs as the Dockerfile's user; another image as the numeric user it was built
        # for (runAsNonRoot cannot check a user name), never root.
        assert security["runAsUser"] == uid if runs_hookstream(container) else security["runAsUser"] > 0, where
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where


# -- KEDA ---------------------------------------------------------------------------------------


def test_scaled_object_scales_the_worker_on_hookstreams_own_keys() -> None:
    (scaled,) = objects("ScaledObject")
    settings = settings_from_manifests()
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    worker = one("Deployment", target["name"])
    assert worker is by_component("worker")
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]

    auth_names = {auth["metadata"]["name"] for auth in objects("TriggerAuthentication")}
    redis_url = urlsplit(secret_data(one("Secret", "hookstream-redis"))["url"])
    database_index = (redis_url.path.lstrip("/") or "0")
    rq_prefix = Queue.redis_queue_namespace_prefix
    lists = set()
    for trigger in spec["triggers"]:
        metadata = trigger["metadata"]
        unknown = set(metadata) - TRIGGER_PARAMETERS[trigger["type"]]
        assert not unknown, f"{trigger['type']}: KEDA knows no {sorted(unknown)}"
        assert trigger["authenticationRef"]["name"] in auth_names
        assert metadata.get("databaseIndex", "0") == database_index, "KEDA must watch the database the URL names"
        if trigger["type"] == "redis-streams":
            assert metadata["stream"] == settings.stream
            assert metadata["consumerGroup"] == settings.group
            assert int(metadata["lagCount"]) > 0 and int(metadata["activationLagCount"]) >= 0
        else:
            assert int(metadata["listLength"]) > 0
            lists.add(metadata["listName"])
    assert {t["type"] for t in spec["triggers"]} == {"redis-streams", "redis"}
    assert lists == {rq_prefix + settings.queue, rq_prefix + settings.replay_queue}


def test_worker_fleet_fits_the_inflight_cap_and_postgres() -> None:
    """Processes past HOOKSTREAM_MAX_INFLIGHT_BATCHES never get a job; PgBouncer takes every client
    that goes through it, even all on one pod; Postgres connections stay under its default
    max_connections (deploy/README.md, "Connection sizing")."""
    settings = settings_from_manifests()
    (scaled,) = objects("ScaledObject")
    (worker,) = pod_spec(by_component("worker"))["containers"]
    processes = parse_command(worker["command"]).processes
    max_processes = scaled["spec"]["maxReplicaCount"] * processes
    assert max_processes <= settings.max_inflight_batches
    api_pods = by_component("api")["spec"]["replicas"]
    api_pool = ApiConfig.from_env({**one("ConfigMap", "hookstream-config")["data"], "HOOKSTREAM_API_TOKENS": "x"}).pool_size
    dashboard_pool = inspect.signature(Dashboard).parameters["pool_size"].default
    # Through PgBouncer: the workers' pools, one connection per dispatcher, each API pod's own pool.
    clients = max_processes * settings.pg_pool_size + by_component("dispatch")["spec"]["replicas"] + api_pods * api_pool
    bouncer = pgbouncer_ini()["pgbouncer"]
    assert clients <= int(bouncer["max_client_conn"])
    # Postgres: PgBouncer's server pools, migrate, and each API pod's read-only pools (its lookups on
    # HOOKSTREAM_DATABASE_READ_URL and the dashboard's), which connect directly.
    connections = (by_component("pgbouncer")["spec"]["replicas"] * int(bouncer["default_pool_size"])
                   + 1 + api_pods * (api_pool + dashboard_pool))
    assert connections <= POSTGRES_MAX_CONNECTIONS


# -- (d) docker-compose, (e) systemd: the real tools ---------------------------------------------


def test_docker_compose_config_accepts_the_compose_file() -> None:
    compose = need_tool("docker-compose", "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKSTREAM_", "COMPOSE_"))}
    quiet = run([compose, "config", "-q"], cwd=DEPLOY, env=env)
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr
    resolved = run([compose, "config"], cwd=DEPLOY, env=env)
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    # As docker-compose resolved the anchors and merges, not as PyYAML did.
    assert parse_command(services["worker"]["command"]).command == "worker"
    assert set(services["ingress"]["environment"]) >= {"HOOKSTREAM_REDIS_URL"}
    assert "HOOKSTREAM_DATABASE_URL" not in services["ingress"]["environment"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Unset in the environment, the API gets no token at all (and refuses to start), never a default.
    assert services["api"]["environment"]["HOOKSTREAM_API_TOKENS"] in ("", None)
    assert {"HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_REDIS_URL"} <= set(services["api"]["environment"])


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "systemd")
    system_units = Path("/usr/lib/systemd/system")
    assert system_units.is_dir(), "systemd's own units are missing"
    # A root holding systemd's units, the hookstream units and the ExecStart binary (a stub), so that
    # verify checks the units as they would be installed, without touching this machine.
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    names = []
    for name, unit in _systemd_units().items():
        shutil.copy(SYSTEMD / name, unit_dir / name)
        for program in {_exec_argv(unit["Service"]["ExecStart"], "1")[0], _as_started(unit["Service"]["ExecStart"])[1][0]}:
            binary = tmp_path / program.lstrip("/")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\n")
            binary.chmod(0o755)
        names.append(name.replace("@.", "@1."))
    result = run([analyze, "verify", f"--root={tmp_path}", "--man=no", *names], cwd=unit_dir)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr + result.stdout


WORKER_UNIT = "hookstream-worker@.service"


def test_each_worker_instance_serves_metrics_on_a_port_of_its_own() -> None:
    """hookstream-worker@N: 9110+N, whatever N, and never a port another hookstream process takes
    (a plain worker's 9101, the dispatcher's 9102, the ingress' and the API's)."""
    units = _systemd_units()
    defaults = Settings.from_env({})
    taken = {defaults.worker_metrics_port, defaults.dispatch_metrics_port}
    for name in ("hookstream-ingress.service", "hookstream-api.service"):
        taken.add(parse_command(_as_started(units[name]["Service"]["ExecStart"])[1]).port)
    ports = {}
    for instance in (1, 2, 3, 9, 10, 11, 99, 100, 889):
        env, argv = _as_started(units[WORKER_UNIT]["Service"]["ExecStart"], str(instance))
        args = parse_command(argv)
        assert args.command == "worker" and args.metrics_port is None, "the port comes from the environment"
        ports[instance] = Settings.from_env(env).worker_metrics_port
        assert ports[instance] == 9110 + instance, (instance, env)
    assert len(set(ports.values())) == len(ports) and not set(ports.values()) & taken
    assert max(ports.values()) < 10_000


def test_systemd_prometheus_config_scrapes_every_process_of_the_units() -> None:
    promtool = need_tool("promtool", "prometheus")
    path = SYSTEMD / "prometheus.yml"
    checked = run([promtool, "check", "config", str(path)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (config,) = load_yaml(path)
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]}
    units = _systemd_units()
    ingress = parse_command(_as_started(units["hookstream-ingress.service"]["Service"]["ExecStart"])[1])
    assert jobs["hookstream-ingress"] == [f"{ingress.host}:{ingress.port}"]
    assert jobs["hookstream-dispatch"] == [f"127.0.0.1:{Settings.from_env({}).dispatch_metrics_port}"]
    api = parse_command(_as_started(units["hookstream-api.service"]["Service"]["ExecStart"])[1])
    assert jobs["hookstream-api"] == [f"{api.host}:{api.port}"]
    # The instances the worker unit's header enables: systemctl enable --now hookstream-worker@{1..4}
    first, last = map(int, re.search(r"hookstream-worker@\{(\d+)\.\.(\d+)\}", (SYSTEMD / WORKER_UNIT).read_text(
        encoding="utf-8")).groups())  # type: ignore[union-attr]
    expected = []
    for instance in range(first, last + 1):
        env, _ = _as_started(units[WORKER_UNIT]["Service"]["ExecStart"], str(instance))
        expected.append(f"127.0.0.1:{Settings.from_env(env).worker_metrics_port}")
    assert jobs["hookstream-worker"] == expected
