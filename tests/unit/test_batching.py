"""Batch formation (nothing waits for company, batches stay within their limit and order), which
acknowledgements travel as one `multiple` ack, and task bodies decoded as kombu decodes them."""

import logging
import pickle
from datetime import datetime
from types import SimpleNamespace

import amqp.exceptions
import kombu
import kombu.utils.json
import pytest
from billiard.exceptions import WorkerLostError
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message

from inference_worker.core.batching import AckRanges, fair_limit, take_batches
from inference_worker.serving.batching import BatchingStrategy, BatchLimits, decode_body


def test_a_lone_job_goes_at_once_when_a_process_is_free():
    waiting = [1]
    assert take_batches(waiting, free_slots=2, limit=16, alone=lambda _: False) == [[1]]
    assert waiting == []


def test_nothing_starts_while_every_process_is_busy():
    waiting = [1, 2, 3]
    assert take_batches(waiting, free_slots=0, limit=16, alone=lambda _: False) == []
    assert waiting == [1, 2, 3]


def test_waiting_jobs_form_batches_up_to_the_limit_in_arrival_order():
    waiting = list(range(10))
    batches = take_batches(waiting, free_slots=1, limit=4, alone=lambda _: False)
    assert batches == [[0, 1, 2, 3]]
    assert waiting == [4, 5, 6, 7, 8, 9]
    batches = take_batches(waiting, free_slots=2, limit=4, alone=lambda _: False)
    assert batches == [[4, 5, 6, 7], [8, 9]]
    assert waiting == []


def test_a_job_that_must_go_alone_gets_a_batch_of_its_own():
    waiting = ["a", "T", "b", "c"]
    batches = take_batches(waiting, free_slots=3, limit=16, alone=lambda x: x == "T")
    assert batches == [["a", "b", "c"], ["T"]]
    assert waiting == []
    waiting = ["T", "a"]
    assert take_batches(waiting, 1, 16, lambda x: x == "T") == [["T"]]
    assert waiting == ["a"]


def test_a_batch_stops_before_its_captures_pass_the_budget_and_keeps_the_order():
    waiting = [5, 5, 5, 20, 1, 1]
    batches = take_batches(waiting, 1, limit=16, alone=lambda _: False, size=int, budget=16)
    assert batches == [[5, 5, 5]]  # 20 would pass the budget; the small ones behind it wait
    assert waiting == [20, 1, 1]
    batches = take_batches(waiting, 2, limit=16, alone=lambda _: False, size=int, budget=16)
    assert batches == [[20], [1, 1]]  # larger than the budget: it still runs, alone
    assert waiting == []


