"""One typed settings object, parsed once from the environment and passed explicitly."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from shared.errors import ConfigError, ParseError
from shared.times import parse_duration

PROVIDERS = ("cm", "smsmode", "mx2", "gatewayapi")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# CM publishes these ranges for the services that send events (brief, "Whitelisting").
CM_RANGES = "31.169.56.0/21,85.119.48.0/21,188.94.184.0/22"
LOOPBACK = "127.0.0.1/32,::1/128"
PRIVATE_AND_LOOPBACK = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
GATEWAYAPI_DNS = (("ips.gatewayapi.eu", "A"), ("ips.gatewayapi.com", "AAAA"), ("ips.gatewayapi.eu", "AAAA"),
                  ("ips.gatewayapi.com", "A"))


class Secret:
    """One or more comma-separated secret values (rotation); never shown in reprs or logs."""

    __slots__ = ("_values",)

    def __init__(self, raw: str) -> None:
        self._values = tuple(v.strip() for v in raw.split(",") if v.strip())

    @property
    def values(self) -> tuple[str, ...]:
        return self._values

    def __repr__(self) -> str:
        return f"Secret(<{len(self._values)} value(s) hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class NetList:
    """An address allow-list; `any_address` admits everything, even an unknown client."""

    networks: tuple[IPNetwork, ...] = ()
    any_address: bool = False

    @classmethod
    def parse(cls, raw: str, name: str = "value") -> NetList:
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if "*" in items:
            return cls(any_address=True)
        try:
            return cls(tuple(ipaddress.ip_network(item, strict=False) for item in items))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from exc

    def admits(self, address: IPAddress | None) -> bool:
        if self.any_address:
            return True
        if address is None:
            return False
        return any(address in net for net in self.networks)

    def plus(self, other: NetList) -> NetList:
        return NetList(self.networks + other.networks, self.any_address or other.any_address)


# Each provider's allow-list when HOOKSTREAM_<P>_ALLOWED_IPS is not set: CIDRs, `*` (any address), or
# FROM_DNS (GatewayAPI's published names, GATEWAYAPI_DNS, resolved by the ingress in the background).
# Every provider has its row: one without is a configuration error, never another provider's list.
FROM_DNS = "dns"
DEFAULT_ALLOWED_IPS: Mapping[str, str] = MappingProxyType({
    "cm": CM_RANGES,  # its published ranges
    "gatewayapi": FROM_DNS,  # its DNS names
    "smsmode": "*",  # publishes none: the README and the start-up log ask for a list or a token
    "mx2": "*",  # publishes none either
})


def default_allowed_ips(provider: str, defaults: Mapping[str, str] = DEFAULT_ALLOWED_IPS) -> NetList | None:
    """`provider`'s row of the defaults as a list; None for FROM_DNS (the ingress's DNS list)."""
    if provider not in defaults:
        raise ConfigError(f"{provider} has no default allow-list: set HOOKSTREAM_{provider.upper()}_ALLOWED_IPS")
    default = defaults[provider]
    return None if default == FROM_DNS else NetList.parse(default, f"the default allow-list of {provider}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _receipt_expiry_s(env: Mapping[str, str]) -> dict[str, int]:
    """HOOKSTREAM_RECEIPT_EXPIRY (default 72h), overridden per provider by HOOKSTREAM_<P>_RECEIPT_EXPIRY:
    validity periods differ between providers."""
    default = _duration_s(env, "HOOKSTREAM_RECEIPT_EXPIRY", 72 * 3600)
    return {p: _duration_s(env, f"HOOKSTREAM_{p.upper()}_RECEIPT_EXPIRY", default) for p in PROVIDERS}


def _duration_s(env: Mapping[str, str], name: str, default: int) -> int:
    """Seconds, or a number with a unit (the one grammar of shared.times): 3600, 90s, 30m, 24h, 7d, 1w."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(parse_duration(raw).total_seconds())
    except ParseError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# Every variable that holds a secret (URLs carry passwords) may instead name a file that holds it:
