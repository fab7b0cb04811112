"""Internet-facing security: who is asking (principal), what they may see (access), and the
pieces that enforce it (JWT and API-key authentication, rate limits, audit, TLS).

Pure policy lives here; the ASGI middleware that applies it is in :mod:`gateway.http`.
"""
