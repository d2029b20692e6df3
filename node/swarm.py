"""Swarm membership: where the node loads hivemind (after node/warmup.py's deferral; the other node modules that
use hivemind, bandwidth, matchmaking and progress_records, are loaded from here). Starts the DHT, builds
hivemind.Optimizer, and records which peers took part in each gradient-averaging round."""

import logging
import signal
import time
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil
import torch

from hearth.processes import TORCH_SHM_MANAGER
from node import warmup

warmup.defer_hivemind_extras()  # ~1.5 s off every join (no effect if hivemind came in first: see node/daemon.py)

from hivemind.averaging import DecentralizedAverager  # noqa: E402
from hivemind.dht import DHT  # noqa: E402
from hivemind.optim import Optimizer  # noqa: E402
from hivemind.optim.grad_averager import GradientAverager  # noqa: E402
from hivemind.optim.progress_tracker import ProgressTracker  # noqa: E402
from hivemind.optim.state_averager import TrainingStateAverager  # noqa: E402

from node.bandwidth import TrafficCounter, TrafficCounting, optimizer_options  # noqa: E402
from node.matchmaking import PacedMatchmaking  # noqa: E402
from node.progress_records import ThrottledProgressTracker  # noqa: E402
from protocol.messages import SwarmManifest

logger = logging.getLogger(__name__)