# HOOKSTREAM_<NAME>_FILE, as Docker and Kubernetes mount secrets.
SECRET_VARIABLES = (
    "HOOKSTREAM_REDIS_URL", "HOOKSTREAM_QUEUE_REDIS_URL", "HOOKSTREAM_DATABASE_URL", "HOOKSTREAM_DATABASE_READ_URL",
    *(f"HOOKSTREAM_{p.upper()}_TOKEN" for p in PROVIDERS), "HOOKSTREAM_GATEWAYAPI_SECRET",
    "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET", "HOOKSTREAM_API_TOKENS", "HOOKSTREAM_DASHBOARD_SECRET",
    "HOOKSTREAM_ERASURE_KEY",
)


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with each set HOOKSTREAM_<NAME>_FILE of SECRET_VARIABLES read into HOOKSTREAM_<NAME>
    (the file's text without its trailing newline). Both set, or a file that cannot be read: an error."""
    found: dict[str, str] = {}
    for name in SECRET_VARIABLES:
        path = env.get(f"{name}_FILE", "").strip()
        if not path:
            continue
        if env.get(name, "").strip():
            raise ConfigError(f"{name} and {name}_FILE are both set: keep one")
        try:
            with open(path, encoding="utf-8") as source:
                found[name] = source.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r}: {exc.strerror}") from None
    return {**env, **found} if found else env


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}: {value[:40]!r} is not one of {', '.join(choices)}")
    return value


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    secret = Secret(env.get(name, ""))
    return secret if secret.values else None


