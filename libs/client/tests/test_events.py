"""The Server-Sent Events decoder, fed the way a stream arrives."""

from __future__ import annotations

from sous_client.events import EventDecoder, ServerSentEvent, parse_events
from sous_client.protocol import job_from_event

JOB = (
    '{"id": "6f1c1f3e-8f0e-4a57-9b43-1f0ad0e2b0a1", "kind": "transcode", "state": "running",'
    ' "progress": 42, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z"}'
)


def test_events_end_at_blank_lines_and_join_their_data_lines() -> None:
    lines = ["event: job", "data: first", "data:second", "", "data: plain", ""]
    assert list(parse_events(lines)) == [
        ServerSentEvent("job", "first\nsecond"),
        ServerSentEvent("message", "plain"),
    ]


def test_comments_pings_and_unknown_fields_are_skipped() -> None:
    lines = [": ping", "", "event: job", "colour: blue", ": ping", "data: x", ""]
    assert list(parse_events(lines)) == [ServerSentEvent("job", "x")]


def test_only_one_space_after_the_colon_is_dropped_and_line_endings_are_stripped() -> None:
    lines = ["data:  two spaces\r", "data", "\r"]
    assert list(parse_events(lines)) == [ServerSentEvent("message", " two spaces\n")]


def test_id_and_retry_are_kept_and_a_bad_retry_ignored() -> None:
    decoder = EventDecoder()
    for line in ["id: 7", "retry: 1500", "data: a"]:
        assert decoder.feed(line) is None
    assert decoder.feed("") == ServerSentEvent("message", "a", id="7", retry=1500)
    for line in ["retry: soon", "data: b"]:
        decoder.feed(line)
    assert decoder.feed("") == ServerSentEvent("message", "b")
    assert decoder.last_event_id == "7"


def test_an_event_without_data_is_not_dispatched_nor_leaks_its_type() -> None:
    assert list(parse_events(["event: job", "", "data: d", ""])) == [
        ServerSentEvent("message", "d")
    ]


def test_an_unfinished_last_event_is_dropped() -> None:
    assert list(parse_events(["event: job", "data: cut off"])) == []


def test_a_job_event_carries_the_job_and_other_events_none() -> None:
    job = job_from_event(ServerSentEvent("job", JOB))
    assert job is not None
    assert (job.state.value, job.progress, job.is_terminal) == ("running", 42, False)
    assert job_from_event(ServerSentEvent("message", JOB)) is None
