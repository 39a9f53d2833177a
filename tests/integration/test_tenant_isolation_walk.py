"""Every ``/v1`` route, walked with another tenant's key: the owner's ids are not found.

The routes come from the API's own OpenAPI description, so a new route is walked without
anyone remembering to add it; a route with a path parameter this test cannot fill fails
it until it is taught how.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from support.stack import Api, Origin, Stack, wait_for_job

pytestmark = pytest.mark.integration

#: Bodies sent to routes that take one (valid enough to reach the ownership check).
BODIES = {"PATCH": {"enabled": False}, "POST": {}}


def v1_operations(api: Api) -> list[tuple[str, str]]:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        if path.startswith("/v1/")
        for method in item
    )


def fill(path: str, ids: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)}", path)
    unknown = [name for name in names if name not in ids]
    assert not unknown, f"{path}: teach this test which id to use for {unknown}"
    return path.format(**{name: ids[name] for name in names})


def anonymized(response: httpx.Response, ids: dict[str, str]) -> str:
    text = response.text
    for value in ids.values():
        text = text.replace(value, "<id>")
    return text


def request(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body: Any = BODIES.get(method)
    return client.request(method, path, json=body) if body is not None else client.get(path)


def test_another_tenants_ids_answer_404_on_every_route(
    stack: Stack, api: Api, origin: Origin
) -> None:
    alice_key, bob_key = stack.create_key("alice-walk"), stack.create_key("bob-walk")
    with (
        api.client(alice_key) as alice,
        api.client(bob_key) as bob,
        api.client() as anonymous,
    ):
        job = alice.post("/v1/fetches", json={"url": f"{origin.url}/ok", "store_body": True})
        job_id = job.json()["id"]
        assert wait_for_job(alice, job_id, {"succeeded", "failed"})["state"] == "succeeded"
        schedule = alice.post(
            "/v1/schedules",
            json={"cron": "0 3 * * *", "job": {"kind": "fetch", "url": f"{origin.url}/ok"}},
        )
        assert schedule.status_code == 201, schedule.text
        schedule_id = schedule.json()["id"]
        alices = {"job_id": job_id, "schedule_id": schedule_id, "name": "index.m3u8"}
        nobodys = {**alices, "job_id": str(uuid.uuid4()), "schedule_id": str(uuid.uuid4())}

        walked = 0
        for method, template in v1_operations(api):
            unauthenticated = request(anonymous, method, fill(template, alices))
            assert unauthenticated.status_code == 401, f"{method} {template}"
            if "{" not in template:
                continue
            path = fill(template, alices)
            foreign = request(bob, method, path)
            missing = request(bob, method, fill(template, nobodys))
            assert foreign.status_code == 404, f"{method} {template}: {foreign.text}"
            # Exactly what an id that does not exist gets: nothing tells the ids apart.
            assert anonymized(foreign, alices) == anonymized(missing, nobodys), template
            if method == "GET":
                owners = request(alice, method, path)
                assert owners.content != foreign.content, f"{method} {template}"
            walked += 1
        assert walked >= 10

        # Lists and filters name none of Alice's ids to Bob.
        for path, params in (
            ("/v1/jobs", {}),
            ("/v1/jobs", {"parent_id": job_id}),
            ("/v1/jobs", {"schedule_id": schedule_id}),
            ("/v1/schedules", {}),
        ):
            listed = bob.get(path, params=params)
            assert listed.status_code == 200
            assert listed.json()["items"] == []

        # Bob's cancel, PATCH and DELETE changed nothing of Alice's.
        assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
        kept = alice.get(f"/v1/schedules/{schedule_id}")
        assert kept.status_code == 200
        assert kept.json()["enabled"] is True
