"""Hearth glue shared by every program, importing neither `node` nor `coordinator`.

- audit.py: the audit computation node and coordinator share (audited batch, model state, gradient digest).
- cli.py: the `hearth` command; loads each subcommand group lazily from its own package.
- demo.py: `hearth demo`: a coordinator and three nodes as separate processes on loopback.
- processes.py: process-group supervision, so nothing a child starts outlives it.
- progress.py: parse hivemind's per-peer progress records from the DHT (node and coordinator monitor).
- authorizer.py: private swarms' hivemind authorizer (coordinator-signed tokens) and libp2p identity key helpers.
- tasks/: the training task interface and the built-in tasks (found through `hearth.tasks` entry points).
"""