class DroppedRequestFilter(logging.Filter):
    """When an averager process stops (pause, leave, shutdown), a DHT request it had just sent can no longer be
    read, and hivemind's DHT process logs that harmless drop as an ERROR with a traceback. Keep it as one debug
    line instead; every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.funcName != "_run" or not isinstance(error, OSError):
            return True
        logger.debug("The DHT dropped a request from a stopped process (%s)", error)
        return False


logging.getLogger("hivemind.dht.dht").addFilter(DroppedRequestFilter())  # the DHT process inherits it


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # optimizer statistics averaged along with the parameters


def request_timeout_for(matchmaking_time: float) -> float:
    # hivemind warns (and can deadlock) unless request_timeout < matchmaking_time; its default is 3 s.
    return min(3.0, matchmaking_time / 2)


@dataclass(frozen=True)
class RoundOutcome:
    """How the last epoch's gradients (local updates: state) were combined: `group_size` peers averaged
    (1: local gradients only); the averaging bytes this node sent and received since the previous epoch."""

    group_size: int
    averaged: bool
    bytes_sent: int = 0
    bytes_received: int = 0


class RoundRecording:
    """Remembers the last all-reduce an averager started in the background; its result names the group."""

    rounds_started = 0
    last_control = None

    def step(self, *args, **kwargs):
        control = super().step(*args, **kwargs)
        if kwargs.get("wait", True) is False:
            self.last_control, self.rounds_started = control, self.rounds_started + 1
        return control

    def outcome_since(self, rounds_before: int) -> RoundOutcome:
        if self.rounds_started == rounds_before:
            return RoundOutcome(group_size=1, averaged=False)
        group_size = finished_group_size(self.last_control)
        return RoundOutcome(group_size=group_size, averaged=group_size > 1)


def finished_group_size(control) -> int:
    """How many peers the finished averaging round behind `control` (a StepControl) averaged: 1 if it has not
    finished, or failed (hivemind then falls back to local gradients)."""
    if control is None or not control.done():
        return 1
    try:
        return len(control.result(timeout=0))
    except BaseException:
        return 1


class RecordingGradientAverager(RoundRecording, TrafficCounting, PacedMatchmaking, GradientAverager):
    """The gradient averager: records its rounds (GradientAverager.step), counts its traffic and paces its
    matchmaking."""

    def load_state_from_peers(self, wait: bool = True, timeout: Optional[float] = None):
        # hivemind.Optimizer calls this after downloading the state, then throws the result away and zeroes its
        # own gradient buffers: a whole model-sized download (and a donor's upload) for nothing on every join.
        return None


class StateRoundStep(RoundRecording, PacedMatchmaking, DecentralizedAverager):
    """Sits below TrainingStateAverager, whose high-level step() starts each state round with
    DecentralizedAverager.step(wait=False): that is the call recorded.

    Each round also tells the averager's process how many peers to expect: its leader starts the all-reduce as
    soon as that many have joined, instead of waiting out the whole matchmaking window (hivemind fixes the group
    size when the process starts). The state round follows a gradient round the same peers just finished together,
    so they all join within milliseconds; waiting the window out cost every peer ~1 s of every epoch."""

    expected_group_size: Optional[int] = None
    """For the next round only, set by TrackingOptimizer; None: wait out the window, as hivemind does."""

    def step(self, *args, **kwargs):
        expected, self.expected_group_size = self.expected_group_size, None
        self._outer_pipe.send(("_expect_group_size", [expected], {}))  # handled before the step
        return super().step(*args, **kwargs)

    async def _expect_group_size(self, size: Optional[int]) -> None:
        """Runs in the averager's process (hivemind's pipe protocol: the method name and its arguments)."""
        self._matchmaking.target_group_size = size


class RecordingStateAverager(TrafficCounting, TrainingStateAverager, StateRoundStep):
    """The state averager: counts its traffic (state rounds and state downloads) and records its rounds, which
    close the epochs in local-updates mode. RPC names stay hivemind's, which the coordinator's downloads use.

    It also keeps the optimizer statistics it averages (Adam's moments) the ones the optimizer uses. In gradient
    mode hivemind averages the optimizer's own tensors in place (reuse_tensors), captured once at start; but
    loading a state (a download from peers, a checkpoint, a rejoin) replaces the optimizer's moment tensors with
    new ones (torch's load_state_dict), and hivemind 1.1.12 goes on averaging the old ones: the peer's state rounds
    then give its stale moments to the others and never update its own, and the peers' Adam moments, then their
    parameters, move apart (bench_node: 1.5-5 % after a state round, the volunteer having joined by download)."""

    protocol_name = TrainingStateAverager.__name__

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.reuse_tensors:
            self.optimizer.register_load_state_dict_post_hook(lambda optimizer: self._relink_statistics())

    @torch.no_grad()
    def _relink_statistics(self) -> None:
        """Put the loaded statistics' values into the averaged tensors and have the optimizer use those again.
        Runs inside load_state_dict: hivemind's loads hold lock_averaged_tensors already (not reentrant), and no
        averaging round runs during a load (hivemind waits for them first)."""
        params = [param for group in self.optimizer.param_groups for param in group["params"]]
        averaged = iter(self._averaged_tensors[len(params):])  # parameters first, then statistics, key by key
        for key in self.opt_keys_for_averaging:
            for param in params:
                shared, state = next(averaged), self.optimizer.state[param]
                if state[key] is not shared:
                    shared.copy_(state[key])
                    state[key] = shared


STATE_MATCHMAKING_SECONDS = 1.0  # how long the state-averaging round waits for peers (see _make_state_averager)


class TrackingOptimizer(Optimizer):
    """hivemind.Optimizer that counts state downloads (work accumulated before one was discarded) and publishes
    its progress at a sustainable rate."""

    state_loads = 0

    def __init__(self, *args, traffic: TrafficCounter, **kwargs):
        self.traffic = traffic  # hivemind's __init__ makes the averagers, which count into it
        super().__init__(*args, **kwargs)

    def step(self, *args, **kwargs):
        loss = super().step(*args, **kwargs)
        if self.use_local_updates:  # this batch's gradients were applied already: the next one starts from zero
            self.zero_grad(set_to_none=False)  # keep the buffers: no allocation per batch
        return loss

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        # hivemind 1.1.12 steps alone for the whole epoch when the round it pre-scheduled has already ended (its
        # matchmaking gave up, e.g. while the other peer was still in a state round): start a fresh round instead.
        if self.scheduled_grads is not None and self.scheduled_grads.done():
            self.scheduled_grads = None
        return super()._begin_averaging_gradients(grad_scaler)

    def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
        # The state round starts right after the gradient round that every peer of the epoch just finished
        # together, so a short matchmaking window finds them all; hivemind would wait the full matchmaking_time.
        # (It never pre-schedules this round in 1.1.12, and pre-scheduled state rounds, when forced, sometimes
        # formed without the other peers and left them apart.)
        matchmaking = min(self.matchmaking_time, STATE_MATCHMAKING_SECONDS)
        kwargs["request_timeout"] = request_timeout_for(matchmaking)
        return RecordingStateAverager(
            traffic=self.traffic, dht=self.dht, prefix=f"{self.run_id}_state_averager", min_matchmaking_time=matchmaking,
            allreduce_timeout=self.allreduce_timeout, shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer, custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel, next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode, auxiliary=self.auxiliary, start=True, **kwargs,
        )  # fmt: skip

    def _update_global_epoch(self, grad_scaler) -> None:
        self.tracker.report_training_stopped()
        super()._update_global_epoch(grad_scaler)

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control) -> None:
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        # The state round comes next: expect this round's group, or every peer the swarm counts if that is more
        # (a peer whose gradient round failed still joins the state round, which is what brings it back in line).
        expected = max(finished_group_size(maybe_step_control), self.tracker.global_progress.num_peers)
        self.state_averager.expected_group_size = expected if expected > 1 else None

    def load_state_from_peers(self, **kwargs):
        self.state_loads += 1
        return super().load_state_from_peers(**kwargs)

    def _make_progress_tracker(self, target_batch_size: int, **kwargs) -> ProgressTracker:
        return ThrottledProgressTracker(
            dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size, client_mode=self.client_mode,
            status_loglevel=self.status_loglevel, start=True, **kwargs,
        )  # fmt: skip


@dataclass
class SwarmSettings:
    host: str = "127.0.0.1"
    port: int = 0
    announce_host: Optional[str] = None
    client_mode: bool = False
    """Not reachable from outside: dial out only, through libp2p relays; listen on an ephemeral port only."""
    identity_path: Optional[Path] = None
    check_reachability: Optional[Callable[[str, list[str]], bool]] = None
    """Asked with a listening peer's ID and visible addresses whether others can dial it; False switches these
    settings to client mode and restarts the peer so (node/reachability.py)."""
    resume_from_checkpoint: Optional[Callable[[Optimizer], bool]] = None
    """Asked by catch_up() when peers gave no newer state; True if it loaded a checkpoint (node/checkpoint.py)."""
    authorizer: Optional[object] = None
    """A private swarm's hivemind authorizer (node/access.py): every DHT request and answer carries an access token."""


class SwarmMember:
    """A hivemind DHT peer plus the collaborative optimizer for one swarm."""

    def __init__(self, manifest: SwarmManifest, settings: SwarmSettings):
        """Starts the DHT process and returns while it boots; call connect() before using the swarm."""
        self.manifest, self.settings = manifest, settings
        self.dht: Optional[DHT] = self._launch_dht()
        self.optimizer: Optional[TrackingOptimizer] = None
        self._optimizer_inputs: Optional[tuple] = None
        self._saved_state: Optional[dict] = None
        self.traffic = TrafficCounter()  # this node's averaging bytes, across leaves and rejoins

    def _launch_dht(self) -> DHT:
        warmup.finish()  # the DHT process is forked
        settings = self.settings
        if settings.client_mode:
            network = dict(host_maddrs=[f"/ip4/{settings.host}/tcp/0"], use_relay=True, use_auto_relay=True)
        else:
            announce = [f"/ip4/{settings.announce_host}/tcp/{settings.port}"] if settings.announce_host else None
            network = dict(host_maddrs=[f"/ip4/{settings.host}/tcp/{settings.port}"], announce_maddrs=announce)
        return DHT(
            # No identity check: it starts a second p2pd to dial this identity (~1-2 s of every join; in client mode
            # it waits for a timeout on the last, unreachable address) and did not catch a second live peer when
            # measured (FACTS.md). node/instance.py keeps a second node off the same identity on this PC.
            check_if_identity_free=False,
            initial_peers=list(self.manifest.initial_peers),
            client_mode=settings.client_mode,
            identity_path=str(settings.identity_path) if settings.identity_path else None,
            authorizer=settings.authorizer,
            start=True,
            await_ready=False,  # it boots (p2pd, bootstrap) in its own process while this one goes on
            **network,
        )

    def connect(self) -> None:
        """Wait until the DHT peer is up; ask whether others can dial it and, if not, restart it in client mode."""
        self.dht.wait_until_ready()
        settings = self.settings
        if settings.client_mode or settings.check_reachability is None:
            return
        if settings.check_reachability(self.peer_id, [str(maddr) for maddr in self.dht.get_visible_maddrs()]):
            return
        # Nobody can dial it: end this peer (its DHT process and p2pd only: torch's shared-memory manager, also
        # our child, must live on) and start again in client mode, which the Optimizer then gets too.
        helpers = [psutil.Process(self.dht.pid), *psutil.Process(self.dht.pid).children(recursive=True)]
        self.dht.shutdown()
        end_processes(helpers)
        settings.client_mode = True
        self.dht = self._launch_dht()
        self.dht.wait_until_ready()

    @property
    def joined(self) -> bool:
        return self.dht is not None

    def leave(self) -> None:
        """Leave the swarm while paused: peers stop waiting for us and this PC does no swarm work at all.
        The model and the optimizer's state stay in memory for rejoin()."""
        if self.dht is None:
            return
        self._saved_state = self.optimizer.state_dict()
        self._stop_hivemind()
        for param in self._optimizer_inputs[0]:  # this epoch's partial gradients leave with us
            if param.grad is not None:
                param.grad.zero_()

    def rejoin(self) -> bool:
        """Join again with the same identity and catch up; True if the swarm's newer state was downloaded."""
        self.dht = self._launch_dht()
        self.connect()
        self.build_optimizer(*self._optimizer_inputs)
        self.optimizer.load_state_dict(self._saved_state)
        return self.catch_up()

    @property
    def peer_id(self) -> str:
        return self.dht.peer_id.to_base58()

    def build_optimizer(self, params, make_optimizer: Callable[..., torch.optim.Optimizer],
                        make_scheduler: Optional[Callable[[torch.optim.Optimizer], object]] = None) -> TrackingOptimizer:
        """`make_scheduler` builds the task's learning-rate schedule on the inner optimizer; hivemind steps it once
        per global epoch (also after a state download), so every peer uses the same rate."""
        params = list(params)
        self._optimizer_inputs = (params, make_optimizer, make_scheduler)
        hp = self.manifest.hyperparameters
        request_timeout = request_timeout_for(hp.matchmaking_time)
        # hivemind's averagers set SIGINT to "ignore" in the *calling* process when they start; keep ours.
        sigint_handler = signal.getsignal(signal.SIGINT)
        self.optimizer = TrackingOptimizer(
            dht=self.dht,
            run_id=self.manifest.run_id,
            params=params,
            optimizer=make_optimizer,
            scheduler=make_scheduler,
            target_batch_size=hp.target_batch_size,
            batch_size_per_step=hp.batch_size,
            matchmaking_time=hp.matchmaking_time,
            averaging_timeout=hp.averaging_timeout,
            averager_opts={"request_timeout": request_timeout},
            traffic=self.traffic,
            # Average parameters synchronously (every average_state_every epochs) so that peers end those
            # epochs identical, even after one of them had to proceed with local gradients. (hivemind's delayed
            # state averaging corrects such a peer only a few batches into the next epoch, after its digest was
            # compared: CI's convergence test saw 1 disagreement in 9 epochs; it saved ~1 s of a 30 s epoch.)
            delay_state_averaging=False,
            average_state_every=hp.average_state_every,
            average_opt_statistics=ADAM_MOMENTS,
            # compression, local updates (or gradient accumulation in the .grad buffers) and our gradient averager
            **optimizer_options(hp, partial(RecordingGradientAverager, request_timeout=request_timeout, traffic=self.traffic)),
            client_mode=self.settings.client_mode,  # explicit: hivemind 1.1.12 resolves the default backwards
            verbose=False,
        )
        signal.signal(signal.SIGINT, sigint_handler)
        return self.optimizer

    def digest_handles(self) -> Optional[tuple[DHT, bytes]]:
        """The DHT and the public key this peer signs its DHT records with (hivemind's progress tracker's), while
        it is in the swarm: node/digest.py publishes its parameter digests with them."""
        if self.dht is None or self.optimizer is None:
            return None
        return self.dht, self.optimizer.tracker._local_public_key

    @property
    def grad_averager(self) -> RecordingGradientAverager:
        return self.optimizer.grad_averager

    @property
    def rounds(self) -> RoundRecording:
        """The averager whose rounds close epochs: gradients, or in local-updates mode the state."""
        optimizer = self.optimizer
        return optimizer.grad_averager if optimizer.grad_averager is not None else optimizer.state_averager

    def epoch_outcome(self, rounds_before: int) -> RoundOutcome:
        """How the epoch that just ended was averaged (rounds.rounds_started was `rounds_before` at its last
        step) and the averaging traffic since the previous call."""
        outcome = self.rounds.outcome_since(rounds_before)
        sent, received = self.traffic.take()
        return RoundOutcome(outcome.group_size, outcome.averaged, bytes_sent=sent, bytes_received=received)

    def catch_up(self) -> bool:
        """Download the swarm's latest state when other peers are training, else the coordinator's checkpoint if
        it is newer than ours (every node had left); True if either did."""
        epoch, progress = self.optimizer.local_epoch, self.optimizer.tracker.global_progress
        if progress.num_peers > 0:
            logger.info("Loading the swarm's state from %d peer(s)", progress.num_peers)
            self.optimizer.load_state_from_peers()
        resume = self.settings.resume_from_checkpoint
        if self.optimizer.local_epoch == epoch and resume is not None and resume(self.optimizer):
            return True
        return progress.num_peers > 0

    def wait_for_peers(self, count: int, timeout: float, stop) -> bool:
        """Wait until `count` peers (this one included) report training progress; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.is_set():
            if self.optimizer.tracker.global_progress.num_peers >= count:
                return True
            stop.wait(0.2)
        logger.info("Fewer than %d peers after %.0f s; training with those present", count, timeout)
        return False

    def shutdown(self) -> None:
        if self.dht is not None:
            self._stop_hivemind()

    def _stop_hivemind(self) -> None:
        # hivemind sometimes gives up on a graceful DHT stop and terminates the DHT process, orphaning its
        # p2pd; so note every helper process first and end whichever is still running afterwards. torch's
        # shared-memory manager stays: this process goes on (to its next swarm), and freeing hivemind's shared
        # tensors without it would abort the process. It ends by itself soon after this process.
        helpers = [helper for helper in psutil.Process().children(recursive=True) if helper.name() != TORCH_SHM_MANAGER]
        if self.optimizer is not None:
            self.optimizer.shutdown()
        self.dht.shutdown()
        end_processes(helpers)
        self.dht, self.optimizer = None, None


def end_processes(processes: list[psutil.Process], grace: float = 3.0) -> None:
    alive = [process for process in processes if process.is_running()]
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, still_alive = psutil.wait_procs(alive, timeout=grace)
    for process in still_alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(still_alive, timeout=grace)
