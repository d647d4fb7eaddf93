"""balance.may_accept and AcceptShare: how --workers N spread the connections of one listening socket."""

from __future__ import annotations

from nonstop.proxy.balance import GONE, AcceptShare, may_accept


def test_a_worker_takes_the_next_connection_while_it_holds_no_more_than_the_fewest_plus_slack():
    assert may_accept([0, 0], 0) and may_accept([1, 0], 0) and not may_accept([2, 0], 0)
    assert may_accept([2, 0], 1)  # the other one takes it
    assert may_accept([5, 4, 9], 0, slack=1) and not may_accept([6, 4, 9], 0, slack=1)
    # a worker that is not running (or not started yet) is never the fewest: nobody waits for it
    assert may_accept([7, GONE], 0) and may_accept([GONE, GONE, 3], 2)


def test_the_table_is_shared_through_its_fd_and_starts_gone():
    sup = AcceptShare.create(2)
    try:
        assert sup.counts() == [GONE, GONE]
        worker = AcceptShare.from_env(sup.env_value(1))
        worker.set(worker.index, 3)
        assert sup.counts() == [GONE, 3] and worker.index == 1 and worker.workers == 2
        worker.close()
    finally:
        sup.close()
