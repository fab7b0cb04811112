"""Orchestration of the DICOMweb services over the ports: no HTTP types, no drivers.

Each module is one service (``qido``, ``retrieval``, ``stow``); routes call them with parsed requests
and adapters are handed in, so every service runs the same against SQLite or PostgreSQL, disk
or S3, with or without a PACS.
"""