def _sentinels(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    """Comma-separated `host:port` (an IPv6 host in brackets: `[::1]:26379`)."""
    found: list[tuple[str, int]] = []
    for item in (i.strip() for i in env.get(name, "").split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: {item!r} is not host:port")
        found.append((host, int(port)))
    return tuple(found)


def _optional_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    """None when unset: the command's own default applies."""
    return _int(env, name, 0, minimum) if env.get(name, "").strip() else None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name}={raw[:20]!r}: use 1 or 0")
    return raw in ("1", "true", "yes")


def _redis_url(env: Mapping[str, str], cluster: bool) -> str | None:
    """HOOKSTREAM_REDIS_URL, or with a cluster the first of its nodes (its username, password, TLS)."""
    raw = env.get("HOOKSTREAM_REDIS_URL", "").strip()
    if "," in raw and not cluster:
        raise ConfigError("HOOKSTREAM_REDIS_URL names several servers: that is a Redis Cluster's nodes,"
                          " which needs HOOKSTREAM_REDIS_CLUSTER=1")
    return raw.split(",")[0].strip() or None


def _cluster_nodes(env: Mapping[str, str], cluster: bool) -> tuple[tuple[str, int], ...]:
    """With HOOKSTREAM_REDIS_CLUSTER=1: the nodes HOOKSTREAM_REDIS_URL names, comma-separated, each
    `redis://host:port` or (after the first) `host:port`. The first URL's username, password and TLS
    apply to all; its db must be 0 (a cluster has no other)."""
    if not cluster:
        return ()
    name = "HOOKSTREAM_REDIS_URL"
    items = [item.strip() for item in env.get(name, "").split(",") if item.strip()]
    if not items:
        raise ConfigError(f"HOOKSTREAM_REDIS_CLUSTER=1: {name} must name at least one node of the cluster")
    nodes: list[tuple[str, int]] = []
    for number, item in enumerate(items):
        if "://" not in item and number == 0:
            raise ConfigError(f"{name}: the first node must be a URL (redis://[user:password@]host:port/0)")
        parsed = urlsplit(item if "://" in item else f"redis://{item}")
        if parsed.scheme not in ("redis", "rediss"):
            raise ConfigError(f"{name}: {parsed.scheme!r} cannot name a Redis Cluster node (redis:// or rediss://)")
        if number == 0 and parsed.path.strip("/") not in ("", "0"):
            raise ConfigError(f"{name}: a Redis Cluster has only db 0, not {parsed.path.strip('/')!r}")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ConfigError(f"{name}: {item!r} has no valid port") from None
        if not parsed.hostname:
            raise ConfigError(f"{name}: {item!r} names no host")
        nodes.append((parsed.hostname, port))
    return tuple(nodes)


def _queue_redis_url(env: Mapping[str, str]) -> str | None:
    """Where RQ's queues, jobs and the entry → job map live; None: on the stream's Redis.

    Nothing there is the record of what is unfinished (the streams' pending entries are), so a
    queue Redis lost, even restarted empty, loses no request: its entries are reclaimed."""
    return env.get("HOOKSTREAM_QUEUE_REDIS_URL", "").strip() or None


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = field(default=None, repr=False)  # URLs may carry passwords
    database_url: str | None = field(default=None, repr=False)
    # Where the read-only paths read (the API's lookups, the dashboard, `stats`): a streaming
    # replica. None: the primary, HOOKSTREAM_DATABASE_URL.
    database_read_url: str | None = field(default=None, repr=False)
    # Sentinel: when set, every Redis client finds the current primary through them by the service
    # name, and the URLs give only the db number, username and password (shared/connections.py).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_service: str = "hookstream"
    queue_redis_url: str | None = field(default=None, repr=False)  # RQ's queues; None: the stream's Redis
    # Redis Cluster: the streams live on it (sharded), RQ's queues on queue_redis_url (required), which
    # the Sentinels, when set, manage instead. The URL then gives the username, password and TLS.
    redis_cluster: bool = False
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    # The raw stream's shards (shared/shards.py); None: 1, or with a cluster its primaries at start-up.
    stream_shards: int | None = None
    trusted_proxies: NetList = field(default_factory=NetList)
    allowed_ips: Mapping[str, NetList | None] = field(default_factory=dict)  # None: the provider's default
    tokens: Mapping[str, Secret | None] = field(default_factory=dict)
    gatewayapi_secret: Secret | None = None
    gatewayapi_webhook_secret: Secret | None = None
    gatewayapi_fallback_ips: NetList = field(default_factory=NetList)
    gatewayapi_dns_refresh_s: int = 300
    metrics_allowed_ips: NetList = field(default_factory=lambda: NetList.parse(PRIVATE_AND_LOOPBACK))
    max_body_bytes: int = 64 * 1024
    append_replicas: int = 0  # replicas that must confirm an append (WAIT) before the ingress answers 200
    append_replica_timeout_ms: int = 1000  # how long WAIT may take; fewer replicas by then → 503
    key_prefix: str = "hookstream"
    stream_retention_s: int = 24 * 3600
    archive_retention_s: int = 30 * 86400
    events_retention_s: int = 400 * 86400  # events live in weekly partitions, dropped whole past this
    dedupe_horizon_s: int = 90 * 86400  # how long a dedupe key stops a redelivery: past any provider's retries
    status_retention_s: int = 400 * 86400  # final message_status rows, by when we received their status
    status_history_retention_s: int = 400 * 86400  # every report of a message, in weekly partitions like events
    # A message still queued/sent this long after its status becomes expired (no_receipt): per provider.
    receipt_expiry_s: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(PROVIDERS, 72 * 3600))
    consent_evidence_retention_s: int = 5 * 365 * 86400  # consent_changes; consent itself is never dropped
    default_region: str | None = None
    opt_out_reach: str = "scope"  # scope: an opt-out reaches its own scope; all: every scope of the subject
    erasure_key: Secret | None = None  # HMAC key of erasure (DELETE /v1/subjects/...); the first value hashes
    gatewayapi_keywords: frozenset[str] = frozenset()
    batch_size: int = 500
    batch_wait_ms: int = 50
    max_inflight_batches: int = 8
    visibility_timeout_s: int = 60
    job_timeout_s: int = 30
    max_deliveries: int = 5
    result_ttl_s: int = 60
    failure_ttl_s: int = 3 * 86400
    pg_pool_size: int = 2
    worker_metrics_port: int = 9101  # Prometheus /metrics of `hookstream worker`; 0 = none
    dispatch_metrics_port: int = 9102  # and of `hookstream dispatch`
    local_profile: bool = False
    # The commands' own: listen address, worker processes, logs, `run`'s data folder.
    host: str | None = None  # None: the command's default (0.0.0.0; 127.0.0.1 for `run`)
    port: int = 8000
    workers: int | None = None  # None: the command's default (1 for `worker`, 2 for `run`)
    log_level: str = "INFO"
    log_phones: bool = False
    data_dir: str = ".data"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        env = with_secret_files(env)
        allowed: dict[str, NetList | None] = {}
        tokens: dict[str, Secret | None] = {}
        for provider in PROVIDERS:
            name = f"HOOKSTREAM_{provider.upper()}_ALLOWED_IPS"
            allowed[provider] = NetList.parse(env[name], name) if env.get(name, "").strip() else None
            if allowed[provider] is None:  # its default applies: a provider without one stops here
                default_allowed_ips(provider, DEFAULT_ALLOWED_IPS)
            tokens[provider] = _secret(env, f"HOOKSTREAM_{provider.upper()}_TOKEN")
        keywords = env.get("HOOKSTREAM_GATEWAYAPI_KEYWORDS", "")
        return cls(
            redis_url=_redis_url(env, _flag(env, "HOOKSTREAM_REDIS_CLUSTER")),
            redis_cluster=_flag(env, "HOOKSTREAM_REDIS_CLUSTER"),
            redis_cluster_nodes=_cluster_nodes(env, _flag(env, "HOOKSTREAM_REDIS_CLUSTER")),
            stream_shards=_optional_int(env, "HOOKSTREAM_STREAM_SHARDS", minimum=1),
            database_url=env.get("HOOKSTREAM_DATABASE_URL") or None,
            database_read_url=env.get("HOOKSTREAM_DATABASE_READ_URL", "").strip() or None,
            redis_sentinels=_sentinels(env, "HOOKSTREAM_REDIS_SENTINELS"),
            redis_sentinel_service=env.get("HOOKSTREAM_REDIS_SENTINEL_SERVICE", "").strip() or "hookstream",
            queue_redis_url=_queue_redis_url(env),
            trusted_proxies=NetList.parse(env.get("HOOKSTREAM_TRUSTED_PROXIES", ""), "HOOKSTREAM_TRUSTED_PROXIES"),
            allowed_ips=allowed,
            tokens=tokens,
            gatewayapi_secret=_secret(env, "HOOKSTREAM_GATEWAYAPI_SECRET"),
            gatewayapi_webhook_secret=_secret(env, "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET"),
            gatewayapi_fallback_ips=NetList.parse(
                env.get("HOOKSTREAM_GATEWAYAPI_FALLBACK_IPS", ""), "HOOKSTREAM_GATEWAYAPI_FALLBACK_IPS"
            ),
            gatewayapi_dns_refresh_s=_duration_s(env, "HOOKSTREAM_GATEWAYAPI_DNS_REFRESH", 300),
            metrics_allowed_ips=NetList.parse(
                env.get("HOOKSTREAM_METRICS_ALLOWED_IPS", PRIVATE_AND_LOOPBACK), "HOOKSTREAM_METRICS_ALLOWED_IPS"
            ),
            max_body_bytes=_int(env, "HOOKSTREAM_MAX_BODY_BYTES", 64 * 1024, minimum=1),
            append_replicas=_int(env, "HOOKSTREAM_APPEND_REPLICAS", 0),
            append_replica_timeout_ms=_int(env, "HOOKSTREAM_APPEND_REPLICA_TIMEOUT_MS", 1000, minimum=1),
            key_prefix=env.get("HOOKSTREAM_KEY_PREFIX", "hookstream").strip() or "hookstream",
            stream_retention_s=_duration_s(env, "HOOKSTREAM_STREAM_RETENTION", 24 * 3600),
            archive_retention_s=_duration_s(env, "HOOKSTREAM_ARCHIVE_RETENTION", 30 * 86400),
            events_retention_s=_duration_s(env, "HOOKSTREAM_EVENTS_RETENTION", 400 * 86400),
            dedupe_horizon_s=_duration_s(env, "HOOKSTREAM_DEDUPE_HORIZON", 90 * 86400),
            status_retention_s=_duration_s(env, "HOOKSTREAM_STATUS_RETENTION", 400 * 86400),
            consent_evidence_retention_s=_duration_s(env, "HOOKSTREAM_CONSENT_EVIDENCE_RETENTION", 5 * 365 * 86400),
            status_history_retention_s=_duration_s(env, "HOOKSTREAM_STATUS_HISTORY_RETENTION", 400 * 86400),
            receipt_expiry_s=_receipt_expiry_s(env),
            default_region=(env.get("HOOKSTREAM_DEFAULT_REGION", "").strip().upper() or None),
            opt_out_reach=_choice(env, "HOOKSTREAM_OPT_OUT_REACH", ("scope", "all"), "scope"),
            erasure_key=_secret(env, "HOOKSTREAM_ERASURE_KEY"),
            gatewayapi_keywords=frozenset(k.strip().casefold() for k in keywords.split(",") if k.strip()),
            batch_size=_int(env, "HOOKSTREAM_BATCH_SIZE", 500, minimum=1),
            batch_wait_ms=_int(env, "HOOKSTREAM_BATCH_WAIT_MS", 50),
            max_inflight_batches=_int(env, "HOOKSTREAM_MAX_INFLIGHT_BATCHES", 8, minimum=1),
            visibility_timeout_s=_duration_s(env, "HOOKSTREAM_VISIBILITY_TIMEOUT", 60),
            job_timeout_s=_duration_s(env, "HOOKSTREAM_JOB_TIMEOUT", 30),
            max_deliveries=_int(env, "HOOKSTREAM_MAX_DELIVERIES", 5, minimum=1),
            result_ttl_s=_duration_s(env, "HOOKSTREAM_RESULT_TTL", 60),
            failure_ttl_s=_duration_s(env, "HOOKSTREAM_FAILURE_TTL", 3 * 86400),
            pg_pool_size=_int(env, "HOOKSTREAM_PG_POOL_SIZE", 2, minimum=1),
            worker_metrics_port=_int(env, "HOOKSTREAM_WORKER_METRICS_PORT", 9101),
            dispatch_metrics_port=_int(env, "HOOKSTREAM_DISPATCH_METRICS_PORT", 9102),
            host=env.get("HOOKSTREAM_HOST", "").strip() or None,
            port=_int(env, "HOOKSTREAM_PORT", 8000, minimum=1),
            workers=_optional_int(env, "HOOKSTREAM_WORKERS", minimum=1),
            log_level=env.get("HOOKSTREAM_LOG_LEVEL", "").strip() or "INFO",
            log_phones=env.get("HOOKSTREAM_LOG_PHONES", "").strip() == "1",
            data_dir=env.get("HOOKSTREAM_DATA_DIR", "").strip() or ".data",
        )

    def __post_init__(self) -> None:
        """The combinations of Redis settings that cannot work, refused at start-up."""
        if not self.redis_cluster:
            return
        if self.queue_redis_url is None:
            raise ConfigError("HOOKSTREAM_REDIS_CLUSTER=1 needs HOOKSTREAM_QUEUE_REDIS_URL: RQ cannot run on a"
                              " cluster, so its queues need a plain Redis (or, with HOOKSTREAM_REDIS_SENTINELS,"
                              " the Sentinels' primary)")
        if "," in self.queue_redis_url:
            raise ConfigError("HOOKSTREAM_QUEUE_REDIS_URL names one Redis, not a cluster's nodes")
        if self.redis_url is None:
            raise ConfigError("HOOKSTREAM_REDIS_CLUSTER=1 needs HOOKSTREAM_REDIS_URL: the cluster's nodes")

    @property
    def stream(self) -> str:
        """The raw stream of a single-stream deployment (one shard): shard 0 of shared.shards.layout(prefix, 1)."""
        return f"{self.key_prefix}:raw"

    @property
    def group(self) -> str:
        return f"{self.key_prefix}:workers"

    @property
    def queue(self) -> str:
        return f"{self.key_prefix}"

    @property
    def replay_queue(self) -> str:
        return f"{self.key_prefix}-replay"

    @property
    def parked_stream(self) -> str:
        """Entries that not even a raw dead letter could hold, kept whole for a person to look at."""
        return f"{self.key_prefix}:parked"

    @property
    def inflight_key(self) -> str:
        """Hash: stream entry id → the RQ job that holds it (for safe reclaim)."""
        return f"{self.key_prefix}:inflight"

    def redis_url_or_default(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    def queue_redis_url_or_default(self) -> str:
        return self.queue_redis_url or self.redis_url_or_default()

    def database_url_or_default(self) -> str:
        return self.database_url or "postgresql://postgres@127.0.0.1:5432/postgres"

    def database_read_url_or_default(self) -> str:
        return self.database_read_url or self.database_url_or_default()
