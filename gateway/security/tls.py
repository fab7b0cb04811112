"""The server's TLS context: TLS 1.2 or newer, forward-secret AEAD cipher suites only.

For TLS 1.2 the cipher list is set explicitly (uvicorn's default string also admits CBC
suites): ECDHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305 (AEAD), as in
the Mozilla "intermediate" profile and BSI TR-02102-2. TLS 1.3 suites are all AEAD and
forward-secret; OpenSSL's defaults are kept for them. Compression and renegotiation are off.
"""

from __future__ import annotations

import ssl
from pathlib import Path

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def server_context(cert_file: Path, key_file: Path, *, min_version: str = "1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return ctx
