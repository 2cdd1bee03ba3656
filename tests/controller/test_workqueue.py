"""The work queue: one reconcile of a key at a time, at most N at once, failures retried with backoff, the
earliest ask to run a key later winning."""
import asyncio

from kiln.controller import workqueue
from kiln.controller.workqueue import WorkQueue


async def test_one_reconcile_of_a_key_at_a_time_and_no_more_keys_at_once_than_the_slots():
    queue, running, most, seen = WorkQueue(slots=2), set(), [0], []

    def work(key):
        async def reconcile():
            assert key not in running  # never twice at once
            running.add(key)
            most[0] = max(most[0], len(running))
            await asyncio.sleep(0.02)
            running.discard(key)
            seen.append(key)
        return reconcile

    await asyncio.gather(*[queue.process(key, work(key), lambda exc, delay: None)
                           for key in [("ns", "a"), ("ns", "a"), ("ns", "b"), ("ns", "c"), ("ns", "d")]])
    assert most[0] == 2 and sorted(seen) == [("ns", k) for k in "aabcd"]


async def test_a_failing_key_runs_again_after_a_doubling_delay_and_a_success_resets_it(monkeypatch):
    monkeypatch.setattr(workqueue, "RETRY_BASE", 0.01)
    queue, delays, outcomes = WorkQueue(slots=1), [], iter([OSError, OSError, OSError, None, OSError])
    done = asyncio.Event()

    async def reconcile():
        outcome = next(outcomes)
        if outcome:
            raise outcome("the API server is away")
        done.set()

    await queue.process(("ns", "a"), reconcile, lambda exc, delay: delays.append(delay))
    await asyncio.wait_for(done.wait(), 5)
    assert delays == [0.01, 0.02, 0.04]
    await queue.process(("ns", "a"), reconcile, lambda exc, delay: delays.append(delay))
    assert delays[-1] == 0.01  # counted afresh after the success
    queue.shut_down()


async def test_the_earliest_ask_to_run_a_key_later_wins_and_forget_cancels_it():
    queue, ran = WorkQueue(slots=1), []

    def run(name):
        async def go():
            ran.append(name)
        return go

    queue.after(("ns", "a"), 0.2, run("late"))
    queue.after(("ns", "a"), 0.02, run("early"))  # replaces the later one
    queue.after(("ns", "a"), 0.1, run("between"))  # later than the pending one: ignored
    queue.after(("ns", "b"), 0.02, run("forgotten"))
    queue.forget(("ns", "b"))
    await asyncio.sleep(0.3)
    assert ran == ["early"]
