"""What one HTTP request moved: body bytes both ways and the response status, counted once.

The metrics/access-log middleware (outermost) and the audit middleware both report these. The
first of them to see the request wraps ``receive``/``send`` to count and leaves the counter in
the scope's state; any middleware further in reads the same counter instead of counting again.
The counts are final once the inner application has returned: every message passes the
counting wrappers before it reaches the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Message, Receive, Scope, Send

_STATE_KEY = "traffic"


@dataclass
class Traffic:
    status: int = 500  # what the client gets when the app fails before answering
    received: int = 0  # request body bytes read by the application
    sent: int = 0  # response body bytes sent


def counted(scope: Scope, receive: Receive, send: Send) -> tuple[Traffic, Receive, Send]:
    """The request's :class:`Traffic`, and the ``receive``/``send`` to pass inwards.

    The first call for a request returns a new counter with counting wrappers; later calls (from
    middleware further in) return that counter with ``receive``/``send`` unchanged.
    """
    state = scope.setdefault("state", {})
    existing = state.get(_STATE_KEY)
    if isinstance(existing, Traffic):
        return existing, receive, send
    traffic = Traffic()
    state[_STATE_KEY] = traffic

    async def counting_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            traffic.received += len(message.get("body", b""))
        return message

    async def counting_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            traffic.status = message["status"]
        elif message["type"] == "http.response.body":
            traffic.sent += len(message.get("body", b""))
        await send(message)

    return traffic, counting_receive, counting_send
