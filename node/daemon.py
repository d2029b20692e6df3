"""One run of the node daemon, wired top to bottom: identity → manifest → swarm → registration → training,
with the reporter on its own event-loop thread. Returns an exit code; raises NodeError for the volunteer."""

from node import warmup

warmup.defer_hivemind_extras()  # before node.access (or anything else) imports hivemind

import asyncio
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from typing import Optional

from hearth.tasks import TaskContext, load_task
from node.assets import AssetCache, AssetError, needed
from node.accounting import EpochContribution
from node.audit import AuditResponder
from node import access
from node.accounts import save_keys
from node.checkpoint import CoordinatorCheckpoints
from node.config import NodeConfig
from node.control import ControlServer
from node.controller import NodeController
from node.coordinator_client import CoordinatorClient, CoordinatorError
from node.digest import ParameterDigests, compared_every
from node.credit import CreditTracker
from node.identity import NodeIdentity, friendly_name
from node.metrics import MetricsError, MetricsServer
from node.outbox import Outbox
from node.policy import Policy
from node.reachability import ReachabilityCheck
from node import resources
from node.reporter import Reporter
from node.resources import MachineFacts, ResourceError, Resources
from node.swarm import SwarmMember, SwarmSettings
from node.trainer import Trainer
from node.view import LiveView, render
from protocol.messages import VolunteerRegistration

logger = logging.getLogger(__name__)
REPORTER_DRAIN_SECONDS = 10.0
DUPLICATE_SIGNAL_SECONDS = 1.0  # a second stop signal this soon after the first is the same request
POLICY_POLL_SECONDS = 1.0  # sensors are read at most this often: a pause takes effect within ~1 s


class NodeError(RuntimeError):
    """A problem to tell the volunteer in one sentence."""


class ReporterThread:
    """Runs the MQTT reporter on a private asyncio loop so training never waits for the network."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="hearth-reporter", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.reporter.run())

    def start(self) -> None:
        self.thread.start()

    def call(self, function, *args) -> None:
        self.loop.call_soon_threadsafe(function, *args)

    def stop(self, timeout: float) -> None:
        self.call(self.reporter.stop)
        self.thread.join(timeout)


def install_stop_handlers(stop: threading.Event, clock=time.monotonic) -> None:
    owner, first_signal = os.getpid(), [0.0]

    def handle(signum, frame):
        if os.getpid() != owner:  # a process hivemind forked inherited this handler: die as it expects
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stop.is_set():
            if clock() - first_signal[0] < DUPLICATE_SIGNAL_SECONDS:
                return  # the same stop sent to the whole process group or session (service managers do that)
            raise KeyboardInterrupt  # a second Ctrl+C: give up on a graceful stop
        first_signal[0] = clock()
        logger.warning("Stopping after the current batch (Ctrl+C again to force)")
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def run_node(config: NodeConfig, stop: threading.Event, control: ControlServer) -> dict:
    """Join the swarm `config` names and train until `stop` is set or the run's limits end it: the summary. While
    it trains, `control` also serves the run's commands (status, pause, resume, snooze)."""
    facts = MachineFacts.probe(config.gpus, cuda=config.device != "cpu")
    try:
        resources.check_device_request(config, facts)  # before waiting on the network
    except ResourceError as e:
        raise NodeError(str(e)) from None
    identity = NodeIdentity.load_or_create(config.data_dir)
    client = CoordinatorClient(config.coordinator_url, config.connect_timeout)
    try:
        manifest = client.manifest(config.swarm_id)
    except CoordinatorError as e:
        raise NodeError(str(e)) from None
    task = load_task(manifest.task)
    configure_task(task, manifest, config, identity.node_id)
    reachability = ReachabilityCheck(config.reachability, config.coordinator_url)  # asked once the peer listens
    identity_path = config.data_dir / "p2p.key"
    try:
        access.ensure_identity(identity_path)  # proven at registration, before the DHT starts with it
        access.use_identity_for_records(identity_path)
    except (OSError, ValueError) as e:
        raise NodeError(f"cannot use this node's libp2p identity {identity_path} ({e}); move the file away to make "
                        "a new one") from None  # fmt: skip
    name = authorizer = login = None
    if manifest.access == "token":  # a private swarm: registered first, for the token its DHT peer starts with
        name, login = register(client, identity, config)
        try:
            swarm_access = access.SwarmAccess(config.coordinator_url, identity.key, manifest, identity_path)
            authorizer = swarm_access.authorizer(swarm_access.fetch())
        except access.AccessRefused as e:
            client.close()
            raise NodeError(str(e)) from None
    settings = SwarmSettings(
        host=config.host, port=config.port, announce_host=config.announce_host,
        client_mode=config.reachability == "client", identity_path=config.data_dir / "p2p.key",
        check_reachability=reachability,
        resume_from_checkpoint=CoordinatorCheckpoints(config.coordinator_url, manifest.swarm_id, config.data_dir),
        authorizer=authorizer,
    )  # fmt: skip
    swarm = SwarmMember(manifest, settings)  # its DHT process boots while this one goes on
    # Every torch optimizer imports torch._dynamo (~2 s): import it while waiting on the DHT and the coordinator.
    # (Only now: the DHT process is forked already, so it cannot inherit a half-done import.)
    warmup.import_in_background("torch._dynamo")
    try:
        swarm.connect()
        if name is None:
            name, login = register(client, identity, config)
        decided = resources.decide(config, task, manifest.hyperparameters.batch_size, facts)  # before the model
        resources.apply(decided)
        return train(config, identity, manifest, task, swarm, decided, name, stop, reachability, control, login)
    except ResourceError as e:  # the task does not fit this PC's limits, or the batch not even at 1 on the GPU
        raise NodeError(str(e)) from None
    finally:
        swarm.shutdown()
        client.close()


