"""One writer for many concurrent requests: what arrives while a batch is written joins the next.

Group commit: each request hands over its item and waits for its own outcome; a writer
task takes everything that is waiting, writes it in one go, answers each request, and
goes on while more arrived meanwhile. Up to ``writers`` batches are written at once, so
one batch's round trips (a commit, a broker's confirms) overlap the next one's work. A
request that disconnects does not cancel the write of its item (the wait is shielded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupWriter(Generic[Item, Result]):
    """Collects items from concurrent requests; one writer task handles them in batches."""

    #: Items written in one batch at most.
    max_batch = 500
    #: Batches written at the same time at most.
    writers = 1

    def __init__(self) -> None:
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writing: set[asyncio.Task[None]] = set()
        #: Batches written so far.
        self.batches = 0

    async def put(self, item: Item) -> Result:
        """Wait until ``item`` is written; its result, or the exception it failed with."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        # done(), not the set's size: a writer that just returned is removed by a callback
        # that may not have run yet, and an item must never wait with no writer to take it.
        if sum(not writer.done() for writer in self._writing) < self.writers:
            writer = asyncio.create_task(self._write_batches())
            self._writing.add(writer)
            writer.add_done_callback(self._writing.discard)
        return await asyncio.shield(future)

    async def write(self, items: list[Item]) -> list[Result | Exception]:
        """Write a batch: one result (or exception) per item, in order. An exception
        raised here fails every item of the batch."""
        raise NotImplementedError

    def after_batch(self, outcomes: list[Result | Exception]) -> None:
        """Called once a batch's requests are answered."""

    def refuse_waiting(self, refusal: Callable[[Item], Exception]) -> None:
        """Fail every item still waiting (not yet in a batch) with ``refusal(item)``."""
        waiting, self._waiting = self._waiting, []
        for item, future in waiting:
            if not future.done():
                future.set_exception(refusal(item))

    async def _write_batches(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            outcomes: list[Result | Exception]
            try:
                outcomes = await self.write([item for item, _ in batch])
            except Exception as exc:  # each request answers for its own item
                outcomes = [exc] * len(batch)
            else:
                self.batches += 1
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            self.after_batch(outcomes)
