"""The ``dicomweb-gateway`` command (``cli``) and its subcommands, one module each.

With ``gateway/app.py`` these are the composition root: they choose the adapters (from the
settings) and take the services from ``gateway.services.bundle``.
"""
