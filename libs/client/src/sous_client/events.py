"""Server-Sent Events parsing (the WHATWG event-stream format), fed one line at a time.

Shared by the sync and the async client: each feeds the lines of ``GET
/v1/jobs/{id}/events`` into an :class:`EventDecoder` and gets whole events back::

    decoder = EventDecoder()
    for line in response.iter_lines():
        event = decoder.feed(line)
        if event is not None and event.event == "job":
            job = Job.model_validate_json(event.data)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None
    #: Reconnection time in milliseconds the server asked for, if it sent one.
    retry: int | None = None


class EventDecoder:
    """Accumulates field lines; a blank line ends an event. Comments (``: ping``) are skipped."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        #: The last event id seen, kept across events (``Last-Event-ID`` on reconnect).
        self.last_event_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """One line without its line ending; returns the event this line completes, if any."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            # An event without data is not dispatched; its type is dropped too.
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._id,
            retry=self._retry,
        )
        self._event, self._data, self._id, self._retry = "", [], None, None
        return event


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Every complete event in ``lines`` (an incomplete last one is dropped, as browsers do)."""
    decoder = EventDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
