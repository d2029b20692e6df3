"""The per-node ordering of reports before the ledger (coordinator/sequencer.py), on a fake clock."""

from coordinator.sequencer import Sequencer


class Node:
    """The ledger's side: last_seq advances as released reports are accepted."""

    def __init__(self):
        self.last_seq = 0

    def accept(self, released: list[int]) -> list[int]:
        for seq in released:
            if seq > self.last_seq:
                self.last_seq = seq
        return released


def make() -> tuple[Sequencer, Node]:
    node = Node()
    return Sequencer(lambda node_id: node.last_seq, hold_seconds=2.0), node


def test_in_order_reports_pass_at_once_and_a_filled_gap_releases_the_held_ones_in_order():
    sequencer, node = make()
    assert node.accept(sequencer.offer("n", 1, 1, now=0.0)) == [1]
    assert sequencer.offer("n", 3, 3, now=0.1) == [] and sequencer.offer("n", 4, 4, now=0.1) == []
    assert node.accept(sequencer.offer("n", 2, 2, now=0.2)) == [2, 3, 4]
    assert len(sequencer) == 0
    assert sequencer.offer("n", 2, "replay", now=0.3) == ["replay"]  # decided (and refused) at once


def test_a_gap_is_given_up_only_after_the_hold_and_once_every_receiver_caught_up():
    sequencer, node = make()
    node.accept(sequencer.offer("n", 1, 1, now=0.0))
    assert sequencer.offer("n", 3, 3, now=1.0) == []
    assert sequencer.expire(now=2.5, caught_up=2.5) == [] and len(sequencer) == 1  # held for less than 2 s
    assert sequencer.expire(now=10.0, caught_up=0.5) == [] and len(sequencer) == 1  # a slow worker may hold seq 2
    assert sequencer.expire(now=10.0, caught_up=10.0) == [] and len(sequencer) == 0  # dropped, unreceipted
    assert sequencer.dropped == 1
    assert node.last_seq == 1  # the receipt still says 1: the node's outbox sends 2 and 3 again


def test_a_report_dropped_twice_over_the_same_gap_is_released_the_node_skipped_a_number():
    sequencer, node = make()
    node.accept(sequencer.offer("n", 1, 1, now=0.0))
    sequencer.offer("n", 3, 3, now=0.0)
    sequencer.expire(now=5.0, caught_up=5.0)
    assert sequencer.offer("n", 3, 3, now=20.0) == [] and sequencer.offer("n", 4, 4, now=20.0) == []
    assert node.accept(sequencer.expire(now=25.0, caught_up=25.0)) == [3, 4]
    assert node.last_seq == 4 and len(sequencer) == 0


def test_a_gap_of_one_node_holds_only_that_node():
    last = {"a": 0, "b": 0}
    sequencer = Sequencer(lambda node_id: last[node_id], hold_seconds=2.0)
    assert sequencer.offer("a", 2, "a2", now=0.0) == []
    assert sequencer.offer("b", 1, "b1", now=0.0) == ["b1"]
    assert sequencer.next_deadline() == 2.0
    assert sequencer.offer("a", 1, "a1", now=0.5) == ["a1", "a2"]
    assert sequencer.next_deadline() is None
