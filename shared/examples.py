"""The first webhook a newcomer sends: printed by `hookstream run` and shown by the dashboard while
nothing has arrived yet, so both show the same request."""

from __future__ import annotations


def example_curl(port: int) -> str:
    """A curl command posting a CM text (a STOP) to the ingress listening on `port` of this machine."""
    return (
        f"curl -i -X POST http://127.0.0.1:{port}/webhooks/cm/mo -H 'Content-Type: application/json' "
        "-d '{\"reference\":\"ref-1\",\"from\":\"+31612345678\",\"to\":\"3669\",\"body\":\"STOP\","
        "\"groupings\":[\"\",\"\",\"\"]}'"
    )
