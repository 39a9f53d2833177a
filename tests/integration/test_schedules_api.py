"""``/v1/schedules`` over HTTP against the real API and PostgreSQL: CRUD, validation, isolation."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from support.stack import Api, Stack

pytestmark = pytest.mark.integration

NIGHTLY_FEED = {
    "name": "nightly feed",
    "cron": "0 3 * * *",
    "timezone": "Europe/Paris",
    "job": {"kind": "fetch", "url": "https://example.com/feed"},
    "enabled": True,
    "missed_policy": "skip",
}


def create(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/schedules", json={**NIGHTLY_FEED, **changes})
    assert response.status_code == 201, response.text
    return response.json()


def assert_refused(response: httpx.Response, status: int, code: str, mentions: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert mentions in error["message"], error["message"]


def test_a_schedule_is_created_read_listed_changed_and_deleted(client: httpx.Client) -> None:
    before = datetime.now(UTC)
    response = client.post("/v1/schedules", json=NIGHTLY_FEED)
    assert response.status_code == 201, response.text
    schedule = response.json()
    assert response.headers["Location"].endswith(f"/v1/schedules/{schedule['id']}")
    assert {key: schedule[key] for key in NIGHTLY_FEED} == NIGHTLY_FEED
    assert schedule["last_fired_at"] is None
    next_fire = datetime.fromisoformat(schedule["next_fire_at"])
    assert before < next_fire
    paris = next_fire.astimezone(ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute) == (3, 0)

    assert client.get(f"/v1/schedules/{schedule['id']}").json() == schedule
    assert client.get("/v1/schedules").json()["items"][0] == schedule

    changed = client.patch(f"/v1/schedules/{schedule['id']}", json={"name": "renamed"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "renamed"
    assert changed.json()["next_fire_at"] == schedule["next_fire_at"]
    updated = datetime.fromisoformat(changed.json()["updated_at"])
    assert updated > datetime.fromisoformat(schedule["updated_at"])

    retimed = client.patch(
        f"/v1/schedules/{schedule['id']}", json={"cron": "30 6 * * *", "timezone": "UTC"}
    ).json()
    assert datetime.fromisoformat(retimed["next_fire_at"]).strftime("%H:%M") == "06:30"

    deleted = client.delete(f"/v1/schedules/{schedule['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_refused(
        client.get(f"/v1/schedules/{schedule['id']}"), 404, "schedule_not_found", schedule["id"]
    )
    assert_refused(client.delete(f"/v1/schedules/{schedule['id']}"), 404, "schedule_not_found", "")


def test_defaults_fill_what_is_left_out(client: httpx.Client) -> None:
    email = {"kind": "email", "to": ["a@example.com"], "subject": "Report", "text": "Ready."}
    response = client.post("/v1/schedules", json={"cron": "*/10 * * * *", "job": email})
    assert response.status_code == 201, response.text
    schedule = response.json()
    assert (schedule["name"], schedule["timezone"], schedule["enabled"]) == ("", "UTC", True)
    assert schedule["missed_policy"] == "skip"
    assert schedule["job"] == email


@pytest.mark.parametrize(
    ("changes", "field", "mentions"),
    [
        ({"cron": "0 25 * * *"}, "cron", "out of range"),
        ({"cron": "every day at 3"}, "cron", "5 fields"),
        ({"cron": "0 0 30 2 *"}, "cron", "matches no date"),
        ({"cron": "H 3 * * *"}, "cron", "random (R) and hashed (H)"),
        ({"timezone": "Europe/Pariss"}, "timezone", "unknown time zone 'Europe/Pariss'"),
        ({"timezone": "europe/paris"}, "timezone", "did you mean 'Europe/Paris'?"),
        ({"job": {"url": "https://example.com/"}}, "job.kind", "must be one of: email, fetch"),
        ({"job": {"kind": "fetch", "url": "ftp://example.com/"}}, "job.url", "http"),
        ({"job": {"kind": "fetch"}}, "job", "give either url"),
        ({"job": {"kind": "email", "to": ["a@example.com"], "subject": "s"}}, "job", "text"),
        ({"missed_policy": "sometimes"}, "missed_policy", "'skip' or 'catch_up'"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"name": "a\nb"}, "name", "line breaks"),
    ],
)
def test_invalid_fields_are_422_with_the_reason(
    client: httpx.Client, changes: dict[str, Any], field: str, mentions: str
) -> None:
    response = client.post("/v1/schedules", json={**NIGHTLY_FEED, **changes})
    assert_refused(response, 422, "validation_error", mentions)
    assert field in [detail["field"] for detail in response.json()["error"]["details"]]
    assert client.get("/v1/schedules").json()["items"] == []


def test_a_transcode_schedule_is_refused_until_the_kind_exists(client: httpx.Client) -> None:
    response = client.post(
        "/v1/schedules", json={**NIGHTLY_FEED, "job": {"kind": "transcode", "url": "x"}}
    )
    assert_refused(
        response, 422, "job_kind_unavailable", "which this installation does not offer yet"
    )


def test_patch_validates_like_create(client: httpx.Client) -> None:
    schedule = create(client)
    path = f"/v1/schedules/{schedule['id']}"
    assert_refused(client.patch(path, json={"cron": "0 3 * *"}), 422, "validation_error", "has 4")
    assert_refused(
        client.patch(path, json={"timezone": "Nowhere"}), 422, "validation_error", "Nowhere"
    )
    assert_refused(client.patch(path, json={"cron": None}), 422, "validation_error", "cron")
    assert client.get(path).json() == schedule


def test_disabling_clears_next_fire_at_and_enabling_sets_it_again(client: httpx.Client) -> None:
    schedule = create(client)
    path = f"/v1/schedules/{schedule['id']}"
    disabled = client.patch(path, json={"enabled": False}).json()
    assert (disabled["enabled"], disabled["next_fire_at"]) == (False, None)
    assert client.get(path).json()["next_fire_at"] is None
    enabled = client.patch(path, json={"enabled": True}).json()
    assert enabled["next_fire_at"] == schedule["next_fire_at"]


def test_a_new_schedule_has_no_runs_and_no_jobs(client: httpx.Client) -> None:
    schedule = create(client)
    runs = client.get(f"/v1/schedules/{schedule['id']}/runs")
    assert runs.status_code == 200
    assert runs.json() == {"items": [], "next_cursor": None}
    jobs = client.get("/v1/jobs", params={"schedule_id": schedule["id"]})
    assert jobs.json() == {"items": [], "next_cursor": None}


def test_jobs_say_which_schedule_made_them(client: httpx.Client) -> None:
    job = client.post("/v1/fetches", json={"url": "https://example.com/"}).json()
    assert job["schedule_id"] is None
    assert_refused(
        client.get("/v1/jobs", params={"schedule_id": "nope"}), 422, "validation_error", ""
    )


def test_schedules_are_listed_newest_first_page_by_page(client: httpx.Client) -> None:
    made = [create(client, name=f"s{index}")["id"] for index in range(3)]
    first = client.get("/v1/schedules", params={"limit": 2}).json()
    rest = client.get("/v1/schedules", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in first["items"] + rest["items"]] == made[::-1]
    assert rest["next_cursor"] is None
    assert_refused(
        client.get("/v1/schedules", params={"cursor": "bm90fGEtY3Vyc29y"}),
        400,
        "invalid_cursor",
        "cursor",
    )


def test_another_tenant_cannot_see_or_touch_a_schedule(
    client: httpx.Client, api: Api, stack: Stack
) -> None:
    schedule = create(client)
    path = f"/v1/schedules/{schedule['id']}"
    with api.client(stack.create_key(f"other-{secrets.token_hex(3)}")) as other:
        assert_refused(other.get(path), 404, "schedule_not_found", schedule["id"])
        assert_refused(other.patch(path, json={"enabled": False}), 404, "schedule_not_found", "")
        assert_refused(other.delete(path), 404, "schedule_not_found", "")
        assert_refused(other.get(f"{path}/runs"), 404, "schedule_not_found", "")
        assert other.get("/v1/schedules").json()["items"] == []
    assert client.get(path).json() == schedule
