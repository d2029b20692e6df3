"""Wiring only: build the FastAPI app, and start/stop every part of the coordinator in one event loop
(ledger → broker → default swarm → ingest → DHT monitor → HTTP), then write the ready file."""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from coordinator import api, db, queries, web
from coordinator.access_api import router as access_router
from coordinator.accounts_api import router as accounts_router
from coordinator.audits import Auditor
from coordinator.audits_api import router as audits_router
from coordinator.api import Services
from coordinator.assets import AssetStore
from coordinator.assets_api import router as assets_router
from coordinator.broker import EmbeddedBroker, check_reachable
from coordinator.broker_acl import COORDINATOR_USER, load_or_create_secret, password_for, revoke_banned
from coordinator.checkpoint_api import router as checkpoints_router
from coordinator.checkpoints import CheckpointScheduler, CheckpointStore
from coordinator.config import CoordinatorConfig, parse_mqtt_url, read_or_create_private_file
from coordinator.errors import DEFAULT_MAX_BODY_BYTES, ERROR_RESPONSES, BodySizeLimit, ErrorCounter, install_error_handlers
from coordinator.exports import ExportScheduler
from coordinator.exports import router as exports_router
from coordinator.ingest import Ingestor
from coordinator.ledger import Ledger
from coordinator.metrics import CoordinatorMetrics
from coordinator.monitor import DHTMonitor
from coordinator.privacy import RetentionSweeper, app_rate_limiters
from coordinator.ratelimit import DEFAULT_ACCOUNT_BURST, RateLimiter, RateLimitMiddleware, is_account_action
from coordinator.reachability import ReachabilityProber, own_scopes
from coordinator.swarms import ensure_default_swarm
from coordinator.work_check import WorkChecker
from coordinator.tokens import TokenIssuer, load_or_create_key, private_peer_authorizer, private_run_ids

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 15.0


