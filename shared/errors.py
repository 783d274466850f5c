"""The few named errors of hookstream, each mapped once at an edge."""


class HookstreamError(Exception):
    """Base class: every error here carries a human-readable reason."""


class ParseError(HookstreamError):
    """A raw record cannot be turned into events; it becomes a dead letter with this reason."""


class InvalidSignature(HookstreamError):
    """A signature or shared token is missing or wrong (HTTP 401)."""


class StoreUnavailable(HookstreamError):
    """Redis did not take the record (HTTP 503, so the provider retries)."""


class ConfigError(HookstreamError):
    """An environment variable holds a value that cannot be used; the message names it."""


class DatabaseUnavailable(HookstreamError):
    """Postgres stayed unreachable for a job's whole retry budget. Its entries stay pending and are
    delivered again later; such a delivery never counts toward giving up on a record."""
