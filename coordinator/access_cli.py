"""`hearth volunteer ban|unban NAME`: the operator's ban (operator token). A banned volunteer's nodes get no more
access tokens, so they fall out of private swarms within one token lifetime (`coordinator serve --token-lifetime`)."""

from pathlib import Path
from urllib.parse import quote

import click

from coordinator.config import DEFAULT_HTTP_PORT, default_data_dir, default_token_file

DEFAULT_COORDINATOR = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"


def _coordinator_option(function):
    return click.option("--coordinator", "url", default=DEFAULT_COORDINATOR, show_default=True,
                        help="Base URL of the coordinator.")(function)  # fmt: skip


def _request(*args, **kwargs):
    from coordinator.cli import _request as request  # coordinator.cli imports this module: not at import time

    return request(*args, **kwargs)


@click.group()
def volunteer() -> None:
    """Ban or unban a volunteer on a coordinator (operators)."""


def _token_options(function):
    function = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=default_token_file,
                            show_default="<default data dir>/operator-token")(function)  # fmt: skip
    return click.option("--token", help="Operator token (default: read from --token-file).")(function)


def _operator_token(token, token_file) -> str:
    if token is not None:
        return token
    try:
        return Path(token_file).read_text().strip()
    except OSError:
        raise click.UsageError(f"no operator token: pass --token, or --token-file (the coordinator writes "
                               f"{token_file} at first start)") from None  # fmt: skip


@volunteer.command()
@click.argument("name")
@_coordinator_option
@_token_options
def ban(name, url, token, token_file) -> None:
    """Ban volunteer NAME: no more access tokens for its nodes."""
    answer = _request("POST", f"{url.rstrip('/')}/api/v1/volunteers/{quote(name, safe='')}/ban",
                      headers={"Authorization": f"Bearer {_operator_token(token, token_file)}"})  # fmt: skip
    click.echo(f"Banned {answer['name']} (since {answer['banned_at']}); its nodes leave private swarms when their "
               "access tokens expire.")  # fmt: skip


@volunteer.command()
@click.argument("name")
@_coordinator_option
@_token_options
def unban(name, url, token, token_file) -> None:
    """Lift the ban of volunteer NAME."""
    answer = _request("DELETE", f"{url.rstrip('/')}/api/v1/volunteers/{quote(name, safe='')}/ban",
                      headers={"Authorization": f"Bearer {_operator_token(token, token_file)}"})  # fmt: skip
    click.echo(f"Lifted the ban of {answer['name']}.")


@click.command("broker-files")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=default_data_dir,
              show_default="<platform data dir>", help="The coordinator's data directory (its broker secret).")
@click.option("--db", "db_url", metavar="URL", help="SQLAlchemy async database URL (default: SQLite in the data dir).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for `passwd` and `acl` (Mosquitto's password_file and acl_file).")
def broker_files(data_dir, db_url, out) -> None:
    """Write Mosquitto's password and ACL files for the coordinator and every registered node. Re-run after new
    registrations (e.g. from cron) and send mosquitto SIGHUP to reload them."""
    import asyncio

    from coordinator.broker_acl import load_or_create_secret, mosquitto_files
    from coordinator.config import CoordinatorConfig

    config = CoordinatorConfig(data_dir=data_dir, db_url=db_url)
    config.ensure_data_dir()
    node_ids = asyncio.run(_node_ids(config.database_url))
    passwd, acl = mosquitto_files(out, load_or_create_secret(config.data_dir), node_ids)
    click.echo(f"Wrote {passwd} ({len(node_ids)} node(s) and the coordinator) and {acl}. In mosquitto.conf:\n"
               f"  allow_anonymous false\n  password_file {passwd}\n  acl_file {acl}\n"
               "then start the coordinator with --broker mqtt://HOST:PORT; reload mosquitto (SIGHUP) after each run.")


async def _node_ids(database_url: str) -> list[str]:
    from sqlalchemy import select

    from coordinator import db

    engine = db.create_engine(database_url)
    try:
        await db.create_schema(engine)  # a coordinator that never ran yet: an empty ledger
        async with engine.connect() as conn:
            n, v = db.nodes, db.volunteers  # neither detached nodes nor those of banned volunteers
            rows = await conn.execute(select(n.c.node_id).join(v, v.c.id == n.c.volunteer_id)
                                      .where(n.c.detached_at.is_(None), v.c.banned_at.is_(None)))  # fmt: skip
            return sorted(rows.scalars())
    finally:
        await engine.dispose()
