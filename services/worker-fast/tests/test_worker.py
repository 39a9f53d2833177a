"""The fast worker's task wiring."""

from __future__ import annotations

import uuid

import pytest

from sous_core.errors import PermanentJobError
from sous_core.job_runner import JobContext
from sous_core.tasks import FETCH_TASK
from sous_worker_fast.worker import app, run_fetch


def test_fetch_task_is_registered_under_the_shared_name() -> None:
    assert FETCH_TASK in app.tasks
    assert app.amqp.router.route({}, FETCH_TASK)["queue"].name == "fast"


@pytest.mark.parametrize("params", [{}, {"url": "ftp://example.com/"}, {"url": 3}])
def test_bad_parameters_fail_the_job_permanently(params: dict) -> None:
    context = JobContext(job_id=uuid.uuid4(), kind="fetch", params=params, attempt=1)
    with pytest.raises(PermanentJobError) as caught:
        run_fetch(context)
    assert caught.value.code == "invalid_params"
