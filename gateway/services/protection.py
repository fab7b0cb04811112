"""Protecting a study from retention sweeps (:mod:`gateway.services.retention`):
``PUT {base}/studies/{study}/protected`` with ``1`` or ``0``, Orthanc's convention.

Who may: the ``admin`` scope, and a study-restricted principal only inside its restriction;
outside it, as for an absent study, the answer is a 404 (the rule of
:mod:`gateway.services.visibility`: no existence oracle).
"""

from __future__ import annotations

from gateway.errors import NotFound
from gateway.ports import Index
from gateway.security.access import Restriction
from gateway.services.visibility import Visibility


class StudyProtection:
    def __init__(self, index: Index, visibility: Visibility) -> None:
        self._index = index
        self._visibility = visibility

    async def set(self, study: str, protected: bool, *, restriction: Restriction | None) -> None:
        await self._require(study, restriction)
        await self._index.set_protected(study, protected)

    async def get(self, study: str, *, restriction: Restriction | None) -> bool:
        await self._require(study, restriction)
        return await self._index.is_protected(study)

    async def _require(self, study: str, restriction: Restriction | None) -> None:
        if not await self._index.instances(study) or not await self._visibility.study_visible(study, restriction):
            raise NotFound("no such study is stored")
