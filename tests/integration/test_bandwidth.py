"""Bandwidth modes end to end: two 2-peer swarms train at once (int8, and local updates), their nodes report each
epoch's averaging bytes, and the coordinator's ledger shows what each mode costs next to fp32."""

import pytest

from hearth.processes import wait_until
from hearth.tasks import load_task
from tests.conftest import run_hearth

pytestmark = pytest.mark.swarm

TARGET_BATCH = 4096  # spirals: 16 batches of 256 per epoch, swarm-wide
LOCAL_EVERY = 4  # local updates: the state is averaged every this many epochs
MODES = {
    "int8": ("--compression", "int8", "--average-state-every", "1"),  # the state in every epoch's bytes, as fp32's
    "local": ("--local-updates", "--average-state-every", str(LOCAL_EVERY)),
}
WINDOW = {"int8": 2, "local": LOCAL_EVERY}  # the latest epochs both peers reported, averaged together


def test_int8_and_local_updates_cut_the_bytes_per_sample(coordinator, nodes):
    for mode, options in MODES.items():
        swarm_id = f"bandwidth-{mode}"
        created = run_hearth("swarm", "create", swarm_id, "--task", "spirals", "--target-batch-size", str(TARGET_BATCH),
                             "--coordinator", coordinator.url, "--token-file",
                             str(coordinator.data_dir / "operator-token"), *options, timeout=120)  # fmt: skip
        assert created.returncode == 0, created.stderr
        for peer in ("a", "b"):
            nodes.start(coordinator.url, f"bw-{mode}-{peer}", "--swarm", swarm_id)
    try:
        windows = {mode: _wait_for_window(coordinator, mode) for mode in MODES}
    finally:
        nodes.stop_all()

    # fp32, exactly as node/bandwidth.py counts it (tests/node/test_bandwidth.py: payload + < 1 %): every epoch
    # each of the 2 peers sends 4 bytes per value of gradients and of the state (parameters, two Adam moments).
    parameters = sum(param.numel() for param in load_task("spirals").build_model().parameters())
    fp32_per_epoch = 2 * 4 * (parameters + 3 * parameters)
    per_epoch = {mode: sum(r["bytes_sent"] for r in reports) / WINDOW[mode] for mode, reports in windows.items()}
    # At the same samples per epoch (the same target batch), bytes per sample shrink by the same factors.
    # int8: 8 bits a value plus a 1 KiB codebook per part (and fp16 for the small tensors)
    assert 0.25 <= per_epoch["int8"] / fp32_per_epoch <= 0.27, per_epoch
    # local updates: no gradients, and the state once per LOCAL_EVERY epochs: 3 / (4 × LOCAL_EVERY)
    expected_local = 3 / (4 * LOCAL_EVERY)
    assert expected_local <= per_epoch["local"] / fp32_per_epoch <= 1.02 * expected_local, per_epoch
    state_round = [r for r in windows["local"] if r["bytes_sent"] > 0]
    assert [r["group_size"] for r in state_round] == [2, 2] and state_round[0]["epoch"] % LOCAL_EVERY == LOCAL_EVERY - 1
    for reports in windows.values():  # both trained and both averaged (on a loaded machine one may add one batch only)
        assert all(r["samples"] > 0 and r["bytes_received"] > 0 for r in reports if r["bytes_sent"])


def _wait_for_window(coordinator, mode: str) -> list[dict]:
    seen = {}
    try:
        return wait_until(lambda: _window(coordinator, mode, seen), 400, interval=1.0,
                          what=f"{WINDOW[mode]} clean epochs of the {mode} swarm with both peers")  # fmt: skip
    except TimeoutError as e:
        shown = {peer: [(r["epoch"], r["group_size"], r["samples"], r["bytes_sent"]) for r in reports.values()]
                 for peer, reports in seen.items()}  # fmt: skip
        raise AssertionError(f"{e}; (epoch, group, samples, bytes sent) so far: {shown}") from None


def _window(coordinator, mode: str, seen: dict):
    """Both peers' reports of the latest WINDOW[mode] consecutive epochs they both reported, once there are
    that many without a state download (a peer that fell behind, the coordinator's checkpoint: a whole fp32
    state in some epoch, sent by one peer only); for int8, epochs both averaged together."""
    reports = {}
    for peer in ("a", "b"):
        found = coordinator.api.get(f"/api/v1/volunteers/bw-{mode}-{peer}/reports")
        if found.status_code != 200:
            return None
        # every epoch's first report: its bytes are what the node counted, whatever credit the work check gave it
        firsts = [r for r in found.json()["reports"] if not (r["reason"] or "").startswith("duplicate_epoch")]
        reports[peer] = {r["epoch"]: r for r in firsts}
    seen.update(reports)
    common = sorted(set(reports["a"]) & set(reports["b"]))[1:]  # the first may carry the joiner's download
    if mode == "int8":
        common = [e for e in common if reports["a"][e]["group_size"] == reports["b"][e]["group_size"] == 2]
    size = WINDOW[mode]
    if len(common) < size or common[-size:] != list(range(common[-1] - size + 1, common[-1] + 1)):
        return None
    window = [reports[peer][epoch] for epoch in common[-size:] for peer in ("a", "b")]
    sent = [r["bytes_sent"] for r in window]
    if mode == "local":  # one state round, not a state download served in the same epoch
        sent = [count for count in sent if count > 0]
        if len(sent) != 2:
            return None
    if max(sent) > 1.05 * min(sent):  # without downloads each peer sends as much as the other
        return None
    return window
