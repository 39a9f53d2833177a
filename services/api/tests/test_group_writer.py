"""The group writer: concurrent requests share batches and each gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from sous_api.group_writer import GroupWriter


class Doubler(GroupWriter[int, int]):
    """Doubles numbers, a batch at a time; refuses negative ones; 99 breaks the batch."""

    max_batch = 4

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []
        self.after: list[list[int | Exception]] = []

    async def write(self, items: list[int]) -> list[int | Exception]:
        self.seen.append(items)
        await asyncio.sleep(0.01)  # a write takes a while: others queue meanwhile
        if 99 in items:
            raise RuntimeError("the database went away")
        return [ValueError(f"{n} is negative") if n < 0 else 2 * n for n in items]

    def after_batch(self, outcomes: list[int | Exception]) -> None:
        self.after.append(outcomes)


def test_concurrent_items_share_batches_and_each_gets_its_own_result() -> None:
    async def run() -> tuple[Doubler, list[int | BaseException]]:
        writer = Doubler()
        results = await asyncio.gather(
            *(writer.put(n) for n in [1, 2, -3, 4, 5, 6, 7]), return_exceptions=True
        )
        return writer, results

    writer, results = asyncio.run(run())
    assert results[:2] == [2, 4]
    assert results[3:] == [8, 10, 12, 14]
    assert isinstance(results[2], ValueError)
    # All arrived before the writer ran: batches of at most 4, in order.
    assert writer.seen == [[1, 2, -3, 4], [5, 6, 7]]
    assert writer.batches == 2
    assert len(writer.after) == 2


def test_items_arriving_while_a_batch_is_written_form_the_next() -> None:
    async def run() -> Doubler:
        writer = Doubler()
        first = asyncio.ensure_future(writer.put(1))
        await asyncio.sleep(0.005)  # the writer has taken [1] and is writing it
        await asyncio.gather(first, *(writer.put(n) for n in [2, 3]))
        return writer

    assert asyncio.run(run()).seen == [[1], [2, 3]]


class Overlapping(Doubler):
    """Counts how many batches it is writing at the same moment."""

    def __init__(self, writers: int) -> None:
        super().__init__()
        self.writers = writers
        self.active = 0
        self.most_active = 0

    async def write(self, items: list[int]) -> list[int | Exception]:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await super().write(items)
        finally:
            self.active -= 1


@pytest.mark.parametrize(
    ("writers", "batches", "most_active"),
    [(1, [[1], [2, 3, 4, 5]], 1), (2, [[1], [2, 3], [4, 5]], 2)],
)
def test_up_to_writers_batches_are_written_at_once(
    writers: int, batches: list[list[int]], most_active: int
) -> None:
    async def run() -> tuple[Overlapping, list[int]]:
        writer = Overlapping(writers)
        first = asyncio.ensure_future(writer.put(1))
        await asyncio.sleep(0.003)  # [1] is being written
        second = [asyncio.ensure_future(writer.put(n)) for n in [2, 3]]
        await asyncio.sleep(0.003)  # with a second writer, [2, 3] is being written too
        results = await asyncio.gather(first, *second, writer.put(4), writer.put(5))
        return writer, results

    writer, results = asyncio.run(run())
    assert results == [2, 4, 6, 8, 10]
    assert writer.seen == batches
    assert writer.most_active == most_active


def test_an_item_put_just_as_the_writer_returns_is_still_written() -> None:
    class Gated(GroupWriter[int, int]):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def write(self, items: list[int]) -> list[int | Exception]:
            await self.gate.wait()
            return [2 * n for n in items]

    async def run() -> list[int]:
        writer = Gated()
        first = asyncio.ensure_future(writer.put(1))
        for _ in range(3):
            await asyncio.sleep(0)  # the writer took [1] and waits at the gate
        writer.gate.set()
        # Runs in the same loop turn as the writer's last step: after the writer has
        # returned, before the callback that forgets it.
        second = asyncio.ensure_future(writer.put(2))
        return await asyncio.wait_for(asyncio.gather(first, second), 1)

    assert asyncio.run(run()) == [2, 4]


def test_a_failed_write_fails_its_batch_only() -> None:
    async def run() -> list[int | BaseException]:
        writer = Doubler()
        first = asyncio.ensure_future(writer.put(1))
        await asyncio.sleep(0)
        rest = [writer.put(n) for n in [99, 3]]  # one batch, broken by 99
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        results.append(await writer.put(5))  # the writer goes on afterwards
        return results

    one, broken, with_it, after = asyncio.run(run())
    assert one == 2
    assert after == 10
    assert isinstance(broken, RuntimeError)
    assert broken is with_it


def test_waiting_items_can_be_refused_without_being_written() -> None:
    class RefusingAfterFirst(Doubler):
        """Writes a batch only once the test opens ``gate``; says when it is writing."""

        def __init__(self) -> None:
            super().__init__()
            self.writing = asyncio.Event()
            self.gate = asyncio.Event()

        async def write(self, items: list[int]) -> list[int | Exception]:
            self.writing.set()
            await self.gate.wait()
            return await super().write(items)

        def after_batch(self, outcomes: list[int | Exception]) -> None:
            self.refuse_waiting(lambda n: LookupError(f"refused {n}"))

    async def run() -> tuple[RefusingAfterFirst, list[int | BaseException]]:
        writer = RefusingAfterFirst()
        first = asyncio.ensure_future(writer.put(1))
        await writer.writing.wait()  # [1] is being written
        rest = [asyncio.ensure_future(writer.put(n)) for n in [2, 3]]
        await asyncio.sleep(0)  # 2 and 3 are waiting
        writer.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        return writer, results

    writer, results = asyncio.run(run())
    assert results[0] == 2
    assert [str(error) for error in results[1:]] == ["refused 2", "refused 3"]
    assert writer.seen == [[1]]


def test_a_writer_must_say_how_to_write() -> None:
    with pytest.raises(NotImplementedError):
        asyncio.run(GroupWriter[int, int]().put(1))
