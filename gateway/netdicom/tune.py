"""Tuning applied to each association before its DUL thread starts (gateway.netdicom).

* Acceptors: :func:`tune_accepted` is an ``EVT_CONN_OPEN`` handler of the server; pynetdicom
  triggers it after creating the association and before starting it. Their association
  thread waits for work too (:mod:`gateway.netdicom.acceptor`).
* Requestors: :class:`TunedAE` hooks ``AE._create_socket``, which ``AE.associate`` calls before
  ``Association.request`` starts the DUL thread (an ``EVT_CONN_OPEN`` handler runs too late
  there: on the DUL thread, once connected). Their association thread runs the same loop as
  an acceptor's (pynetdicom's is one loop for both), so it waits for work too.

Every tuned association writes its DIMSE messages to its socket from the sending thread
(:mod:`gateway.netdicom.pdata_writer`) and sends an already encoded data set as it is
(:mod:`gateway.netdicom.encoded_store`). Requested ones (the gateway's C-GETs from a PACS, and
the C-MOVE sub-associations of its listener) also write the data set fragments they receive
straight to the file (:mod:`gateway.netdicom.pdata_reader`); accepted ones keep pynetdicom's
reads, under the listener's PDU length cap.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE

from gateway.netdicom import acceptor, encoded_store, pdata_writer
from gateway.netdicom.pdata_reader import FragmentReader
from gateway.netdicom.quiet import quiet
from gateway.netdicom.reactor import install


def tune(assoc: Any, transport: Any, *, fast_receive: bool = False) -> None:
    quiet(assoc)
    send_lock = install(assoc.dul, transport, FragmentReader() if fast_receive else None)
    pdata_writer.install(assoc, send_lock)
    encoded_store.install(assoc, send_lock)


def tune_accepted(event: Any) -> None:
    """``EVT_CONN_OPEN`` of an acceptor (runs on the server's thread before the association's)."""
    assoc = event.assoc
    if assoc.is_acceptor and not assoc.is_alive():
        tune(assoc, assoc.dul.socket)
        acceptor.install(assoc)


class TunedAE(AE):
    """A pynetdicom AE whose requested associations are tuned."""

    def _create_socket(self, assoc: Any, *args: Any, **kwargs: Any) -> Any:
        transport = super()._create_socket(assoc, *args, **kwargs)
        tune(assoc, transport, fast_receive=True)
        acceptor.install(assoc)
        return transport
