"""Which lossless transfer syntax an upload is stored in (``storage_compression`` and its size
policy): one rule for STOW-RS, DIMSE C-STORE and anything else that stores through
:class:`~gateway.services.stow.StowService`.

Only uncompressed uploads are re-encoded: compressed ones are kept as sent (decoding and
re-encoding them gains little and, for lossy ones, would hide what they are). The syntax is
chosen by the size of one uncompressed frame, so a deployment can keep small frames in JPEG-LS
(fast to encode and decode) and large ones in HTJ2K with RPCL progression (a viewer draws a
coarse image from the first bytes of a frame).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.dicom import transcode
from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from gateway.ports import InstanceRecord


@dataclass(frozen=True, slots=True)
class CompressionPolicy:
    """``syntax``: what uploads are stored in (None: as received). With ``small_below`` > 0,
    instances whose frames are smaller than that many bytes uncompressed take ``small_syntax``
    instead (None: as received)."""

    syntax: str | None = None
    small_syntax: str | None = None
    small_below: int = 0

    @property
    def enabled(self) -> bool:
        return self.syntax is not None or (self.small_below > 0 and self.small_syntax is not None)

    def syntax_for(self, record: InstanceRecord) -> str | None:
        """The syntax to store ``record`` in, or None to store it as received: already
        compressed, no pixel data, or pixels the chosen syntax cannot hold losslessly."""
        pixel = record.pixel
        if pixel is None or record.transfer_syntax not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            return None
        frame_bytes = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
        syntax = self.small_syntax if frame_bytes < self.small_below else self.syntax
        if syntax is None or not transcode.can_encode(syntax, pixel):
            return None
        return syntax
