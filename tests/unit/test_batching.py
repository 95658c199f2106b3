"""Batch formation: nothing waits for company, batches stay within their limit and order."""

from inference_worker.core.batching import take_batches


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
