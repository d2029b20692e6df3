"""`hearth account show | attach KEY | attach-key [--rotate] | detach NODE | rename NAME | export | delete`, and the
attach step of `hearth join URL --attach KEY`: one account, several PCs. Keys live in the data dir (node/accounts.py)."""

import time
from pathlib import Path
from typing import Optional

import click

from node import accounts
from node.config import default_data_dir

coordinator_option = click.option("--coordinator", "coordinator_url", metavar="URL",
                                  help="Coordinator URL (default: the saved coordinator_url setting).")  # fmt: skip
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), help="Where this node's keys live.")


@click.group()
def account() -> None:
    """Your volunteer account: its PCs (nodes), its keys, its name."""


@account.command()
@coordinator_option
@data_dir_option
def show(coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Show the account: name, team, credit, each node, and the attach key for another PC."""
    with _session(coordinator_url, data_dir) as (client, identity, folder):
        key = _claim_if_needed(client, identity, folder) or accounts.any_key(folder)
        if key is None:
            raise click.ClickException("this PC holds no account or attach key; run `hearth join URL` first")
        detail = _call(client.account, key)
    team = f", team {detail['team']!r}" + (" (founder)" if detail["founder"] else "") if detail["team"] else ""
    click.echo(f"account:    {detail['name']}{team}")
    click.echo(f"credit:     {detail['credit']:.2f} (recent average {detail['recent_average_credit']:.2f}/day, "
               f"pending {detail['pending_credit']:.2f})")  # fmt: skip
    click.echo(f"nodes:      {sum(1 for n in detail['nodes'] if n['detached_at'] is None)}")
    for n in detail["nodes"]:
        state = "detached" if n["detached_at"] else ("online" if n["online"] else "offline")
        here = "  (this PC)" if n["node_id"] == identity.node_id else ""
        click.echo(f"  {n['node_id'][:12]}  {n['device'] or '-':<10} {state:<8} credit {n['credit']:.2f}{here}")
    attach_key = accounts.attach_key(folder)
    click.echo(f"attach key: {attach_key}  (on another PC: hearth join URL --attach KEY)" if attach_key else
               "attach key: not on this PC (make a new one: hearth account attach-key --rotate)")  # fmt: skip


@account.command()
@click.argument("key", envvar="HEARTH_ATTACH_KEY")
@coordinator_option
@data_dir_option
def attach(key: str, coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Attach this PC to your account with KEY, the attach key `hearth account show` prints on your first PC (the
    same as `hearth join URL --attach KEY`, without starting to train)."""
    session = _session(coordinator_url, data_dir)
    attach_this_node(session.url, session.folder, key)


@account.command("attach-key")
@click.option("--rotate", is_flag=True, help="Make a new attach key; the old one stops working (needs the account key).")
@coordinator_option
@data_dir_option
def attach_key_command(rotate: bool, coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Print the attach key that lets another PC join this account, or make a new one."""
    if not rotate:
        folder = _data_dir(data_dir)
        key = accounts.attach_key(folder)
        if key is None:
            raise click.ClickException("no attach key on this PC; make one with `hearth account attach-key --rotate`")
        click.echo(key)
        return
    with _session(coordinator_url, data_dir) as (client, identity, folder):
        answer = _call(client.rotate_attach_key, account_key_for(client, identity, folder))
    accounts.save_keys(folder, answer)
    click.echo(answer["attach_key"])
    click.echo("The old attach key no longer works; PCs already attached keep reporting.", err=True)


@account.command()
@click.argument("node")
@coordinator_option
@data_dir_option
def detach(node: str, coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Detach NODE (a node id or its first characters, from `hearth account show`) from the account: its key is
    revoked for good; the credit it earned stays yours."""
    with _session(coordinator_url, data_dir) as (client, identity, folder):
        key = account_key_for(client, identity, folder)
        nodes = [n["node_id"] for n in _call(client.account, key)["nodes"] if n["detached_at"] is None]
        matches = [node_id for node_id in nodes if node_id.startswith(node.strip().lower())]
        if len(node.strip()) < 4:
            raise click.ClickException("give at least 4 characters of the node id (`hearth account show` lists them)")
        if len(matches) != 1:
            raise click.ClickException(f"{'no' if not matches else 'more than one'} attached node starts with "
                                       f"{node!r}; `hearth account show` lists them")  # fmt: skip
        _call(client.detach, key, matches[0])
    here = " (this PC: it can no longer report)" if matches[0] == identity.node_id else ""
    click.echo(f"Detached node {matches[0][:12]}{here}.")


@account.command()
@click.argument("name")
@coordinator_option
@data_dir_option
def rename(name: str, coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Change the account's display name (needs the account key)."""
    from protocol.messages import check_name

    try:
        name = check_name(name, "the name")
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    with _session(coordinator_url, data_dir) as (client, identity, folder):
        answer = _call(client.rename, account_key_for(client, identity, folder), name)
    profile_team = _profile_team(identity)
    identity.remember(answer["name"], profile_team)
    click.echo(f"{answer['previous_name']} is now {answer['name']}.")


@account.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write the JSON here (mode 0600) instead of standard output.")
@coordinator_option
@data_dir_option
def export_command(output: Optional[str], coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Everything the coordinator holds about your account, as JSON: your volunteer record, nodes, every report
    and grant, team and team actions, rejected messages (needs the account key)."""
    import json

    with _session(coordinator_url, data_dir) as (client, identity, folder):
        data = _call(client.export_account, account_key_for(client, identity, folder))
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
        return
    accounts.write_private(Path(output), text)
    click.echo(f"Wrote {len(data['reports'])} report(s) and {len(data['nodes'])} node(s) to {output}.", err=True)


@account.command("delete")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@coordinator_option
@data_dir_option
def delete_command(yes: bool, coordinator_url: Optional[str], data_dir: Optional[str]) -> None:
    """Erase your account's personal data at the coordinator (name, keys, your PCs' keys and details) and this
    PC's identity files. The credit you earned stays in team and swarm totals, under an anonymous placeholder.
    Stop the node on each of your PCs first. Cannot be undone; `hearth account export` first if you want a copy."""
    from node.instance import AlreadyRunning, InstanceLock

    session = _session(coordinator_url, data_dir)
    lock = InstanceLock(session.folder)  # a running node would go on signing with the key erased here
    try:
        lock.acquire()
    except AlreadyRunning as e:
        raise click.ClickException(f"{e}; stop it first (hearth node stop), and the nodes on your other PCs") from None
    with session as (client, identity, folder):
        key = account_key_for(client, identity, folder)
        name = identity.registered_name() or "this account"
        if not yes:
            click.confirm(f"Erase {name!r} and every PC attached to it at {client.base_url}? This cannot be undone",
                          abort=True)  # fmt: skip
        answer = _call(client.delete_account, key)
    removed = accounts.forget_identity(folder)
    lock.release()
    click.echo(f"Erased {name!r}: {answer['nodes']} PC(s) revoked, {answer['reports']} report(s) kept anonymously. "
               f"Removed from this PC: {', '.join(removed) or 'nothing'}.")  # fmt: skip


def attach_this_node(url: str, data_dir: Path, key: str, on_join: bool = False) -> Optional[dict]:
    """Register this PC's node key under the account KEY opens (an attach key, or the account key), keep the key,
    remember the account's name. Raises click.ClickException with the reason. `on_join` (`hearth join --attach`,
    maybe from HEARTH_ATTACH_KEY at every start): a PC already attached with this key skips the step, and a PC
    already registered keeps running in its account with a warning when the key is refused (e.g. rotated since)."""
    from node.coordinator_client import CoordinatorClient, CoordinatorError
    from node.identity import NodeIdentity
    from protocol.messages import NodeAttach

    key = key.strip()
    identity = NodeIdentity.load_or_create(Path(data_dir))
    registered = identity.registered_name()
    if on_join and registered and key in (accounts.attach_key(data_dir), accounts.account_key(data_dir)):
        return None
    client = CoordinatorClient(url, connect_timeout=30.0)
    try:
        answer = client.attach(NodeAttach(public_key=identity.key.public_key, time=time.time()), identity.key, key)
    except CoordinatorError as e:
        if on_join and registered:
            click.echo(f"Warning: {e}; this PC stays in account {registered!r}.", err=True)
            return None
        raise click.ClickException(str(e)) from None
    finally:
        client.close()
    accounts.save_keys(data_dir, {"account_key" if key.startswith("acct-") else "attach_key": key})
    identity.remember(answer["volunteer"]["name"], answer["volunteer"]["team"])
    click.echo(f"This PC (node {identity.node_id[:12]}) is attached to account {answer['volunteer']['name']!r}.",
               err=True)  # fmt: skip
    return answer


def account_key_for(client, identity, data_dir: Path) -> str:
    """The account key for account-level actions (teams too); ClickException when this PC has none."""
    key = accounts.account_key(data_dir) or _claim_if_needed(client, identity, data_dir)
    if not key:
        raise click.ClickException(accounts.NO_ACCOUNT_KEY)
    return key


def _claim_if_needed(client, identity, data_dir: Path) -> Optional[str]:
    """An account from before accounts has no keys yet: a fresh registration signed by this node key fetches them,
    once. Only for a node registered before (never creates an account here). The account key, or None."""
    from node.coordinator_client import CoordinatorError
    from protocol.messages import VolunteerRegistration

    name = identity.registered_name()
    if name is None or accounts.any_key(data_dir) is not None:
        return None
    registration = VolunteerRegistration(name=name, public_key=identity.key.public_key, time=time.time())
    try:
        answer = client.register(registration, identity.key)
    except CoordinatorError as e:
        raise click.ClickException(str(e)) from None
    accounts.save_keys(data_dir, answer)
    return answer.get("account_key")


def _profile_team(identity) -> Optional[str]:
    import json

    try:
        return json.loads(identity.profile_path.read_text()).get("team")
    except (OSError, ValueError):
        return None


def _call(function, *args):
    from node.coordinator_client import CoordinatorError

    try:
        return function(*args)
    except CoordinatorError as e:
        raise click.ClickException(str(e)) from None


def _data_dir(data_dir: Optional[str]) -> Path:
    from node.cli import _load_settings

    settings = _load_settings(data_dir=data_dir)
    return Path(settings.values.get("data_dir") or default_data_dir())


class _session:
    """(client, identity, data dir) for one command; the client is closed on the way out."""

    def __init__(self, coordinator_url: Optional[str], data_dir: Optional[str]):
        from node.cli import _load_settings

        settings = _load_settings(coordinator_url=coordinator_url, data_dir=data_dir)
        self.url = settings.values.get("coordinator_url")
        if not self.url:
            raise click.UsageError("no coordinator URL: give --coordinator URL, "
                                   "or save it with `hearth node config set coordinator_url URL`")  # fmt: skip
        self.folder = Path(settings.values.get("data_dir") or default_data_dir())

    def __enter__(self):
        from node.coordinator_client import CoordinatorClient
        from node.identity import NodeIdentity

        self.client = CoordinatorClient(self.url, connect_timeout=10.0)
        return self.client, NodeIdentity.load_or_create(self.folder), self.folder

    def __exit__(self, *exc) -> None:
        self.client.close()
