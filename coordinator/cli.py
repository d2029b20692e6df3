"""`hearth coordinator serve`, `hearth swarm create|list` and `hearth leaderboard`."""

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any, Optional

import click

from coordinator.config import DEFAULT_BROKER_PORT, DEFAULT_HTTP_PORT, CoordinatorConfig, default_data_dir, default_token_file

logger = logging.getLogger(__name__)

DEFAULT_COORDINATOR = "http://127.0.0.1:8000"


@click.group()
def coordinator() -> None:
    """Run a Hearth coordinator: ledger, MQTT broker, DHT bootstrap peer, JSON API and website."""


@coordinator.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=default_data_dir,
              show_default="platformdirs user data dir/coordinator", help="Ledger, operator token.")
@click.option("--db", "db_url", metavar="URL", help="SQLAlchemy async database URL (default: SQLite in the data dir).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the website and API.")
@click.option("--port", type=int, default=DEFAULT_HTTP_PORT, show_default=True, help="HTTP port (0: any free port).")
@click.option("--public-host", help="Host name advertised in URLs given to nodes (default: --host).")
@click.option("--broker", "broker_url", metavar="mqtt://HOST:PORT", help="Use this MQTT broker instead of the embedded one.")
@click.option("--broker-host", default="127.0.0.1", show_default=True, help="Interface of the embedded MQTT broker.")
@click.option("--broker-port", type=int, default=DEFAULT_BROKER_PORT, show_default=True,
              help="Port of the embedded MQTT broker (0: any free port).")
@click.option("--ingest-workers", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Verify reports in N worker processes sharing the broker subscription (needs --broker; 0: in-process).")
@click.option("--dht-host", default="127.0.0.1", show_default=True, help="Interface of the bootstrap DHT peer.")
@click.option("--dht-port", type=int, default=0, show_default=True, help="Port of the bootstrap DHT peer (0: any free port).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON file (url, broker_url, initial_peers, data_dir) once everything listens.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              metavar="SECONDS", help="Download each training swarm's state from its peers this often.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=5, show_default=True, metavar="K",
              help="Checkpoints kept per swarm (the newest) in DATA_DIR/checkpoints.")
@click.option("--rate-limit", "rate_limit", default="20/s", show_default=True, metavar="N/s",
              help="Requests per second each client IP may make to the website and API (bursts of 5 s worth; "
                   "also N/min); 0 disables.")  # fmt: skip
@click.option("--account-rate-limit", "account_rate_limit", default="6/min", show_default=True, metavar="N/min",
              help="Account actions (registrations, attaching/detaching nodes, team actions, renames) each client IP "
                   "may make, after a burst of --account-burst; 0 disables.")  # fmt: skip
@click.option("--account-burst", type=click.IntRange(min=1), default=20, show_default=True, metavar="N",
              help="Account actions a client IP may make at once before --account-rate-limit applies.")
@click.option("--broker-auth/--no-broker-auth", default=True, show_default=True,
              help="Embedded broker: only logged-in clients (nodes get their login at registration), each node "
                   "publishing under its own topics only. --no-broker-auth admits anonymous clients.")  # fmt: skip
@click.option("--token-lifetime", type=click.FloatRange(min=2), default=600.0, show_default=True, metavar="SECONDS",
              help="Life of private swarms' access tokens; a banned volunteer's nodes fall out within it.")
@click.option("--verify-work/--no-verify-work", default=True, show_default=True,
              help="Grant reports only for work the swarm's DHT records make plausible, and audit nodes' gradients "
                   "(reports stay pending a few seconds; repeated failed audits ban the volunteer). "
                   "--no-verify-work grants every well-signed report as claimed.")  # fmt: skip
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Serve the website/API over HTTPS and the embedded broker over MQTT/TLS with this PEM certificate "
                   "(chain); needs --tls-key.")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The private key (PEM) of --tls-cert.")
@click.option("--broker-public-url", metavar="mqtts://HOST:PORT",
              help="With --broker: the URL nodes get for it, e.g. its TLS listener (scripts/mosquitto.py --tls-cert).")
@click.option("--peer-id-retention-hours", type=click.FloatRange(min=0, min_open=True), default=24.0,
              show_default=True, metavar="HOURS", help="Clear a node's libp2p peer id this long after it went offline.")
