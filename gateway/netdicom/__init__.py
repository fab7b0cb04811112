"""pynetdicom tuned for a server: shared by the DIMSE front door (gateway.dimse) and the PACS
adapter (gateway.adapters), so it sits on its own floor below both (pyproject.toml contracts).

It changes how pynetdicom waits and reads, never what it sends or answers:
:mod:`gateway.netdicom.reactor` (a DUL thread that sleeps until its socket or its queues have
something, and reads whole PDUs), :mod:`gateway.netdicom.quiet` (no per-PDU log formatting
unless pynetdicom's debug log is on) and :mod:`gateway.netdicom.tune` (applying both to an
association before its DUL thread starts).
"""
