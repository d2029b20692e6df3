import stat

from node.accounting import Accountant
from node.identity import NodeIdentity, friendly_name
from node.outbox import Outbox
from node.reporter import RESEND_SECONDS, due_for_sending


def test_sequence_numbers_survive_restarts_and_never_repeat(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    assert [outbox.next_seq() for _ in range(3)] == [1, 2, 3]
    outbox.add(3, "t", b"payload")
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")
    assert reopened.next_seq() == 4
    assert reopened.pending() == [(3, "t", b"payload")]
    reopened.add(4, "t", b"later")
    assert reopened.acknowledge_through(3) == 1
    assert [seq for seq, _, _ in reopened.pending()] == [4]


def test_accountant_closes_epochs_and_discards_stale_work():
    accountant = Accountant()
    accountant.add_batch(256, 0.1, 2.0)
    accountant.add_batch(256, 0.2, 1.0)
    closed = accountant.close_epoch(epoch=4, group_size=3)
    assert (closed.epoch, closed.samples, closed.loss, closed.group_size) == (4, 512, 1.5, 3)
    assert abs(closed.compute_seconds - 0.3) < 1e-9
    accountant.add_batch(128, 0.1, 1.0)
    accountant.discard()
    assert accountant.close_epoch(epoch=5, group_size=1).samples == 0
    assert (accountant.total_samples, accountant.discarded_samples) == (512, 128)


def test_a_diverged_loss_is_reported_as_unknown_and_the_work_still_counts():
    for loss in (float("nan"), float("inf"), 1e31):  # the protocol refuses these (|loss| <= 1e30, finite)
        accountant = Accountant()
        accountant.add_batch(64, 0.1, loss)
        closed = accountant.close_epoch(epoch=1, group_size=1)
        assert closed.loss is None and closed.samples == 64, loss


def test_identity_is_created_once_with_private_files(tmp_path):
    first = NodeIdentity.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    assert NodeIdentity.load_or_create(tmp_path).node_id == first.node_id
    assert first.registered_name() is None
    first.remember("ada", None)
    assert NodeIdentity.load_or_create(tmp_path).registered_name() == "ada"
    assert friendly_name().count("-") == 2


def test_a_report_due_again_is_re_sent_with_every_report_after_it_in_order():
    now = 1000.0
    # 8 was sent before the broker came back, 9 and 10 since; 11 is new: 8's re-send takes all of them along, so
    # the coordinator never sees 11 again while 9 and 10 are still missing (it would release 11 over the gap)
    sent_at = {8: now - RESEND_SECONDS, 9: now - 5, 10: now - 1}
    assert due_for_sending([8, 9, 10, 11], sent_at, now) == [8, 9, 10, 11]
    # nothing due again: only the new report goes out
    assert due_for_sending([8, 9, 10, 11], sent_at, now - 1) == [11]
    assert due_for_sending([8, 9, 10], sent_at, now - 1) == []
    assert due_for_sending([], {}, now) == []
