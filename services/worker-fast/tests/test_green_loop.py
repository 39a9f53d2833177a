"""The fast worker's fix for Celery's 0.1 s wait per message on green pools."""

from __future__ import annotations

import inspect

from celery.worker import loops

from sous_worker_fast import green_loop


def nested_names(code) -> set[str]:  # type: ignore[no-untyped-def]
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= nested_names(const)
    return names


def test_celery_loop_still_drains_events_through_the_patched_function() -> None:
    # If Celery stops calling loops._quick_drain, this patch is dead and must go.
    assert "_quick_drain" in nested_names(loops.synloop.__code__)


def test_worker_module_installs_the_non_blocking_drain() -> None:
    import sous_worker_fast.worker  # noqa: F401 - importing installs it

    assert loops._quick_drain is green_loop.drain_without_waiting
    assert inspect.signature(loops._quick_drain).parameters["timeout"].default == 0
