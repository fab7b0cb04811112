"""Retrieve Rendered and Thumbnail (PS3.18 8.3.5, 10.4.1.1.3): consumer images of stored frames.

Frames are decoded through :meth:`InstanceReader.decoded_frame` (ranged reads, single flight and
the frame cache) and rendered by the pure pipeline of :mod:`gateway.dicom.render`. Finished
images are kept in their own bounded cache, keyed by the object digest, frame and rendering
options, and computed once however many viewers ask at once: a study list showing thumbnails
to many users renders each one once.

Which frame stands for what: a rendered instance is its first frame (PS3.18 8.3.5.1: a
single-frame media type of a multi-frame instance); a thumbnail is the middle frame of an
instance, and of a series or study the middle instance of its first series with pixel data.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import anyio
import orjson

from gateway.dicom import render
from gateway.dicom.render import RenderOptions, Viewport
from gateway.errors import NotFound
from gateway.ports import InstanceRecord
from gateway.services.instance_reader import InstanceReader
from gateway.services.singleflight import SingleFlightCache

DEFAULT_THUMBNAIL = Viewport(128, 128)
DEFAULT_CACHE_BYTES = 64 << 20


class RenderService:
    def __init__(self, reader: InstanceReader, *, threads: int = 2, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._reader = reader
        self._cpu = anyio.CapacityLimiter(threads)
        self.cache: SingleFlightCache[tuple[object, ...], bytes] = SingleFlightCache(
            "rendered", max_bytes=cache_bytes, size=len
        )

    async def render(self, record: InstanceRecord, frame: int, options: RenderOptions) -> bytes:
        """Frame ``frame`` (1-based) of ``record`` rendered as ``options`` say."""

        async def compute() -> bytes:
            native, pixel = await self._reader.decoded_frame(record, frame)
            metadata = orjson.loads(record.metadata)
            bulk = {path: await self._reader.bulkdata_bytes(record, path) for path in render.bulk_paths(metadata)}
            attrs = render.attributes_from_json(metadata, pixel, frame, bulk)
            return await anyio.to_thread.run_sync(render.render, native, pixel, attrs, options, limiter=self._cpu)

        return await self.cache.get((record.sha256, frame, *options.key()), compute)

    async def thumbnail(self, records: Sequence[InstanceRecord], options: RenderOptions) -> bytes:
        """The thumbnail of an instance, series or study (its ``records``)."""
        record, frame = representative(records, middle_frame=True)
        if options.viewport is None:
            options = RenderOptions(options.media_type, options.quality, DEFAULT_THUMBNAIL, options.window)
        return await self.render(record, frame, options)


def representative(records: Sequence[InstanceRecord], *, middle_frame: bool = False) -> tuple[InstanceRecord, int]:
    """The instance and frame that stand for ``records`` (see the module docstring)."""
    images = [r for r in records if r.pixel is not None]
    if not images:
        raise NotFound("nothing to render: no instance here has pixel data")
    if len(images) == 1:
        chosen = images[0]
    else:
        # The index orders instances by series, then instance number.
        first_series = next(list(group) for _, group in groupby(images, key=lambda r: r.series_uid))
        chosen = first_series[(len(first_series) - 1) // 2]
    frames = chosen.pixel.number_of_frames if chosen.pixel else 1
    return chosen, ((frames + 1) // 2 if middle_frame else 1)