def create_app(services: Services, metrics: Optional[CoordinatorMetrics] = None, rate_limit: float = 0.0,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, clock: Callable[[], float] = time.monotonic,
               account_rate_limit: float = 0.0, account_burst: float = DEFAULT_ACCOUNT_BURST) -> FastAPI:  # fmt: skip
    """The HTTP app; `rate_limit`: requests/s per client IP on public endpoints (0: no limit), `account_rate_limit`
    (in bursts of `account_burst`): the stricter budget of account actions (coordinator/ratelimit.py), timed by `clock`."""
    metrics = metrics or CoordinatorMetrics()
    app = FastAPI(title="Hearth coordinator", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json",
                  responses=ERROR_RESPONSES)  # fmt: skip
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt=("/api/v1/assets",))  # uploads: their own cap
    if account_rate_limit > 0:  # inside the general limit: a request refused there takes no account token
        app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(account_rate_limit, account_burst, clock=clock),
                           on_limited=metrics.rate_limited.inc, applies=is_account_action, what="account actions")
    if rate_limit > 0:  # added last: runs first, before any body is read
        app.add_middleware(RateLimitMiddleware, limiter=RateLimiter(rate_limit, clock=clock), on_limited=metrics.rate_limited.inc)
    app.add_middleware(ErrorCounter, count=lambda status: metrics.http_errors.labels(str(status)).inc())
    app.include_router(api.router)
    app.include_router(accounts_router)
    app.include_router(access_router)
    app.include_router(exports_router)
    app.include_router(checkpoints_router)
    app.include_router(audits_router)
    app.include_router(assets_router)
    app.include_router(web.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        nodes_online = (await queries.ledger_stats(services.ledger.engine))["nodes_online"]
        return Response(metrics.exposition(nodes_online, services.monitor), media_type=CONTENT_TYPE_LATEST)

    return app


def load_or_create_token(path: Path) -> str:
    """The operator token that authorises `hearth swarm create`: random, written once, readable by its owner only."""
    return read_or_create_private_file(path, lambda: secrets.token_urlsafe(32))


def write_ready_file(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)



def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP server's bound socket. proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only
    then; without it every answer on a kept-alive connection waited ~40 ms (uvicorn writes headers and body
    separately, and Nagle held the body until the client's delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock

class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the coordinator handles SIGINT/SIGTERM for every part."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Coordinator:
    def __init__(self, config: CoordinatorConfig):
        self.config = config
        self.metrics = CoordinatorMetrics()
        self.engine = None
        self.broker: Optional[EmbeddedBroker] = None
        self.ingestor: Optional[Ingestor] = None
        self.monitor: Optional[DHTMonitor] = None
        self.prober: Optional[ReachabilityProber] = None
        self.exporter: Optional[ExportScheduler] = None
        self.checkpoints = CheckpointStore(config.checkpoints_dir, config.keep_checkpoints)
        self.assets = AssetStore(config.assets_dir)
        self.checkpointer: Optional[CheckpointScheduler] = None
        self.auditor: Optional[Auditor] = None
        self.work_check: Optional[WorkChecker] = None
        self.server: Optional[_Server] = None
        self._server_task: Optional[asyncio.Task] = None
        self.retention: Optional[RetentionSweeper] = None
        self.url = self.broker_url = ""

    async def start(self) -> None:
        """Start every part; raises BrokerUnavailable / OSError with an operator-readable message."""
        config = self.config
        config.ensure_data_dir()
        token = load_or_create_token(config.token_file)
        self.issuer = TokenIssuer(load_or_create_key(config.data_dir), config.token_lifetime)
        broker_secret = load_or_create_secret(config.data_dir)  # nodes' and our broker passwords derive from it
        self.engine = db.create_engine(config.database_url)
        await db.create_schema(self.engine)
        ledger = Ledger(self.engine)
        await ledger.load()

        if config.broker_url:
            host, port = parse_mqtt_url(config.broker_url)
            await check_reachable(host, port)
            self.broker_url = config.broker_public_url or config.broker_url  # what nodes are told
        else:
            self.broker = EmbeddedBroker(config.broker_host, config.broker_port, config.tls_cert, config.tls_key)
            self.broker.auth_secret = broker_secret if config.broker_auth else None
            await self.broker.start()
            if config.broker_auth:
                await revoke_banned(self.engine)
            host = "127.0.0.1" if config.broker_host in ("0.0.0.0", "::") or config.tls_cert else config.broker_host
            port = self.broker.local_port  # with TLS: the plain listener on 127.0.0.1, for our own ingest client
            self.broker_url = f"{'mqtts' if config.tls_cert else 'mqtt'}://{config.advertised_host}:{self.broker.port}"
        await ensure_default_swarm(ledger, config.default_task)
        self.ingestor = Ingestor(ledger, host, port, metrics=self.metrics, workers=config.ingest_workers,
                                 database_url=config.database_url)  # fmt: skip
        self.ingestor.receipt_key = self.issuer.key
        self.ingestor.credentials = (COORDINATOR_USER, password_for(broker_secret, COORDINATOR_USER))
        # pending until coordinator/work_check.py decides, which needs the DHT monitor's evidence
        self.ingestor.hold_for_verification = config.verify_work and config.enable_monitor
        await self.ingestor.start()
        await asyncio.wait_for(self.ingestor.subscribed.wait(), SUBSCRIBE_TIMEOUT)

        if config.enable_monitor:
            self.monitor = DHTMonitor(config.dht_host, config.dht_port, config.monitor_interval, config.public_host,
                                      private_authorizer=lambda: private_peer_authorizer(self.issuer))  # fmt: skip
            await self.monitor.start(lambda: [(sid, info.run_id) for sid, info in ledger.swarms.items()],
                                     await private_run_ids(self.engine))  # fmt: skip
            self.prober = ReachabilityProber(own_scopes(self.monitor.initial_peers))
            self.checkpointer = CheckpointScheduler(self.checkpoints, self.engine, self.monitor,
                                                    config.checkpoint_every, self.metrics, assets=self.assets)  # fmt: skip
            self.checkpointer.start()
            if config.verify_work:
                self.auditor = Auditor(self.engine, self.ingestor.publish, self.checkpoints,
                                       key=getattr(self.ingestor, "receipt_key", None), assets=self.assets,
                                       connected=self.ingestor.subscribed.is_set, on_ban=self._revoke)  # fmt: skip
                self.work_check = WorkChecker(ledger, self.monitor, self.auditor)
                self.work_check.start()

        services = Services(ledger, self.broker_url, token, counters=self.ingestor.counters, monitor=self.monitor,
                            reachability=self.prober, exports_dir=config.exports_dir, issuer=self.issuer,
                            broker_secret=broker_secret)  # fmt: skip
        services.assets = self.assets  # the task files swarms are defined with (coordinator/assets.py)
        services.forget_retained = self.ingestor.clear_retained  # an erased node's presence and receipts
        self.exporter = ExportScheduler(self.engine, config.exports_dir, config.export_interval_seconds)
        self.exporter.start()
        await self._serve_http(create_app(services, self.metrics, config.rate_limit, config.max_body_bytes,
                                          account_rate_limit=config.account_rate_limit,
                                          account_burst=config.account_burst))  # fmt: skip
        if config.ready_file is not None:
            write_ready_file(config.ready_file, self.ready_info())
        logger.info("Hearth coordinator ready: %s", self.url)

    async def _revoke(self, volunteer_id: int) -> None:
        """A volunteer was banned: the embedded broker stops carrying their nodes (an external one: broker-files)."""
        if self.broker is not None and self.broker.auth_secret:
            await revoke_banned(self.engine)

    async def _serve_http(self, app: FastAPI) -> None:
        app.state.checkpoints = self.checkpoints  # served by coordinator/checkpoint_api.py
        app.state.auditor = self.auditor  # coordinator/audits_api.py
        self.retention = RetentionSweeper(self.engine, self.config.peer_id_retention_hours, app_rate_limiters(app),
                                          self.prober)  # fmt: skip
        self.retention.start()
        sock = listening_socket(self.config.host, self.config.port)
        port = sock.getsockname()[1]
        tls = dict(ssl_certfile=str(self.config.tls_cert), ssl_keyfile=str(self.config.tls_key)) if self.config.tls_cert else {}
        uv_config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                                   **tls)  # fmt: skip
        self.server = _Server(uv_config)
        self._server_task = asyncio.create_task(self.server.serve(sockets=[sock]), name="http")
        while not self.server.started:
            if self._server_task.done():
                self._server_task.result()
                raise OSError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        self.url = f"{'https' if self.config.tls_cert else 'http'}://{self.config.advertised_host}:{port}"

    def ready_info(self) -> dict:
        return {
            "url": self.url,
            "broker_url": self.broker_url,
            "initial_peers": self.monitor.initial_peers if self.monitor else [],
            "data_dir": str(self.config.data_dir),
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        """Stop in reverse order; each part gets the shutdown timeout, then is abandoned."""
        timeout = self.config.shutdown_timeout
        if self.server is not None:
            self.server.should_exit = True
            await _bounded(self._server_task, timeout, "HTTP server")
        if self.retention is not None:
            await _bounded(self.retention.stop(), timeout, "retention sweeps")
        if self.exporter is not None:
            await _bounded(self.exporter.stop(), timeout, "stats exports")
        if self.prober is not None:
            await _bounded(self.prober.close(), timeout, "reachability probes")
        if self.checkpointer is not None:
            await _bounded(self.checkpointer.stop(), timeout, "checkpoints")
        if self.work_check is not None:
            await _bounded(self.work_check.stop(), timeout, "work check")
        if self.ingestor is not None:
            await _bounded(self.ingestor.stop(), timeout, "ingest")
        if self.monitor is not None:
            await _bounded(self.monitor.stop(), timeout, "DHT monitor")
        if self.broker is not None:
            await _bounded(self.broker.stop(), timeout, "MQTT broker")
        if self.engine is not None:
            await _bounded(self.engine.dispose(), timeout, "database")
        if self.config.ready_file is not None:
            with contextlib.suppress(OSError):
                self.config.ready_file.unlink()
        logger.info("Hearth coordinator stopped")

    def force_stop(self) -> None:
        """Last resort after a second Ctrl+C: make sure no DHT process outlives us."""
        for dht in (self.monitor.dht, self.monitor.private_dht) if self.monitor is not None else ():
            if dht is not None:
                dht.terminate()


async def _bounded(awaitable, timeout: float, name: str) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        logger.warning("%s did not stop within %.0f s; abandoned", name, timeout)
    except Exception:
        logger.exception("Error while stopping the %s", name)