def configure_task(task, manifest, config: NodeConfig, node_id: str) -> None:
    """Give the task the swarm's options and this node's share of its files (downloaded, verified, cached)."""
    try:
        assets = AssetCache(config.coordinator_url).fetch_all(needed(task, manifest.assets, node_id))
        local_data = local_data_for(manifest, config)
        task.configure(TaskContext(options=manifest.task_options, assets=assets, local_data=local_data))
    except (AssetError, ValueError) as e:
        raise NodeError(f"cannot set up task {manifest.task}: {e}") from None
    if (manifest.data == "local" or manifest.privacy is not None) and task.local_dataset() is None:
        raise NodeError(f"swarm {manifest.swarm_id} trains on each volunteer's own data, which its task {manifest.task} "
                        "cannot read; tell the swarm's operator")


def local_data_for(manifest, config: NodeConfig):
    """This node's own dataset in a `data: local` swarm (it never leaves this PC); None in a shared-data swarm."""
    if manifest.data != "local":
        return None
    if config.local_data is None:
        raise NodeError(f"swarm {manifest.swarm_id} trains on each volunteer's own data: name your dataset with "
                        f"--local-data FILE (or HEARTH_LOCAL_DATA), in the format its task {manifest.task} reads")
    return config.local_data


def register(client: CoordinatorClient, identity: NodeIdentity, config: NodeConfig) -> tuple[str, Optional[tuple]]:
    """Register (or re-register) this node, proving its libp2p identity (node/access.py): (the volunteer's name, this
    node's broker login (username, password) if the coordinator gave one)."""
    name = config.name or identity.registered_name() or friendly_name()
    access.ensure_identity(identity.p2p_identity_path)
    now = time.time()
    binding = access.peer_binding(identity.p2p_identity_path, identity.key.public_key, now)
    registration = VolunteerRegistration(name=name, team=config.team, public_key=identity.key.public_key, time=now,
                                         **binding)  # fmt: skip
    try:
        answer = client.register(registration, identity.key)
    except CoordinatorError as e:
        hint = f" (name {name!r}; choose another with --name)" if e.code == "name_taken" else ""
        raise NodeError(f"{e}{hint}") from None
    save_keys(config.data_dir, answer)  # a new account's keys (or an old account's, claimed once): shown only now
    volunteer = answer.get("volunteer", {})  # an attached node registers under its account's name and team
    name = volunteer.get("name", name)
    identity.remember(name, volunteer.get("team", config.team))
    logger.info("Registered as %s (node %s)", name, identity.node_id)
    login = (answer["broker_username"], answer["broker_password"]) if answer.get("broker_password") else None
    return name, login


