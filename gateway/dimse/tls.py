"""DICOM TLS on the listener (PS3.15 B.9, the BCP 195 profile): TLS 1.2 or newer with the
forward-secret AEAD suites the HTTPS side uses (gateway.security.tls), and, when
``dimse_tls.ca_file`` is set, a client certificate signed by that CA is required of every peer
(an association without one fails in the handshake, before any DICOM byte).
"""

from __future__ import annotations

import ssl

from gateway.security.tls import TLS12_CIPHERS
from gateway.settings import DimseTls


def listener_context(tls: DimseTls) -> ssl.SSLContext | None:
    """The listener's server context, or None when ``[dimse_tls]`` is not configured."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
