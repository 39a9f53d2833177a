"""Settling a batch on PostgreSQL: after the child's commit, without a second connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from sous_core import apikeys, batches, jobs
from sous_core.db.engine import make_engine
from sous_core.db.migrate import upgrade
from sous_core.db.models import Job
from sous_core.states import JobState
from support.stack import private_database

pytestmark = pytest.mark.integration


@pytest.fixture
def one_connection_engine() -> Iterator[Engine]:
    with private_database("sous_it") as url:
        upgrade(url)
        # One connection, a short wait for it: settling must not need a second one.
        engine = make_engine(url, pool_size=1, pool_timeout=2)
        yield engine
        engine.dispose()


def test_the_last_child_settles_its_batch_with_a_pool_of_one(one_connection_engine) -> None:
    with Session(one_connection_engine) as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        parent = Job(tenant_id=tenant.id, kind="fetch_batch", params={"urls": ["a", "b"]})
        session.add(parent)
        session.commit()
        jobs.transition(session, parent.id, JobState.RUNNING)
        batches.create_children(session, parent, "fetch", [{"url": "a"}, {"url": "b"}])
        session.commit()
        children = batches.children_in(session, parent.id, {JobState.PENDING})
        for child in children:
            jobs.transition(session, child.id, JobState.RUNNING)
            jobs.transition(session, child.id, JobState.SUCCEEDED, result={"n": 1})
            session.commit()  # each commit settles the batch once its connection is back
        done = jobs.get_job(session, parent.id)
        session.refresh(done)
    assert (done.state, done.children_finished, done.progress) == ("succeeded", 2, 100)
    assert done.result["succeeded"] == 2
