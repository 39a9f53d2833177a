"""Exchange and queue declarations: one queue per class of work, plus the dead letters."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

HEAVY_QUEUE = "heavy"
FAST_QUEUE = "fast"
MAINTENANCE_QUEUE = "maintenance"
DEAD_LETTER_QUEUE = "dead_letter"
#: A second copy of every dead letter, consumed by workers to mark its job failed.
DEAD_LETTER_JOBS_QUEUE = "dead_letter.jobs"

WORK_QUEUES = (HEAVY_QUEUE, FAST_QUEUE, MAINTENANCE_QUEUE)

#: Topic, not direct: Celery's native delayed delivery (retries with a countdown on
#: quorum queues) only works through topic exchanges.
TASK_EXCHANGE = Exchange("sous", type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("sous.dead", type="fanout", durable=True)


def work_queue(name: str, max_deliveries: int) -> Queue:
    """A durable quorum queue that dead-letters a message after ``max_deliveries`` deliveries.

    Quorum queues count deliveries themselves (``x-delivery-limit``), so a task that
    kills its worker every time is parked in ``dead_letter`` instead of looping forever.
    """
    return Queue(
        name,
        TASK_EXCHANGE,
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            # RabbitMQ dead-letters once returns exceed the limit: deliveries = limit + 1.
            "x-delivery-limit": max_deliveries - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
        },
    )


def dead_letter_queue(name: str = DEAD_LETTER_QUEUE) -> Queue:
    """``dead_letter`` keeps dead letters for operators; ``dead_letter.jobs`` feeds workers."""
    return Queue(
        name,
        DEAD_LETTER_EXCHANGE,
        routing_key="#",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def task_queues(max_deliveries: int) -> tuple[Queue, ...]:
    """The queues Celery routes tasks to.

    ``dead_letter`` is deliberately not among them: Celery binds every task queue's
    exchange to its delayed-delivery exchange, which would copy each retry into a
    fanout dead-letter exchange.
    """
    return tuple(work_queue(name, max_deliveries) for name in WORK_QUEUES)


def declare_topology(connection: Connection, max_deliveries: int) -> None:
    """Declare every exchange and queue (idempotent), dead letters included."""
    with connection.channel() as channel:
        dead_letters = (dead_letter_queue(), dead_letter_queue(DEAD_LETTER_JOBS_QUEUE))
        for queue in (*task_queues(max_deliveries), *dead_letters):
            queue.bind(channel).declare()
