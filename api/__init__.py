"""The consent API (`hookstream api`): may a sender text this person, and what changed since.

Its own process and port, never part of the ingress: it needs Postgres, the ingress only Redis.
"""
