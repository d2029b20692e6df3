"""Bandwidth modes and traffic accounting: what the swarm's compression and local-updates settings mean for
hivemind.Optimizer, and an exact count of the averaging bytes this node sends and receives.

Counting: every tensor that crosses the network in averaging travels as a protobuf message of one of two RPCs,
`rpc_aggregate_part` (all-reduce: our parts out, averaged deltas back; as a reducer, peers' parts in and deltas
out) and `rpc_download_state` (state for a joining peer). TrafficCounting counts the serialized size of each of
those messages on both sides of both RPCs: the server side by wrapping the averager's handlers, the client side
by wrapping the stubs it calls peers through. Left out: the RPCs' own framing (a length varint and a marker
byte per message), libp2p's (yamux, noise: ~0.1 % on large parts), TCP/IP, matchmaking, DHT records.
(Wrapping the compression object would see only our own outgoing parts: hivemind decodes incoming tensors,
and encodes the deltas it returns, through its global codec table.)
"""

import ctypes
import multiprocessing as mp
import warnings
from typing import AsyncIterator, Optional

import numpy as np
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.compression import (
    CompressionBase,
    Float16Compression,
    NoCompression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.compression import serialization as _codecs
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2, runtime_pb2

from protocol.messages import Hyperparameters

# Below this many values a tensor goes as fp16 in int8 mode: each 8-bit part carries a 1,032-byte codebook,
# and small tensors (biases, norms) are the ones 8 bits would hurt most.
INT8_MIN_VALUES = 2**14


class NumpyCompatibleUniform8Bit(Uniform8BitQuantization):
    """hivemind 1.1.12 reads the codebook length with int() on a 1-element array, which NumPy >= 2.4 refuses:
    every 8-bit tensor would fail to decode. Same wire format, header read as a scalar."""

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        quantized = torch.from_numpy(quantized.astype(np.int64)).reshape(tuple(serialized_tensor.size))
        codebook = torch.tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)


# hivemind decodes by the message's compression type through this table, in whichever process receives; the
# averager processes are forked after this import, so they inherit it.
_codecs._BASE_COMPRESSION_TYPES["UNIFORM_8BIT"] = NumpyCompatibleUniform8Bit()
# torch 2.13 warns that quantize_per_tensor (used by the 8-bit codec) is deprecated; torch is pinned.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)


def compression_for(name: str) -> CompressionBase:
    """The hivemind codec for a swarm's `compression` setting ("none", "fp16" or "int8")."""
    if name == "none":
        return NoCompression()
    if name == "fp16":
        return Float16Compression()
    if name == "int8":
        return SizeAdaptiveCompression(
            threshold=INT8_MIN_VALUES, less=Float16Compression(), greater_equal=NumpyCompatibleUniform8Bit()
        )
    raise ValueError(f"unknown compression {name!r}: use none, fp16 or int8")


def optimizer_options(hp: Hyperparameters, grad_averager_factory) -> dict:
    """hivemind.Optimizer arguments for the swarm's bandwidth mode.

    Gradients and the periodic state average travel compressed; a state *download* (a joining peer, the
    coordinator's checkpoints) always goes as fp32, so a newcomer starts exactly where its donor is. With local
    updates each peer steps its own optimizer on every batch (so nothing accumulates in .grad and there is no
    gradient averager) and only the state is averaged, every `average_state_every` epochs."""
    compression = compression_for(hp.compression)
    options = dict(
        grad_compression=compression, state_averaging_compression=compression, load_state_compression=NoCompression()
    )
    if hp.local_updates:
        return dict(options, use_local_updates=True, reuse_grad_buffers=False, grad_averager_factory=None)
    # Accumulate in the parameters' .grad buffers: no copy per step and no re-allocation after zero_grad();
    # hivemind zeroes them after each epoch and after a state download.
    return dict(options, use_local_updates=False, reuse_grad_buffers=True, grad_averager_factory=grad_averager_factory)


class TrafficCounter:
    """Averaging bytes sent and received by this node, in shared memory: the averagers count in their own
    processes, the trainer reads here. Survives the node leaving and rejoining the swarm."""

    def __init__(self) -> None:
        self._totals = mp.Array(ctypes.c_int64, 2)  # sent, received
        self._taken = (0, 0)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self._totals.get_lock():
            self._totals[0] += sent
            self._totals[1] += received

    def totals(self) -> tuple[int, int]:
        with self._totals.get_lock():
            return self._totals[0], self._totals[1]

    def take(self) -> tuple[int, int]:
        """Bytes (sent, received) since the last take(); for one reader (the training thread)."""
        sent, received = self.totals()
        taken_sent, taken_received = self._taken
        self._taken = (sent, received)
        return sent - taken_sent, received - taken_received


async def _counted(messages: AsyncIterator, counter: TrafficCounter, sent: bool) -> AsyncIterator:
    async for message in messages:
        size = message.ByteSize()
        counter.add(sent=size) if sent else counter.add(received=size)
        yield message


class CountingStub:
    """A peer's averager stub whose tensor-carrying calls count what goes out and what comes back."""

    def __init__(self, stub, counter: TrafficCounter):
        self._stub, self._counter = stub, counter

    async def rpc_aggregate_part(self, requests: AsyncIterator, *args, **kwargs) -> AsyncIterator:
        replies = await self._stub.rpc_aggregate_part(_counted(requests, self._counter, sent=True), *args, **kwargs)
        return _counted(replies, self._counter, sent=False)

    async def rpc_download_state(self, request, *args, **kwargs) -> AsyncIterator:
        self._counter.add(sent=request.ByteSize())
        replies = await self._stub.rpc_download_state(request, *args, **kwargs)
        return _counted(replies, self._counter, sent=False)

    def __getattr__(self, name: str):  # matchmaking and anything else: not counted
        return getattr(self._stub, name)


class TrafficCounting(DecentralizedAverager):
    """Mixin for an averager (put it first among the bases): counts both sides of its tensor RPCs into
    `traffic`. `protocol_name`, when set, keeps hivemind's own RPC names (peers and the coordinator find
    the state averager's handlers by its class name)."""

    protocol_name: Optional[str] = None
    _process_traffic: Optional[TrafficCounter] = None  # set in the averager's own process, the one calling peers
    _rpc_handlers = None  # collect this class's handlers (the overrides below), not a parent's cached list
    _stub_type = None

    def __init__(self, *args, traffic: TrafficCounter, **kwargs):
        self.traffic = traffic  # before hivemind's __init__, which may start (fork) the averager process
        super().__init__(*args, **kwargs)

    def run(self):
        type(self)._process_traffic = self.traffic  # one averager per process: its stubs count into its counter
        super().run()

    @classmethod
    def _get_handle_name(cls, namespace: Optional[str], method_name: str) -> str:
        name = f"{cls.protocol_name or cls.__name__}.{method_name}"
        return name if namespace is None else f"{namespace}::{name}"

    @classmethod
    def get_stub(cls, p2p, peer, *, namespace: Optional[str] = None):
        stub = super().get_stub(p2p, peer, namespace=namespace)
        return stub if cls._process_traffic is None else CountingStub(stub, cls._process_traffic)

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        replies = super().rpc_aggregate_part(_counted(stream, self.traffic, sent=False), context)
        async for message in _counted(replies, self.traffic, sent=True):
            yield message

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        self.traffic.add(received=request.ByteSize())
        async for message in _counted(super().rpc_download_state(request, context), self.traffic, sent=True):
            yield message
