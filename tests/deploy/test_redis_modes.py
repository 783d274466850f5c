"""Redis Sentinel and Redis Cluster deployments, checked by the tools that consume them.

- Compose: `docker-compose config` reads compose.yaml with each override (compose.sentinel.yaml,
  compose.cluster.yaml); every hookstream service's environment parses as hookstream settings and
  names the servers the override starts; real `redis-server` processes run the overrides' Redis
  commands and configuration: the Sentinels find the primary and its replicas and agree on a quorum,
  and the one-shot cluster-create command makes six nodes a cluster of three primaries, once.
- Kubernetes: `kubectl kustomize` builds each overlay of deploy/kubernetes-overlays; the result
  validates strictly against the Kubernetes schemas and the KEDA CRD subsets; the settings every
  hookstream container gets parse; KEDA's triggers name what hookstream uses (streams, groups, lists,
  the variables KEDA reads from the pods, the queue Redis), and the Prometheus query parses (promtool).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import redis
import yaml
from rq import Queue

from hookstream.embedded import free_port
from shared.errors import ConfigError
from shared.settings import Settings
from tests.deploy.test_manifests import (
    AUTH_PARAMETERS,
    CUSTOM_GROUPS,
    DEPLOY,
    KUBERNETES_VERSIONS,
    TRIGGER_PARAMETERS,
    WORKLOAD_KINDS,
    image_name,
    keda_errors,
    need_tool,
    parse_command,
    run,
    variables_the_code_reads,
)

OVERLAYS = DEPLOY / "kubernetes-overlays"
MODES = ("sentinel", "cluster")
# The switch to a Redis Cluster: the tests that need it wait until shared/settings.py reads it.
CLUSTER_SWITCH = "HOOKSTREAM_REDIS_CLUSTER"
COMMANDS_USING_REDIS = {"ingress", "dispatch", "worker", "api"}


def settings_of(env: dict[str, str], where: str) -> Settings:
    unknown = {name for name in env if name.startswith("HOOKSTREAM_")} - variables_the_code_reads()
    if CLUSTER_SWITCH in unknown:
        pytest.skip(f"shared/settings.py does not read {CLUSTER_SWITCH} yet")
    assert not unknown, f"{where}: hookstream reads no {sorted(unknown)}"
    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        pytest.fail(f"{where}: not valid hookstream settings: {exc}")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host, int(port)


# -- Kubernetes overlays ---------------------------------------------------------------------------


@cache
def built(mode: str) -> tuple[dict[str, Any], ...]:
    kubectl = need_tool("kubectl", "kubernetes-client")
    result = run([kubectl, "kustomize", str(OVERLAYS / mode)])
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def the(mode: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in built(mode) if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def component(mode: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in built(mode) if doc["kind"] in WORKLOAD_KINDS
                and doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name]
    return found


def container_env(mode: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets, with its ConfigMaps' and Secrets' values filled in."""
    def data(kind: str, name: str) -> dict[str, str]:
        doc = the(mode, kind, name)
        return dict(doc.get("data" if kind == "ConfigMap" else "stringData", {}))

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        env.update(data(kind, ref["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ((ref_kind, ref),) = var["valueFrom"].items()
            env[var["name"]] = data("ConfigMap" if ref_kind == "configMapKeyRef" else "Secret", ref["name"])[ref["key"]]
    return env


def hookstream_pods(mode: str) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(the hookstream command, the container, its environment) of every hookstream container."""
    for doc in built(mode):
        if doc["kind"] in WORKLOAD_KINDS:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if image_name(container["image"]) == "hookstream":
                    yield parse_command(container["command"]).command, container, container_env(mode, container)


def triggers(mode: str) -> list[dict[str, Any]]:
    return list(the(mode, "ScaledObject", "hookstream-worker")["spec"]["triggers"])


def auth_parameters(mode: str, name: str) -> dict[str, str]:
    """The parameters a TriggerAuthentication gives KEDA, with the Secret values they stand for."""
    auth = the(mode, "TriggerAuthentication", name)
    return {ref["parameter"]: the(mode, "Secret", ref["name"])["stringData"][ref["key"]]
            for ref in auth["spec"]["secretTargetRef"]}


@pytest.mark.parametrize("mode", MODES)
def test_overlay_builds_the_base_objects_and_they_validate(mode: str) -> None:
    base = run([need_tool("kubectl", "kubernetes-client"), "kustomize", str(DEPLOY / "kubernetes")])
    assert base.returncode == 0, base.stderr
    names = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(base.stdout) if d)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built(mode)) == names, "an overlay changes, never adds"
    errors = []
    for doc in built(mode):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            errors += [f"{where}: {error}" for error in keda_errors(doc)]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where} ({version}): {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("mode", MODES)
def test_overlay_gives_every_hookstream_container_valid_settings(mode: str) -> None:
    commands = {}
    for command, container, env in hookstream_pods(mode):
        commands[command] = settings_of(env, f"{mode}: {container['name']}")
    assert set(commands) == COMMANDS_USING_REDIS | {"migrate"}
    if mode == "sentinel":
        for command in COMMANDS_USING_REDIS:
            assert commands[command].redis_sentinels, command
    else:
        for command in COMMANDS_USING_REDIS:
            assert commands[command].redis_cluster and commands[command].queue_redis_url, command
        assert len({commands[command].stream_shards for command in COMMANDS_USING_REDIS}) == 1, \
            "every process must count the same shards"
        # migrate connects to Postgres only: the cluster's settings (which need a queue Redis) stay away.
        assert not commands["migrate"].redis_cluster
    # Acknowledged = on two machines, which the replicas of either mode make possible.
    assert commands["ingress"].append_replicas == 1


def test_sentinel_overlay_scales_on_the_lag_and_queues_through_the_sentinels() -> None:
    (worker,) = [env for command, _, env in hookstream_pods("sentinel") if command == "worker"]
    settings = settings_of(worker, "sentinel: worker")
    auth = auth_parameters("sentinel", "hookstream-redis")
    # KEDA takes a connection parameter from the trigger, then the TriggerAuthentication, then the
    # pod's environment: an address in the TriggerAuthentication would hide the Sentinels.
    assert not {"address", "addresses", "host", "hosts", "sentinelMaster"} & set(auth), auth
    assert set(auth) <= AUTH_PARAMETERS
    rq_prefix = Queue.redis_queue_namespace_prefix
    database = urlsplit(worker["HOOKSTREAM_REDIS_URL"]).path.lstrip("/") or "0"
    lists = set()
    for trigger in triggers("sentinel"):
        metadata = trigger["metadata"]
        assert trigger["type"] in ("redis-sentinel-streams", "redis-sentinel"), trigger["type"]
        assert not set(metadata) - TRIGGER_PARAMETERS[trigger["type"]], trigger
        sentinels = [host_port(address) for address in worker[metadata["addressesFromEnv"]].split(",")]
        assert sentinels == list(settings.redis_sentinels)
        assert worker[metadata["sentinelMasterFromEnv"]] == settings.redis_sentinel_service
        assert metadata["databaseIndex"] == database
        if trigger["type"] == "redis-sentinel-streams":
            assert (metadata["stream"], metadata["consumerGroup"]) == (settings.stream, settings.group)
            assert int(metadata["lagCount"]) > 0
        else:
            lists.add(metadata["listName"])
    assert lists == {rq_prefix + settings.queue, rq_prefix + settings.replay_queue}


def test_cluster_overlay_scales_on_the_total_lag_and_the_queue_redis() -> None:
    (worker,) = [env for command, _, env in hookstream_pods("cluster") if command == "worker"]
    settings = settings_of(worker, "cluster: worker")
    assert settings.queue_redis_url is not None
    queue = urlsplit(settings.queue_redis_url)
    (lag,) = [t for t in triggers("cluster") if t["type"] == "prometheus"]
    metadata = lag["metadata"]
    assert not set(metadata) - TRIGGER_PARAMETERS["prometheus"]
    assert urlsplit(metadata["serverAddress"]).scheme in ("http", "https") and float(metadata["threshold"]) > 0
    # One number for every shard: each shard's lag once (all dispatchers report all shards), summed.
    query = re.sub(r"\s+", "", metadata["query"])
    assert query == "sum(maxby(shard)(hookstream_stream_lag))", metadata["query"]
    assert metadata["ignoreNullValues"] == "false", "a lost scrape must not read as a lag of 0"
    promtool = need_tool("promtool", "prometheus")
    with tempfile.TemporaryDirectory() as folder:
        rules = Path(folder) / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
            {"record": "hookstream:keda:stream_lag", "expr": metadata["query"]}]}]}), encoding="utf-8")
        checked = run([promtool, "check", "rules", str(rules)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The RQ lists, on the queue Redis: KEDA is given its address, password and db.
    auth = auth_parameters("cluster", "hookstream-redis")
    rq_prefix = Queue.redis_queue_namespace_prefix
    lists = set()
    for trigger in triggers("cluster"):
        if trigger["type"] == "prometheus":
            continue
        assert trigger["type"] == "redis" and not set(trigger["metadata"]) - TRIGGER_PARAMETERS["redis"]
        assert trigger["authenticationRef"]["name"] == "hookstream-redis"
        assert trigger["metadata"]["databaseIndex"] == (queue.path.lstrip("/") or "0")
        lists.add(trigger["metadata"]["listName"])
    assert host_port(auth["address"]) == (queue.hostname, queue.port or 6379)
    assert auth["password"] == (queue.password or "")
    assert lists == {rq_prefix + settings.queue, rq_prefix + settings.replay_queue}
    # Prometheus finds the dispatchers' /metrics where they serve it.
    dispatch = component("cluster", "dispatch")
    (container,) = dispatch["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    dispatch_env = container_env("cluster", container)
    assert ports["metrics"] == settings_of(dispatch_env, "cluster: dispatch").dispatch_metrics_port
    annotations = dispatch["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]


# -- Compose overrides -----------------------------------------------------------------------------


@cache
def compose_config(mode: str) -> dict[str, Any]:
    """compose.yaml with compose.<mode>.yaml, as docker-compose resolves them."""
    compose = need_tool("docker-compose", "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKSTREAM_", "COMPOSE_"))}
    files = ["-f", "compose.yaml", "-f", f"compose.{mode}.yaml"]
    quiet = run([compose, *files, "config", "-q"], cwd=DEPLOY, env=env)
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr
    resolved = run([compose, *files, "config"], cwd=DEPLOY, env=env)
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)  # type: ignore[no-any-return]


def hookstream_services(mode: str) -> dict[str, tuple[str, dict[str, str]]]:
    """service → (its hookstream command, its environment)."""
    return {name: (parse_command(service["command"]).command, service.get("environment") or {})
            for name, service in compose_config(mode)["services"].items()
            if image_name(service["image"]) == "hookstream"}


def redis_services(mode: str) -> dict[str, list[str]]:
    """service → its redis-server arguments (after the config file), for the services running redis-server."""
    found = {}
    for name, service in compose_config(mode)["services"].items():
        command = service.get("command") or []
        if command[:1] == ["redis-server"]:
            assert command[1] == "/etc/redis/redis.conf", f"{name}: every node has the stream's settings"
            assert f"{DEPLOY / 'redis.conf'}:/etc/redis/redis.conf:ro" in service["volumes"], name
            found[name] = command[2:]
    return found


def option(args: list[str], name: str) -> list[str]:
    """The values after --name in redis-server arguments (none: not given)."""
    if f"--{name}" not in args:
        return []
    index = args.index(f"--{name}")
    values = []
    for value in args[index + 1:]:
        if value.startswith("--"):
            break
        values.append(value)
    return values


@pytest.mark.parametrize("mode", MODES)
def test_compose_override_gives_every_hookstream_service_valid_settings(mode: str) -> None:
    services = hookstream_services(mode)
    assert {command for command, _ in services.values()} == COMMANDS_USING_REDIS | {"migrate"}
    for name, (command, env) in services.items():
        settings = settings_of(env, f"compose.{mode}.yaml: {name}")
        if command in COMMANDS_USING_REDIS:
            assert bool(settings.redis_sentinels) == (mode == "sentinel"), name
            if mode == "cluster":
                assert settings.redis_cluster and settings.queue_redis_url, name
    assert settings_of(services["ingress"][1], "ingress").append_replicas == 1


def sentinel_conf() -> list[list[str]]:
    return [line.split() for line in (DEPLOY / "sentinel.conf").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def sentinel_services() -> dict[str, list[str]]:
    """Sentinel service → its redis-server arguments after `--sentinel`."""
    found = {}
    for name, service in compose_config("sentinel")["services"].items():
        command = service.get("command") or []
        if command[:2] == ["sh", "-c"] and "--sentinel" in command[2]:
            argv = shlex.split(command[2])
            # cp <mounted template> <copy> && exec redis-server <copy> --sentinel …: Sentinel rewrites its file.
            assert argv[:1] == ["cp"] and argv[3:6] == ["&&", "exec", "redis-server"] and argv[6] == argv[2], argv
            assert f"{DEPLOY / 'sentinel.conf'}:{argv[1]}:ro" in service["volumes"], name
            assert argv[7] == "--sentinel", argv
            found[name] = argv[8:]
    return found


def test_compose_sentinel_topology_is_the_one_the_settings_name() -> None:
    nodes = redis_services("sentinel")
    replicas = {name: args for name, args in nodes.items() if "--replicaof" in args}
    (primary,) = set(nodes) - set(replicas)
    assert primary == "redis", "the stream's Redis of compose.yaml is the first primary"
    assert len(replicas) == 2, "a promoted replica must still have one, for HOOKSTREAM_APPEND_REPLICAS=1"
    for name, args in nodes.items():
        assert option(args, "replica-announce-ip") == [name], name
        assert int(option(args, "min-replicas-to-write")[0]) >= 1, name
        if name in replicas:
            assert option(args, "replicaof") == [primary, "6379"], name
    conf = sentinel_conf()
    (monitor,) = [line for line in conf if line[:2] == ["sentinel", "monitor"]]
    service, host, port, quorum = monitor[2], monitor[3], int(monitor[4]), int(monitor[5])
    assert (host, port) == (primary, 6379)
    (sentinel_port,) = [int(line[1]) for line in conf if line[0] == "port"]
    sentinels = sentinel_services()
    assert len(sentinels) == 3 and len(sentinels) // 2 < quorum <= len(sentinels)
    for name, args in sentinels.items():
        assert args == ["--sentinel", "announce-ip", name], name
    for name, (command, env) in hookstream_services("sentinel").items():
        if command not in COMMANDS_USING_REDIS:
            continue
        settings = settings_of(env, name)
        assert sorted(settings.redis_sentinels) == sorted((s, sentinel_port) for s in sentinels), name
        assert settings.redis_sentinel_service == service, name
        depends = compose_config("sentinel")["services"][name]["depends_on"]
        assert all(depends[s]["condition"] == "service_healthy" for s in [*sentinels, *replicas]), name
    assert settings_of(hookstream_services("sentinel")["ingress"][1], "ingress").append_replicas <= len(replicas) - 1


def cluster_create_command() -> str:
    service = compose_config("cluster")["services"]["redis-cluster-create"]
    assert service["restart"] == "no"
    assert service["command"][:2] == ["sh", "-c"]
    return str(service["command"][2])


def test_compose_cluster_topology_is_the_one_the_settings_name() -> None:
    nodes = redis_services("cluster")
    cluster = {name: args for name, args in nodes.items() if option(args, "cluster-enabled") == ["yes"]}
    assert set(nodes) - set(cluster) == {"redis"}, "compose.yaml's Redis stays, as the queue Redis"
    assert len(cluster) == 6
    for name, args in cluster.items():
        assert option(args, "cluster-announce-hostname") == [name], name
        assert option(args, "cluster-preferred-endpoint-type") == ["hostname"], name
        assert option(args, "cluster-require-full-coverage") == ["no"], name
    command = shlex.split(cluster_create_command())
    create = command[command.index("--cluster") + 1:]
    assert create[0] == "create"
    addresses = []
    for arg in create[1:]:
        if arg.startswith("--"):
            break
        addresses.append(arg)
    assert sorted(host_port(a) for a in addresses) == sorted((name, 6379) for name in cluster)
    per_primary = 1 + int(create[create.index("--cluster-replicas") + 1])
    primaries = len(cluster) // per_primary
    assert per_primary == 2 and primaries == 3
    services = compose_config("cluster")["services"]
    for name, (command_name, env) in hookstream_services("cluster").items():
        if command_name not in COMMANDS_USING_REDIS:
            continue
        settings = settings_of(env, name)
        assert settings.redis_cluster_nodes and {host for host, _ in settings.redis_cluster_nodes} <= set(cluster)
        assert settings.queue_redis_url and urlsplit(settings.queue_redis_url).hostname == "redis", name
        assert settings.stream_shards is None or settings.stream_shards >= primaries, name
        assert services[name]["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"


# -- the overrides' Redis, run for real -------------------------------------------------------------


def redis_binary() -> str:
    return need_tool("redis-server", "redis-server")


@contextmanager
def redis_processes(argvs: dict[str, list[str]], folder: Path) -> Iterator[dict[str, redis.Redis]]:
    """Start redis-server processes (name → argv), each in a folder of its own; clients when they answer."""
    procs, clients = {}, {}
    try:
        for name, argv in argvs.items():
            workdir = folder / name
            workdir.mkdir()
            with (workdir / "log").open("wb") as log:
                procs[name] = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        for name, argv in argvs.items():
            port = int(option(argv, "port")[0]) if "--port" in argv else None
            assert port, argv
            client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
            deadline = time.monotonic() + 20
            while True:
                assert procs[name].poll() is None, (folder / name / "log").read_text(encoding="utf-8")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, (folder / name / "log").read_text(encoding="utf-8")
                    time.sleep(0.05)
            clients[name] = client
        yield clients
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for client in clients.values():
            client.close()


def localize(args: list[str], ports: dict[str, int]) -> list[str]:
    """Compose's service names → 127.0.0.1, and `<service> 6379` → 127.0.0.1 and the port it got here."""
    out: list[str] = []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg not in ports:
            out.append(arg)
            continue
        out.append("127.0.0.1")
        if pending[:1] == ["6379"]:
            pending.pop(0)
            out.append(str(ports[arg]))
    return out


def cluster_port() -> int:
    """A free port that a cluster node can take: its bus listens 10,000 higher."""
    while True:
        port = free_port()
        if port <= 55535:
            return port


def until(condition: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def test_compose_sentinel_redis_and_sentinels_run_on_real_servers() -> None:
    """The override's primary, replicas and Sentinels as redis-server runs them (service names and
    ports mapped to loopback): the Sentinels find the primary, both replicas and each other."""
    binary = redis_binary()
    nodes, sentinels = redis_services("sentinel"), sentinel_services()
    ports = {name: free_port() for name in [*nodes, *sentinels]}
    folder = Path(tempfile.mkdtemp(prefix="hookstream-deploy-sentinel-"))
    try:
        # Test-only additions: this machine's ports and folders, and no 5 s wait for more replicas
        # before a full sync.
        argvs = {name: [binary, str(DEPLOY / "redis.conf"), *localize(args, ports), "--port", str(ports[name]),
                        "--dir", str(folder / name), "--maxmemory", "64mb", "--repl-diskless-sync-delay", "0"]
                 for name, args in nodes.items()}
        with redis_processes(argvs, folder) as data_nodes:
            for name in nodes.keys() - {"redis"}:
                until(lambda n=name: data_nodes[n].info("replication")["master_link_status"] == "up", f"{name} in sync")
            conf = [line for line in (DEPLOY / "sentinel.conf").read_text(encoding="utf-8").splitlines()]
            sentinel_argvs = {}
            for name, args in sentinels.items():
                (folder / f"{name}.conf").write_text("\n".join(
                    " ".join(localize(line.split(), ports)) if line.startswith("sentinel monitor") else line
                    for line in conf) + "\n", encoding="utf-8")
                sentinel_argvs[name] = [binary, str(folder / f"{name}.conf"), "--sentinel", *localize(args, ports),
                                        "--port", str(ports[name])]
            with redis_processes(sentinel_argvs, folder) as watchers:
                service = [line.split()[2] for line in conf if line.startswith("sentinel monitor")][0]
                for watcher in watchers.values():
                    until(lambda w=watcher: int(w.sentinel_master(service)["num-slaves"]) == 2, "replicas seen")
                    until(lambda w=watcher: int(w.sentinel_master(service)["num-other-sentinels"]) == 2,
                          "the other Sentinels seen")
                    assert watcher.execute_command("SENTINEL", "CKQUORUM", service).startswith("OK")
                    assert watcher.sentinel_get_master_addr_by_name(service) == ("127.0.0.1", ports["redis"])
            # min-replicas-to-write: the primary takes writes while its replicas are attached.
            data_nodes["redis"].set("probe", "1")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_compose_cluster_create_makes_one_cluster_once_from_real_servers() -> None:
    """The six nodes with the override's arguments, and its one-shot command run twice by sh: three
    primaries with a replica each, every slot covered; the second run leaves the cluster as it is."""
    binary = redis_binary()
    need_tool("redis-cli", "redis-tools")
    nodes = {name: args for name, args in redis_services("cluster").items() if name != "redis"}
    ports = {name: cluster_port() for name in nodes}
    folder = Path(tempfile.mkdtemp(prefix="hookstream-deploy-cluster-"))
    try:
        argvs = {name: [binary, str(DEPLOY / "redis.conf"), *localize(args, ports), "--port", str(ports[name]),
                        "--dir", str(folder / name), "--maxmemory", "64mb",
                        "--cluster-config-file", str(folder / name / "nodes.conf")] for name, args in nodes.items()}
        # The hostname each node announces: loopback here (Compose: its service name).
        for argv in argvs.values():
            argv[argv.index("--cluster-announce-hostname") + 1] = "localhost"
        command = cluster_create_command()
        for name, port in ports.items():
            command = command.replace(f"-h {name} ", f"-h 127.0.0.1 -p {port} ").replace(f"{name}:6379", f"127.0.0.1:{port}")
        assert not re.search(r"redis-cluster-\d", command), command
        with redis_processes(argvs, folder) as clients:
            for attempt in ("create", "again"):
                made = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120, check=False)
                assert made.returncode == 0, (attempt, made.stdout[-2000:], made.stderr[-2000:])
            first = next(iter(clients.values()))
            until(lambda: first.cluster("info")["cluster_state"] == "ok", "cluster_state:ok")

            def layout() -> tuple[set[str], list[str]]:
                members = [line.split() for line in first.execute_command("CLUSTER", "NODES").splitlines()]
                primaries = {fields[0] for fields in members if "master" in fields[2] and len(fields) > 8}
                return primaries, sorted(fields[3] for fields in members if "slave" in fields[2])

            # Node 1 learns the replicas' roles by gossip, a moment after the command returned.
            until(lambda: len(layout()[1]) == 3, "three replicas known")
            primaries, replicas_of = layout()
            assert len(primaries) == 3 and replicas_of == sorted(primaries), (primaries, replicas_of)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
