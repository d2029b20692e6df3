"""The volunteer's node daemon.

- cli.py: `hearth join URL` (supervised) and `hearth node …`.
- team_cli.py: `hearth team create NAME | join NAME | leave` (signed with the node key, sent with the account key).
- account_cli.py: `hearth account show | attach | attach-key | detach | rename`, and `hearth join --attach KEY`.
- accounts.py: this PC's copies of the account key and attach key (0600, next to the node key).
- worker.py: the supervised process's entry point.
- config.py: NodeConfig, the one config object, with its PolicyConfig (when to compute).
- settings.py: builds NodeConfig from defaults < config.toml < HEARTH_* env < flags; remembers each source.
- resources.py: device (CPU or one GPU), threads, RAM / GPU memory caps, batch that fits, bf16 AMP.
- policy.py: Policy.evaluate() -> Decision (run? GPU allowed? why not?), pause / snooze / resume.
- sensors.py: input idle time, other programs' CPU, other GPU processes, battery; None when unknown.
- schedule.py: weekly windows such as "mon-fri 22:00-07:00, sat-sun *".
- identity.py: Ed25519 node key (0600), libp2p identity path, display name.
- access.py: proof of the libp2p identity at registration; private swarms' access tokens for the DHT.
- coordinator_client.py: HTTP to the coordinator (register, manifests) with retry and backoff.
- daemon.py: one run wired top to bottom; signals; reporter thread.
- swarm.py: the hivemind peer: DHT, Optimizer, round outcomes.
- bandwidth.py: compression and local-updates modes as Optimizer arguments; the averaging traffic counter.
- reachability.py: asks the coordinator to dial the listening peer back; unreachable: client mode with relays.
- trainer.py: the training loop and epoch transitions.
- privacy.py: differential privacy (Opacus): Poisson batches, per-sample clipping and noise before averaging, ε ledger.
- digest.py: parameter digests compared across an epoch's peers; a peer outside the majority reloads state.
- checkpoint.py: when no peer had newer state at join, resume from the coordinator's latest checkpoint.
- assets.py: the task's files this node needs: downloaded, sha256-checked, cached by digest.
- accounting.py: samples and compute time per epoch.
- outbox.py: durable SQLite outbox and the report sequence counter.
- reporter.py: aiomqtt reports (QoS 1) and retained presence with an "offline" last will.
- view.py: the live terminal view.
"""
