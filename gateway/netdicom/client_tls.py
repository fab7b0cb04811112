"""DICOM TLS on the associations the gateway opens (PS3.15 B.1, the BCP 195 profile): to a
``[[pacs]]`` node, and to a ``[[dimse_clients]]`` entry's own SCP (a C-MOVE sub-association, a
storage commitment report). The peer is verified against the configured CA under the name it
must carry; a client certificate is presented when one is configured."""

from __future__ import annotations

import ssl

from gateway.settings import PacsTls

__all__ = ["client_tls_args"]


def client_tls_args(tls: PacsTls, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` (context, server hostname) for calling ``host``, or None when
    ``tls`` is not configured (plain TCP)."""
    if not tls.enabled:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context, tls.server_name or host