def train(config, identity, manifest, task, swarm, decided: Resources, name, stop, reachability, control,
          login=None) -> dict:  # fmt: skip
    device = decided.torch_device
    outbox = Outbox(config.data_dir / "outbox.sqlite")
    reporter = Reporter(manifest.broker_url, identity.key, manifest.swarm_id, device.type, outbox, swarm.peer_id,
                        manifest.coordinator_key, login)  # fmt: skip
    reporter_thread = ReporterThread(reporter)
    policy = Policy.from_config(config.policy, root_pid=os.getpid(), poll_seconds=POLICY_POLL_SECONDS)
    controller = NodeController(
        config, policy, device.type, stop, manifest.swarm_id,
        on_pause_change=lambda reason: reporter_thread.call(reporter.set_pause_reason, reason),
    )  # fmt: skip

    def contributed(contribution: EpochContribution) -> None:
        reporter_thread.call(reporter.submit, contribution)
        reporter_thread.call(reporter.update_presence, contribution.epoch + 1, trainer.stats.samples_per_second)
        view.epoch_done(contribution.epoch, contribution.group_size, contribution.samples, contribution.loss)

    trainer = Trainer(task, swarm, decided, identity.node_id, contributed, gate=controller.gate,
                      privacy_state=config.data_dir / "swarms" / manifest.swarm_id / "privacy.json")
    reporter.epsilon_spent = lambda: trainer.privacy.ledger.epsilon if trainer.privacy else None  # in presence
    hp = manifest.hyperparameters
    trainer.digests = ParameterDigests(manifest.run_id, hp.compression, compared_every(hp), swarm.digest_handles)
    credit = CreditTracker(config.coordinator_url, name, outbox, manifest.swarm_id, manifest.flops_per_sample)
    controller.attach(trainer, reporter, credit)
    audits = None  # in a `data: local` swarm an audit's batch would be the owner's data, unprotected: never answered
    if manifest.data != "local":
        audits = AuditResponder(task, config.coordinator_url, identity.key, manifest.swarm_id,
                                CoordinatorCheckpoints(config.coordinator_url, manifest.swarm_id, config.data_dir),
                                getattr(manifest, "coordinator_key", None)).start()  # fmt: skip
    trainer.audits, reporter.on_audit = audits, audits and audits.receive
    view = LiveView(config.view, lambda: render(manifest.swarm_id, device.type, trainer.stats, reporter.stats))
    try:
        metrics = MetricsServer.serve(config.metrics_port, controller.status)
    except MetricsError as e:
        raise NodeError(str(e)) from None
    controller.metrics_url = metrics and metrics.url
    controller.reachability = reachability
    reporter_thread.start()
    credit.start()
    deadline = time.monotonic() + config.duration if config.duration else None
    try:
        with control.overlay(controller.handlers()):
            with view:
                trainer.run(stop, config.max_epochs, deadline, config.min_peers, config.connect_timeout)
            if audits is not None:  # its last report's audit comes right after the receipt
                audits.drain(trainer.compute_gradients, device,
                             lambda: len(outbox) == 0 if reporter.stats.connected else None)  # fmt: skip
    finally:
        if metrics:
            metrics.stop()
        credit.stop()
        trainer.digests.stop()
        if audits is not None:
            audits.stop()
        reporter_thread.stop(REPORTER_DRAIN_SECONDS)
        outbox.close()
    trainer.save_checkpoint(config.data_dir / "swarms" / manifest.swarm_id / "model.pt")
    first_step = trainer.stats.first_step_at
    summary = {
        "name": name, "node_id": identity.node_id, "swarm_id": manifest.swarm_id, "epoch": trainer.stats.epoch,
        "group_sizes": trainer.stats.group_sizes, "samples": trainer.accountant.total_samples,
        "digest_reloads": trainer.stats.digest_reloads, "digests": trainer.digests.summary(),
        "reports_acknowledged": reporter.stats.reports_acknowledged, "reports_waiting": reporter.stats.reports_waiting,
        "reachability": str(reachability),
        "resources": trainer.resources.as_dict(),
        "privacy": asdict(trainer.privacy.snapshot()) if trainer.privacy else None,
        "samples_per_second": round(trainer.stats.samples_total / (time.time() - first_step), 1) if first_step else 0.0,
    }  # fmt: skip
    (config.data_dir / "last-run.json").write_text(json.dumps(summary))
    return summary