def serve(data_dir, db_url, host, port, public_host, broker_url, broker_host, broker_port, ingest_workers, dht_host, dht_port,
          ready_file, checkpoint_every, keep_checkpoints, rate_limit, account_rate_limit, account_burst,
          token_lifetime, broker_auth, verify_work, **privacy_options) -> None:  # fmt: skip
    """Start the coordinator in this process; Ctrl+C stops it (twice: at once)."""
    from coordinator.ratelimit import parse_rate

    try:
        config = CoordinatorConfig(
            data_dir=data_dir, db_url=db_url, host=host, port=port, public_host=public_host, broker_url=broker_url,
            broker_host=broker_host, broker_port=broker_port, ingest_workers=ingest_workers, dht_host=dht_host, dht_port=dht_port,
            ready_file=ready_file, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
            rate_limit=parse_rate(rate_limit), account_rate_limit=parse_rate(account_rate_limit, "--account-rate-limit"),
            account_burst=account_burst, token_lifetime=token_lifetime, broker_auth=broker_auth, verify_work=verify_work,
            **privacy_options,  # tls_cert, tls_key, broker_public_url, peer_id_retention_hours
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    try:
        asyncio.run(_serve(config))
    except asyncio.CancelledError:
        raise SystemExit(130)


async def _serve(config: CoordinatorConfig) -> None:
    from coordinator.app import Coordinator
    from coordinator.broker import BrokerUnavailable
    from hearth.tasks.registry import UnknownTask

    node = Coordinator(config)
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    received = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            logger.warning("Shutting down (press Ctrl+C again to stop at once)")
            stop.set()
        else:
            main_task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await node.start()
        except (BrokerUnavailable, OSError, UnknownTask, ValueError) as e:
            raise click.ClickException(str(e)) from None
        except asyncio.TimeoutError:
            raise click.ClickException("the MQTT broker accepted the connection but never confirmed the subscription") from None
        click.echo(f"Hearth coordinator ready: {node.url}", err=True)
        await stop.wait()
    finally:
        try:
            await node.stop()
        except asyncio.CancelledError:
            node.force_stop()
            raise


@click.group()
def swarm() -> None:
    """Define and list swarms on a coordinator."""


def _coordinator_option(function):
    return click.option("--coordinator", "url", default=DEFAULT_COORDINATOR, show_default=True,
                        help="Base URL of the coordinator.")(function)  # fmt: skip


def _request(method: str, url: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = httpx.request(method, url, timeout=120, **kwargs)
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach the coordinator at {url}: {e}") from None
    try:
        body = response.json()
    except ValueError:
        raise click.ClickException(f"{url} answered {response.status_code} without JSON; is it a Hearth coordinator?") from None
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise click.ClickException(f"the coordinator refused ({response.status_code}): {message or response.text[:200]}")
    return body


def parse_task_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as JSON when it parses (numbers, true/false), else kept as text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--task-option")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options[key] = parsed if isinstance(parsed, (bool, int, float, str)) else value
    return options


def parse_assets(pairs: tuple[str, ...]) -> dict[str, Path]:
    """NAME=FILE pairs → {name: existing file}."""
    files = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        path = Path(file).expanduser()
        if not sep or not name or not file:
            raise click.BadParameter(f"{pair!r} is not NAME=FILE", param_hint="--asset")
        if not path.is_file():
            raise click.BadParameter(f"{file!r} is not a file", param_hint="--asset")
        files[name] = path
    return files


def upload_assets(files: dict[str, Path], url: str, token: str) -> dict[str, str]:
    """Upload each file (streamed) to the coordinator; {name: sha256} for the swarm definition."""
    uploaded = {}
    for name, path in files.items():
        with open(path, "rb") as f:
            answer = _request("POST", f"{url.rstrip('/')}/api/v1/assets", content=f,
                              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})  # fmt: skip
        click.echo(f"Uploaded {path} as {name} ({answer['size']} bytes, sha256 {answer['sha256'][:12]}…)")
        uploaded[name] = answer["sha256"]
    return uploaded


def privacy_settings(clip_norm, noise_multiplier, delta, epsilon) -> Optional[dict[str, float]]:
    given = {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier, "delta": delta, "epsilon_budget": epsilon}
    if all(value is None for value in given.values()):
        return None
    missing = [f"--dp-{name.replace('_', '-').replace('-budget', '')}" for name, value in given.items() if value is None]
    if missing:
        raise click.UsageError(f"differential privacy needs all four settings; missing {', '.join(missing)}")
    return given


@swarm.command("create")
@click.argument("swarm_id")
@click.option("--task", default="spirals", show_default=True, help="Training task (see `hearth tasks`).")
@click.option("--title", help="Human-readable title (default: the task's description).")
@click.option("--target-batch-size", type=click.IntRange(min=1), help="Samples per swarm-wide epoch.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per local step.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True))
@click.option("--matchmaking-time", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--averaging-timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--average-state-every", type=click.IntRange(min=1),
              help="Average parameters and optimizer statistics every N epochs (gradients: every epoch).")
@click.option("--compression", type=click.Choice(["none", "fp16", "int8"]),
              help="What travels between peers: fp32 tensors (none), fp16 or 8-bit.")
@click.option("--local-updates/--no-local-updates", default=None,
              help="DiLoCo-like: peers step locally and average only the state, every --average-state-every epochs.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), help="Learning-rate warm-up, in epochs.")
@click.option("--access", type=click.Choice(["open", "token"]), default="open", show_default=True,
              help="token: only registered, non-banned volunteers' nodes get the access tokens peers require.")
@click.option("--task-option", "task_options", multiple=True, metavar="KEY=VALUE",
              help="An option for the task (see `hearth tasks describe`); repeatable.")
@click.option("--asset", "assets", multiple=True, metavar="NAME=FILE",
              help="A file for the task (tiny-lm: text=corpus.txt; lm-finetune: checkpoint=model.pt), uploaded to "
                   "the coordinator, which serves it to the nodes; repeatable.")
@click.option("--data", type=click.Choice(["shared", "local"]), default="shared", show_default=True,
              help="local: each node trains on its owner's dataset, which never leaves the node.")
@click.option("--dp-clip-norm", type=click.FloatRange(min=0, min_open=True),
              help="Differential privacy (data: local): per-sample gradient clip norm.")
@click.option("--dp-noise-multiplier", type=click.FloatRange(min=0), help="Gaussian noise, × the clip norm.")
@click.option("--dp-delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), help="δ of (ε, δ).")
@click.option("--dp-epsilon", type=click.FloatRange(min=0, min_open=True),
              help="ε budget: a node stops contributing once it has spent this much.")
@_coordinator_option
@click.option("--token", help="Operator token (default: read from --token-file).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=default_token_file,
              show_default="<default data dir>/operator-token")  # fmt: skip
def create(swarm_id, task, title, target_batch_size, batch_size, learning_rate, matchmaking_time, averaging_timeout,
           average_state_every, compression, local_updates, warmup_epochs, access, task_options, assets, data, dp_clip_norm,
           dp_noise_multiplier, dp_delta, dp_epsilon, url, token, token_file) -> None:  # fmt: skip
    """Create swarm SWARM_ID on the coordinator (needs the operator token)."""
    if token is None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError:
            raise click.UsageError(
                f"no operator token: pass --token, or --token-file (the coordinator writes {token_file} at first start)"
            ) from None
    body = {"swarm_id": swarm_id, "task": task, "title": title, "target_batch_size": target_batch_size,
            "batch_size": batch_size, "learning_rate": learning_rate, "matchmaking_time": matchmaking_time,
            "averaging_timeout": averaging_timeout, "average_state_every": average_state_every,
            "compression": compression, "local_updates": local_updates, "warmup_epochs": warmup_epochs,
            "access": access, "task_options": parse_task_options(task_options), "data": data,
            "assets": upload_assets(parse_assets(assets), url, token),
            "privacy": privacy_settings(dp_clip_norm, dp_noise_multiplier, dp_delta, dp_epsilon)}  # fmt: skip
    manifest = _request("POST", f"{url.rstrip('/')}/api/v1/swarms", json={k: v for k, v in body.items() if v is not None},
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    click.echo(f"Created swarm {manifest['swarm_id']} (run_id {manifest['run_id']}).")
    click.echo(f"Volunteers join with: hearth join {url.rstrip('/')}/api/v1/swarms/{manifest['swarm_id']}")


@swarm.command("list")
@_coordinator_option
def list_swarms(url) -> None:
    """List the coordinator's swarms with their live progress."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    base = url.rstrip("/")
    swarms, page = [], f"{base}/api/v1/swarms?limit=1000"
    while page is not None:  # every page: `next` is the following one
        body = _request("GET", page)
        swarms += body["swarms"]
        page = base + body["next"] if body.get("next") else None
    table = Table("swarm", "task", "title", "epoch", "peers", "samples/s", "run_id")
    for s in swarms:
        p = s.get("progress", {})
        epoch = "-" if p.get("epoch") is None else str(p["epoch"])
        table.add_row(s["swarm_id"], s["task"], Text(s["title"]), epoch, str(p.get("peers_online", 0)),
                      f"{p.get('samples_per_second', 0):.0f}", s["run_id"])  # fmt: skip
    Console().print(table)


@click.command()
@_coordinator_option
@click.option("--limit", type=click.IntRange(1, 1000), default=25, show_default=True, help="Volunteers to show.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page of --limit volunteers.")
def leaderboard(url, limit, page) -> None:
    """Show the volunteers' leaderboard."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    offset = (page - 1) * limit
    board = _request("GET", f"{url.rstrip('/')}/api/v1/leaderboard", params={"limit": limit, "offset": offset})
    try:
        entries, total = board["volunteers"], board["total"]
    except (KeyError, TypeError):
        raise click.ClickException(f"{url} answered without a leaderboard; is it a Hearth coordinator?") from None
    table = Table("#", "volunteer", "team", "credit", "samples", "last seen", "online", title="Hearth leaderboard")
    for e in entries:
        last_seen = (e["last_seen"] or "never")[:19].replace("T", " ")
        # Names are volunteers' own text: Text() shows "[bold]" as typed instead of reading it as rich markup.
        table.add_row(str(e["rank"]), Text(e["name"]), Text(e["team"] or ""), f"{e['credit']:,.2f}",
                      f"{e['samples']:,}", last_seen, str(e["nodes_online"]))  # fmt: skip
    Console().print(table)
    shown = f"{offset + 1}–{offset + len(entries)}" if entries else "none"
    more = f"; next: --page {page + 1}" if board.get("next") else ""
    Console(stderr=True).print(f"{shown} of {total} volunteers{more}", highlight=False)


from coordinator.access_cli import broker_files  # noqa: E402 (a command of its own module, on this group)

coordinator.add_command(broker_files)
