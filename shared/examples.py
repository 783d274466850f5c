"""The first webhook a newcomer sends: printed by `hookstream run` and shown by the dashboard while
nothing has arrived yet, so both show the same request."""

from __future__ import annotations

EXAMPLE_PHONE = "+31612345678"  # the person in every example request (`hookstream send-test` too)
EXAMPLE_SHORT_CODE = "3669"  # and our short code


def example_curl(port: int) -> str:
    """A curl command posting a CM text (a STOP) to the ingress listening on `port` of this machine."""
    return (
        f"curl -i -X POST http://127.0.0.1:{port}/webhooks/cm/mo -H 'Content-Type: application/json' "
        f"-d '{{\"reference\":\"ref-1\",\"from\":\"{EXAMPLE_PHONE}\",\"to\":\"{EXAMPLE_SHORT_CODE}\",\"body\":\"STOP\","
        "\"groupings\":[\"\",\"\",\"\"]}'"
    )
