"""Implementations of the ports in :mod:`gateway.ports` (object stores, indexes, upstream PACS)."""
