"""The Hearth coordinator: swarm registry, volunteer registry, report ingestion, credit ledger, DHT monitor,
JSON API and website, all in one asyncio process. Never imports `node`.

- config.py: CoordinatorConfig, every setting of `hearth coordinator serve` (validated once).
- db.py: the schema (SQLAlchemy Core) and engine; the only module that knows SQL dialects.
- ledger.py: the credit rule, registrations, swarm creation, batched idempotent writes with running totals.
- teams.py: team create / join / leave (signed actions, replays refused) and registration's join-or-create.
- accounts.py: accounts with several nodes: account and attach keys (hashed), attach, detach, rotate, rename.
- accounts_api.py: the account routes under /api/v1/accounts.
- swarms.py: defining a swarm from a task (FLOPs measured once) and building its manifest.
- broker.py: the embedded amqtt MQTT broker, or a reachability check of an external one.
- broker_acl.py: broker logins (HMAC passwords) and topic rules: the amqtt plugin, Mosquitto's password/ACL files.
- tokens.py: the coordinator's key; identity bindings, private swarms' DHT access tokens, bans.
- access_api.py: /api/v1/coordinator-key, …/swarms/{id}/access-token, the operator's ban (…/volunteers/{name}/ban).
- access_cli.py: `hearth volunteer ban|unban`, `hearth coordinator broker-files`.
- ingest.py: MQTT reports and presence → verification → the ledger; bad input counted and recorded.
- monitor.py: the coordinator's hivemind DHT peer: bootstrap for nodes, reader of swarm progress.
- work_check.py: `--verify-work`: pending reports decided from DHT evidence (plausibility) and audits.
- plausibility.py: how many claimed samples to believe: observed shares, throughput x time, the epoch cap.
- audits.py: adaptive spot checks of nodes' gradients (trust, requests, recomputation, bans).
- audits_api.py: POST /api/v1/audits/answers (a node's signed answer), GET /api/v1/audits (a node's audits).
- metrics.py: Prometheus /metrics (its own registry): report counters, ingest latency, scrape-time gauges.
- reachability.py: dials a node back from a fresh libp2p host (POST /api/v1/reachability): address policy, limits.
- queries.py: read queries shared by the API and the website (leaderboard, volunteer audit trail, stats).
- privacy.py: a volunteer's data: export, erasure keeping anonymous aggregates, retention of peer ids and addresses.
- tls.py: TLS for the HTTP API and the embedded broker (operator's certificate; plain loopback listener for ingest).
- exports.py: public stats dumps (gzip JSON/CSV of volunteers, teams, nodes + index.json), regenerated
  periodically and served at /api/v1/exports/.
- checkpoints.py: swarm checkpoints on disk (atomic writes, sha256 sidecars, last K) and the task taking them.
- swarm_state.py: a swarm's state downloaded from its peers (download-only hivemind averager) → a checkpoint.
- checkpoint_api.py: GET /api/v1/swarms/{id}/checkpoints (list) and …/checkpoints/{epoch|latest} (download).
- assets.py: task assets (operator files) stored by sha256, split per task into the manifest's assets.
- assets_api.py: POST /api/v1/assets (operator upload) and GET /api/v1/assets/{sha256} (immutable download).
- api.py: the JSON API (/api/v1) and its single error shape.
- web.py + templates/: the server-rendered leaderboard page.
- app.py: wiring: the FastAPI app and the start/stop sequence of every part.
- cli.py: `hearth coordinator serve`, `hearth swarm create|list`, `hearth leaderboard`.
"""
