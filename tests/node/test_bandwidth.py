"""Bandwidth modes (the swarm's compression and local-updates settings → hivemind.Optimizer arguments) and the
traffic count, checked on a real all-reduce between two averagers on 127.0.0.1."""

import multiprocessing
from functools import partial

import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.compression import (
    CompressionInfo,
    Float16Compression,
    NoCompression,
    deserialize_torch_tensor,
)
from hivemind.dht import DHT
from hivemind.proto import runtime_pb2

from node.bandwidth import (
    INT8_MIN_VALUES,
    TrafficCounter,
    TrafficCounting,
    compression_for,
    optimizer_options,
)
from protocol.messages import Hyperparameters


def hyperparameters(**overrides) -> Hyperparameters:
    return Hyperparameters(target_batch_size=1024, batch_size=32, learning_rate=1e-3, matchmaking_time=2.0,
                           averaging_timeout=30.0, **overrides)  # fmt: skip


def encode(compression, tensor: torch.Tensor) -> runtime_pb2.Tensor:
    return compression.compress(tensor, CompressionInfo.from_tensor(tensor))


def test_compression_names_map_to_hivemind_codecs():
    assert isinstance(compression_for("none"), NoCompression)
    assert isinstance(compression_for("fp16"), Float16Compression)
    int8 = compression_for("int8")
    small, large = torch.randn(INT8_MIN_VALUES - 1), torch.randn(INT8_MIN_VALUES)
    assert encode(int8, small).compression == runtime_pb2.CompressionType.FLOAT16
    assert encode(int8, large).compression == runtime_pb2.CompressionType.UNIFORM_8BIT
    with pytest.raises(ValueError, match="none, fp16 or int8"):
        compression_for("int4")


def test_int8_tensors_decode_through_hiveminds_table():
    """Peers decode by the message's type through hivemind's global table, where the NumPy fix is installed."""
    tensor = torch.randn(100_000)
    message = encode(compression_for("int8"), tensor)
    assert len(message.buffer) == 8 + 256 * 4 + tensor.numel()  # codebook length, codebook, one byte per value
    restored = deserialize_torch_tensor(message)
    assert restored.shape == tensor.shape
    step = 6 * tensor.std() / 256  # 256 levels over ±3σ
    assert (restored - tensor).abs().median() < step


def test_gradient_averaging_modes():
    factory = partial(dict)
    options = optimizer_options(hyperparameters(compression="int8"), factory)
    assert options["grad_averager_factory"] is factory and options["reuse_grad_buffers"] is True
    assert options["use_local_updates"] is False
    assert options["grad_compression"] is options["state_averaging_compression"]
    assert isinstance(options["load_state_compression"], NoCompression)  # a joiner starts exactly at its donor


def test_local_updates_mode():
    options = optimizer_options(hyperparameters(local_updates=True, average_state_every=50, compression="fp16"), dict)
    assert options["use_local_updates"] is True
    # hivemind refuses a gradient averager factory and gradient buffer reuse with local updates
    assert options["grad_averager_factory"] is None and options["reuse_grad_buffers"] is False
    assert isinstance(options["state_averaging_compression"], Float16Compression)


def test_state_averager_keeps_hiveminds_rpc_names():
    """Peers on other versions and the coordinator's checkpoint downloads call TrainingStateAverager's handlers."""
    from hivemind.optim.state_averager import TrainingStateAverager

    from node.swarm import RecordingStateAverager

    for method in ("rpc_download_state", "rpc_aggregate_part", "rpc_join_group"):
        assert RecordingStateAverager._get_handle_name("run_state_averager", method) == \
            TrainingStateAverager._get_handle_name("run_state_averager", method)  # fmt: skip


def _add_in_child(counter: TrafficCounter) -> None:
    counter.add(sent=1000, received=10)


def test_traffic_counter_sums_across_processes():
    counter = TrafficCounter()
    counter.add(sent=5)
    child = multiprocessing.get_context("fork").Process(target=_add_in_child, args=(counter,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert counter.totals() == (1005, 10)
    assert counter.take() == (1005, 10)
    counter.add(received=7)
    assert counter.take() == (0, 7)


class CountingAverager(TrafficCounting, DecentralizedAverager):
    pass


@pytest.fixture(scope="module")
def two_dhts():
    first = DHT(start=True)
    second = DHT(start=True, initial_peers=first.get_visible_maddrs())
    try:
        yield first, second
    finally:
        second.shutdown()
        first.shutdown()


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_counts_every_byte_of_an_all_reduce(two_dhts, mode):
    """Both sides of both directions: what one peer sent, the other received, byte for byte; and the count is
    the payload (each peer ships half the vector out as its part, and half back as averaged deltas) plus
    protobuf fields of under 1 %."""
    values = 200_000
    counters = [TrafficCounter(), TrafficCounter()]
    averagers = [
        CountingAverager(averaged_tensors=[torch.randn(values)], dht=dht, prefix=f"count-{mode}", target_group_size=2,
                         min_matchmaking_time=2.0, request_timeout=1.0, compression=compression_for(mode),
                         traffic=counter, start=True)
        for dht, counter in zip(two_dhts, counters)
    ]  # fmt: skip
    try:
        controls = [averager.step(wait=False, timeout=60) for averager in averagers]
        assert [len(control.result(timeout=60)) for control in controls] == [2, 2]
        (sent_a, received_a), (sent_b, received_b) = (counter.totals() for counter in counters)
    finally:
        for averager in averagers:
            averager.shutdown()
    assert sent_a == received_b and sent_b == received_a
    payload = 2 * values * (4 if mode == "none" else 1)  # both peers' outgoing bytes, before codebooks
    # an 8-bit part carries a codebook: one per message, 2 to 4 of them as hivemind splits the vector
    codebook = 0 if mode == "none" else 8 + 256 * 4
    assert payload + 2 * codebook <= sent_a + sent_b <= (payload + 4 * codebook) * 1.01


def test_node_status_shows_the_traffic_per_sample():
    from tests.node.test_credit import _answer, _render

    answer = _answer()
    answer["training"].update(bytes_sent=4_000_000, bytes_received=3_000_000, samples_total=1_000)
    assert "4,000 B sent, 3,000 B received per sample (4.0 MB, 3.0 MB)" in _render(answer)