def test_the_budget_and_the_limit_both_hold():
    waiting = [1] * 10
    batches = take_batches(waiting, 3, limit=4, alone=lambda _: False, size=int, budget=3)
    assert batches == [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert waiting == [1]


def test_a_burst_is_shared_among_the_processes_and_a_backlog_keeps_batches_full():
    # two lone jobs running, 68 waiting: each process gets about half, not 64 and 4
    assert fair_limit(68, running=1, processes=2, limit=64) == 35
    assert fair_limit(33, running=35, processes=2, limit=64) == 34
    # a backlog of two batches a process (the prefetch window): full batches
    assert fair_limit(128, running=64, processes=2, limit=64) == 64
    assert fair_limit(1, running=0, processes=2, limit=64) == 1
    assert fair_limit(0, running=0, processes=0, limit=64) == 1


def received(*tags: int) -> AckRanges:
    ranges = AckRanges()
    for tag in tags:
        ranges.received(tag)
    return ranges


def test_a_batch_with_no_older_message_waiting_is_acknowledged_in_one_frame():
    ranges = received(1, 2, 3, 4)
    assert ranges.plan([1, 2, 3], []) == (3, [])
    assert ranges.unsettled == {4}


def test_a_multiple_ack_never_reaches_over_a_message_still_in_another_batch():
    ranges = received(*range(1, 9))  # batch A holds 1-4, batch B 5-8
    assert ranges.plan([5, 6, 7, 8], []) == (None, [5, 6, 7, 8])  # A still waits
    assert ranges.plan([1, 2, 3, 4], []) == (4, [])  # nothing older waits now


def test_the_part_of_a_batch_above_an_older_waiting_message_is_acknowledged_one_by_one():
    ranges = received(*range(1, 7))
    assert ranges.plan([1, 2, 4, 5], []) == (2, [4, 5])  # 3 still waits
    assert ranges.unsettled == {3, 6}


def test_a_reject_sent_first_does_not_stop_the_range_and_a_waiting_one_does():
    ranges = received(1, 2, 3, 4)
    assert ranges.plan([1, 3, 4], [2]) == (4, [])  # 2 rejected before the ack: settled
    ranges = received(1, 2, 3, 4)
    ranges.forget(1)  # refused on arrival, settled elsewhere
    assert ranges.plan([2, 3], []) == (3, [])
    assert ranges.plan([], [4]) == (None, [])


def test_a_lone_ack_travels_alone():
    assert received(1, 2).plan([1], []) == (None, [1])
    assert received(1, 2).plan([2], []) == (None, [2])


def test_no_multiple_ack_reaches_over_a_delivery_handled_elsewhere():
    ranges = received(1, 2, 4, 5)  # tag 3 was handled elsewhere and may still be unsettled
    assert ranges.plan([4, 5], []) == (None, [4, 5])
    assert ranges.plan([1, 2], []) == (2, [])
    ranges.received(6)
    ranges.received(7)
    assert ranges.plan([6, 7], []) == (None, [6, 7])


def kombu_message(body: bytes, content_type: str = "application/json") -> Message:
    return Message(
        body=body, content_type=content_type, content_encoding="utf-8", accept={"application/json"}
    )


def test_a_json_task_body_decodes_as_kombu_decodes_it_typed_values_included():
    body = kombu.utils.json.dumps([[{"job_id": "a", "at": datetime(2026, 1, 2)}], {}, {}])
    assert decode_body(kombu_message(body.encode())) == kombu_message(body.encode()).decode()
    assert decode_body(kombu_message(body.encode()))[0][0]["at"] == datetime(2026, 1, 2)


def test_a_body_kombu_refuses_is_refused_the_same_way():
    with pytest.raises(ContentDisallowed):
        decode_body(kombu_message(pickle.dumps([1]), "application/x-python-serialize"))
    with pytest.raises(DecodeError):
        decode_body(kombu_message(b"[1, 2"))


class FakeChannel:
    """Records the frames the strategy sends (pure logic: no broker)."""

    no_ack_consumers = None

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.frames.append(("reject", tag, requeue))


class FakePool:
    limit = 1

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def apply_async(self, target, args, callback, error_callback, **_):
        self.calls.append({"items": args[0], "done": callback, "lost": error_callback})


def test_a_lost_batch_rejected_whole_does_not_stop_later_batches_travelling_in_one_frame():
    channel, pool = FakeChannel(), FakePool()
    consumer = SimpleNamespace(pool=pool, connection_errors=(), event_dispatcher=None)
    strategy = BatchingStrategy(consumer, "t", BatchLimits(8, 1 << 30, None, None), print)
    body = kombu.utils.json.dumps([[{"job_id": "j"}], {}, {}]).encode()
    for tag in range(1, 6):
        message = kombu_message(body)
        message.channel, message.delivery_tag = channel, tag
        strategy(message, None, None, None, None)
    # tag 1 went alone to the idle process; 2-5 wait for it
    pool.calls[0]["lost"](WorkerLostError("killed"))  # 1 rejected; 2-5 start together
    pool.calls[1]["done"]([("ack", None)] * 4)
    assert channel.frames == [("reject", 1, True), ("ack", 5, True)]


class TwoProcessPool(FakePool):
    limit = 2


def test_the_strategy_spreads_a_burst_over_its_processes_in_arrival_order():
    channel, pool = FakeChannel(), TwoProcessPool()
    consumer = SimpleNamespace(pool=pool, connection_errors=(), event_dispatcher=None)
    strategy = BatchingStrategy(consumer, "t", BatchLimits(64, 1 << 30, None, None), print)
    for tag in range(1, 71):
        body = kombu.utils.json.dumps([[{"job_id": f"j{tag}"}], {}, {}]).encode()
        message = kombu_message(body)
        message.channel, message.delivery_tag = channel, tag
        strategy(message, None, None, None, None)
    # the first two went alone to the idle processes; 68 wait for them
    assert [len(call["items"]) for call in pool.calls] == [1, 1]
    pool.calls[0]["done"]([("ack", None)])
    pool.calls[1]["done"]([("ack", None)])
    sizes = [len(call["items"]) for call in pool.calls[2:]]
    assert sizes == [35, 33]
    ids = [item[0]["job_id"] for call in pool.calls for item in call["items"]]
    assert ids == [f"j{tag}" for tag in range(1, 71)]
    assert strategy.running == 68
    pool.calls[2]["done"]([("ack", None)] * 35)
    pool.calls[3]["lost"](WorkerLostError("killed"))
    assert strategy.running == 0 and strategy.in_flight == 0


class GoneChannel(FakeChannel):
    """A channel whose connection has gone: every frame fails as py-amqp fails it."""

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        raise amqp.exceptions.RecoverableConnectionError("connection already closed")

    def basic_reject(self, tag: int, requeue: bool) -> None:
        raise amqp.exceptions.RecoverableConnectionError("connection already closed")


def test_messages_of_a_gone_connection_are_left_in_one_line_and_the_new_one_settles(caplog):
    """After a lost connection the batches in flight finish with messages of the old channel:
    kombu logged each unsettled message as critical with its traceback."""
    gone, channel, pool = GoneChannel(), FakeChannel(), FakePool()
    errors = kombu.Connection("amqp://").connection_errors  # py-amqp's, as a worker has them
    consumer = SimpleNamespace(pool=pool, connection_errors=errors, event_dispatcher=None)
    strategy = BatchingStrategy(consumer, "t", BatchLimits(8, 1 << 30, None, None), print)
    body = kombu.utils.json.dumps([[{"job_id": "j"}], {}, {}]).encode()
    for on, tag in [(gone, 1), (gone, 2), (channel, 1), (channel, 2)]:
        message = kombu_message(body)
        message.channel, message.delivery_tag = on, tag
        strategy(message, None, None, None, None)
    # 1 of the gone channel went alone; the other three wait for it, then go together
    with caplog.at_level(logging.INFO, logger="inference_worker.serving.batching"):
        pool.calls[0]["done"]([("ack", None)])
        pool.calls[1]["done"]([("requeue", None), ("ack", None), ("ack", None)])
    assert channel.frames == [("ack", 2, True)]
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            f"{n} of {m} messages not settled: the broker connection they came on is "
            "gone (connection already closed); RabbitMQ delivers "
            "them again",
            None,
        )
        for n, m in [(1, 1), (1, 3)]
    ]
