"""The C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root queries answered from the same
services as QIDO-RS.

:class:`FindHandler` is a pynetdicom ``EVT_C_FIND`` handler. It runs on one of pynetdicom's
association threads and reaches the gateway's (async) services through a *portal*, a callable
that runs a coroutine on the gateway's event loop and returns its result. For each request:

1. the identifier is translated (:func:`gateway.dimse.find_query.parse_find`); a bad one is
   answered with its failure status and ErrorComment, nothing is searched;
2. the query carries the calling peer's study-level restriction, so the index and the PACS
   federation apply the same visibility rule as for QIDO (a restricted peer finds only its
   studies; the others behave as if they did not exist);
3. the search asks the index and every ``[[pacs]]`` node and merges by UID
   (:class:`gateway.services.federation.QidoFederation`); PATIENT level folds study rows into
   patients;
4. each row is one pending response (0xFF00, or 0xFF01 when private/unknown keys were asked for
   and are not returned); C-CANCEL is honoured between pendings (0xFE00); 0x0000 ends it.

The search itself runs to its end once started (PACS C-FINDs are capped by
``limits.max_qido_results`` and their DIMSE timeouts); a C-CANCEL that arrives meanwhile stops
the answer before its first pending. An unavailable index or store is 0xA700 (out of
resources); any other failure 0xC001 with a generic comment, logged with its cause — a handler
never raises into pynetdicom (which would abort the association).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

from gateway.dicom.query import QidoQuery
from gateway.dimse.find_answer import patient_rows, response_identifier
from gateway.dimse.find_query import FindFailure, FindRequest, parse_find
from gateway.dimse.observe import notify
from gateway.dimse.status import UNABLE_TO_PROCESS, failure, identifier_of
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.ports import SearchResult
from gateway.security.access import Restriction
from gateway.services.deidentified import DeidentifiedViews

__all__ = ["FindHandler", "FindOutcome", "FindPeer", "Portal", "Searcher"]

log = logging.getLogger(__name__)

Portal = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine on the gateway's event loop from a pynetdicom thread; returns its result."""

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCELLED = 0xFE00
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_PROCESS_INTERNAL = 0xC001


class FindPeer(Protocol):
    """What the handler needs to know about the calling peer."""

    @property
    def name(self) -> str: ...

    @property
    def restriction(self) -> Restriction | None: ...

    @property
    def deidentify(self) -> str | None: ...


class Searcher(Protocol):
    """The QIDO search over the index and the PACS nodes (QidoFederation has this shape)."""

    async def search(self, query: QidoQuery, *, base_url: str, pacs: str | None = None) -> SearchResult: ...


@dataclass(frozen=True)
class FindOutcome:
    """One C-FIND as audited: who, which level and keys (names only: values are patient data,
    as in the HTTP audit trail), the final status and how many matches were sent."""

    peer: str
    level: str
    keys: tuple[str, ...]
    status: int
    matches: int
    duration: float
    comment: str = ""


class FindHandler:
    """``EVT_C_FIND`` handler; see the module docstring.

    ``search``: the QIDO federation (or anything with its ``search``); ``ae_title``: the
    gateway's AE title, every row's Retrieve AE Title; ``portal``: see :data:`Portal`;
    ``peer_of``: the calling peer of an event; ``on_outcome``: called once per request, after
    its final status (the listener's audit and metrics hook); ``views``: the de-identified
    views a peer with ``deidentify`` set is answered through (as an HTTP principal would be).
    """

    def __init__(
        self,
        search: Searcher,
        *,
        ae_title: str,
        portal: Portal,
        peer_of: Callable[[Any], FindPeer],
        on_outcome: Callable[[FindOutcome], None] | None = None,
        views: DeidentifiedViews | None = None,
    ) -> None:
        self._search = search
        self._views = views
        self._ae_title = ae_title
        self._portal = portal
        self._peer_of = peer_of
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        started = time.monotonic()
        peer = self._peer_of(event)
        level, matches = "", 0
        keys: tuple[str, ...] = ()
        status, comment = UNABLE_TO_PROCESS_INTERNAL, "internal error"
        try:
            request = parse_find(identifier_of(event, FindFailure), str(event.request.AffectedSOPClassUID))
            level, keys = request.level, request.key_names
            rows = self._rows(request, peer)
            pending = PENDING_OPTIONAL_KEYS_UNSUPPORTED if request.unsupported else PENDING
            for row in rows:
                if event.is_cancelled:
                    status, comment = CANCELLED, ""
                    break
                identifier = response_identifier(row, request, ae_title=self._ae_title)
                matches += 1
                yield pending, identifier
            else:
                status, comment = SUCCESS, ""
        except GeneratorExit:
            # pynetdicom closed the generator: the association ended before the last pending.
            status, comment = CANCELLED, "association ended"
            raise
        except FindFailure as exc:
            status, comment = exc.status, exc.comment
            yield failure(exc.status, exc.comment, exc.offending), None
            return
        except ServiceUnavailable as exc:
            log.warning("C-FIND from %s: %s", peer.name, exc.reason)
            status, comment = OUT_OF_RESOURCES, "the index is unavailable"
            yield failure(status, comment), None
            return
        except Exception:
            log.exception("C-FIND from %s failed", peer.name)
            yield failure(status, comment), None
            return
        finally:
            self._report(FindOutcome(peer.name, level, keys, status, matches, time.monotonic() - started, comment))
        yield status, None

    def _rows(self, request: FindRequest, peer: FindPeer) -> list[dict[str, Any]]:
        query = dataclasses.replace(request.query, restriction=peer.restriction)
        views = self._views if peer.deidentify is not None else None
        asked = query
        if views is not None:
            try:  # de-identified UIDs resolved back; matching on de-identified attributes refused
                query = self._portal(views.original_query(query))
            except BadRequest as exc:
                raise FindFailure(UNABLE_TO_PROCESS, exc.reason) from None
        # RetrieveURL is not a C-FIND key the gateway answers; the base only satisfies the API.
        result: SearchResult = self._portal(self._search.search(query, base_url=""))
        for warning in result.extra.get("warnings", ()):
            log.warning("C-FIND from %s: %s", peer.name, warning)
        if result.more:
            # C-FIND has no paging: the answer is the first limits.max_qido_results matches.
            log.warning("C-FIND from %s: more matches than limits.max_qido_results; answer cut", peer.name)
        rows = patient_rows(result.rows) if request.level == "PATIENT" else result.rows
        return views.rows(rows, asked) if views is not None else rows

    def _report(self, outcome: FindOutcome) -> None:
        log.info(
            "C-FIND from %s: level %s, keys %s, status 0x%04X, %d matches",
            outcome.peer,
            outcome.level or "?",
            ",".join(outcome.keys),
            outcome.status,
            outcome.matches,
        )
        notify(self._on_outcome, outcome, "C-FIND")
