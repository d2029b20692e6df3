"""Several PCs, one account, through the real `hearth` command against a real coordinator process: PC A registers
as `hearth join` does, PC B attaches with the weak key, B's reports credit the same volunteer, and the weak key
or B's node key cannot do what needs the account key."""

import asyncio
import os

import aiomqtt
import pytest

from coordinator.broker_acl import load_or_create_secret, password_for
from hearth.processes import wait_until
from node.account_cli import attach_this_node
from node.accounts import ACCOUNT_KEY_FILE, ATTACH_KEY_FILE
from node.config import NodeConfig
from node.coordinator_client import CoordinatorClient
from node.identity import NodeIdentity
from protocol.envelope import seal
from protocol.topics import report_topic
from tests.conftest import run_hearth
from tests.coordinator.helpers import report


def test_two_pcs_one_account_through_the_cli(coordinator, tmp_path, capsys):
    from node.daemon import NodeError, register  # what `hearth join` runs at start

    env = {k: v for k, v in os.environ.items() if k not in ("HEARTH_ACCOUNT_KEY", "HEARTH_ATTACH_KEY")}
    env["HEARTH_CONFIG"] = str(tmp_path / "config.toml")
    pc_a, pc_b, pc_c = tmp_path / "pc-a", tmp_path / "pc-b", tmp_path / "pc-c"

    def hearth(pc, *args, extra_env=None):
        done = run_hearth(*args, "--coordinator", coordinator.url, "--data-dir", str(pc), env={**env, **(extra_env or {})})
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def refused(done, words: str) -> None:
        assert done.returncode == 1 and words in done.stderr, (done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    # PC A: first run creates the account; both keys are kept next to the node key, owner-only.
    client = CoordinatorClient(coordinator.url, connect_timeout=10)
    try:
        register(client, NodeIdentity.load_or_create(pc_a), NodeConfig(coordinator.url, name="two-pcs", data_dir=pc_a))
    finally:
        client.close()
    for name in (ACCOUNT_KEY_FILE, ATTACH_KEY_FILE):
        assert (pc_a / name).stat().st_mode & 0o777 == 0o600
    attach_key = (pc_a / ATTACH_KEY_FILE).read_text().strip()
    shown = hearth(pc_a, "account", "show")
    assert shown.returncode == 0 and "account:    two-pcs" in shown.stdout and attach_key in shown.stdout, shown.stderr

    # PC B: a wrong key is refused before anything starts, in one clear line.
    refused(run_hearth("join", coordinator.url, "--data-dir", str(pc_b), "--attach", attach_key[:-3] + "xyz",
                       env=env), "wrong attach key")  # fmt: skip
    refused(hearth(pc_b, "account", "attach", "not-a-key"), "not a Hearth account or attach key")
    attached = hearth(pc_b, "account", "attach", attach_key)
    assert attached.returncode == 0 and "attached to account 'two-pcs'" in attached.stderr, attached.stderr
    node_a, node_b = NodeIdentity.load_or_create(pc_a).node_id, NodeIdentity.load_or_create(pc_b).node_id
    shown = hearth(pc_b, "account", "show")
    assert shown.returncode == 0 and "nodes:      2" in shown.stdout, shown.stderr
    assert f"{node_a[:12]}" in shown.stdout and f"{node_b[:12]}" in shown.stdout and "(this PC)" in shown.stdout

    # B's reports count for the same volunteer (pending: no training stands behind this one, so the coordinator's
    # default work check holds it). B logs in to the broker as itself, with the password its attach gave it.
    key_b = NodeIdentity.load_or_create(pc_b).key
    login = {"username": node_b, "password": password_for(load_or_create_secret(coordinator.data_dir), node_b)}

    async def publish() -> None:
        host, port = coordinator.info["broker_url"].removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), **login) as mqtt:
            await mqtt.publish(report_topic("spirals", node_b), seal(report(key_b, seq=1, samples=432), key_b), qos=1)

    asyncio.run(publish())
    volunteer = wait_until(lambda: (v := coordinator.get("/api/v1/volunteers/two-pcs"))["audit"] and v, 20,
                           what="B's report to reach the account")  # fmt: skip
    assert [(r["node_id"], r["samples"]) for r in volunteer["audit"]] == [(node_b, 432)]
    assert {n["node_id"] for n in volunteer["nodes"]} == {node_a, node_b}

    # What needs the account key: refused on B, which holds only the weak key; B's node key cannot change team
    # even with the weak key given as if it were the account key.
    refused(hearth(pc_b, "account", "attach-key", "--rotate"), "holds no account key")
    refused(hearth(pc_b, "account", "detach", node_a[:8]), "holds no account key")
    refused(hearth(pc_b, "team", "create", "Stolen"), "holds no account key")
    refused(hearth(pc_b, "account", "rename", "stolen"), "holds no account key")
    refused(hearth(pc_b, "team", "create", "Stolen", extra_env={"HEARTH_ACCOUNT_KEY": attach_key}),
            "the attach key can only attach nodes")  # fmt: skip

    # A holds the account key: team, rotation (the old weak key stops attaching), detach.
    created = hearth(pc_a, "team", "create", "Two PCs")
    assert created.returncode == 0 and "two-pcs is now in team 'Two PCs' (founder)" in created.stdout, created.stderr
    rotated = hearth(pc_a, "account", "attach-key", "--rotate")
    new_key = rotated.stdout.strip()
    assert rotated.returncode == 0 and new_key.startswith("attach-") and new_key != attach_key, rotated.stderr
    assert (pc_a / ATTACH_KEY_FILE).read_text().strip() == new_key
    refused(hearth(pc_c, "account", "attach", attach_key), "wrong attach key")
    # `hearth join --attach` at every start (HEARTH_ATTACH_KEY in a service): B, attached with the old key, skips
    # the step; given a key that is refused, a registered PC keeps running in its account with a warning.
    assert attach_this_node(coordinator.url, pc_b, attach_key, on_join=True) is None
    assert attach_this_node(coordinator.url, pc_b, attach_key[:-3] + "xyz", on_join=True) is None
    assert "wrong attach key" in capsys.readouterr().err
    detached = hearth(pc_a, "account", "detach", node_b[:8])
    assert detached.returncode == 0 and f"Detached node {node_b[:12]}" in detached.stdout, detached.stderr
    renamed = hearth(pc_a, "account", "rename", " Two PCs Person ")
    assert renamed.returncode == 0 and "two-pcs is now Two PCs Person." in renamed.stdout, renamed.stderr
    refused(hearth(pc_a, "account", "rename", "bad\tname"), "the name must not contain control characters")
    shown = hearth(pc_a, "account", "show")
    assert "account:    Two PCs Person, team 'Two PCs' (founder)" in shown.stdout, shown.stdout
    assert "nodes:      1" in shown.stdout and "detached" in shown.stdout

    # What `hearth join` then says on B (its key revoked) and on a new PC choosing a taken name.
    client = CoordinatorClient(coordinator.url, connect_timeout=10)
    try:
        for pc, name, words in ((pc_b, None, "was detached from its account"), (pc_c, "Two PCs Person", "--name")):
            with pytest.raises(NodeError, match=words) as error:
                register(client, NodeIdentity.load_or_create(pc), NodeConfig(coordinator.url, name=name, data_dir=pc))
            assert ("choose another with --name" in str(error.value)) == (name is not None)
    finally:
        client.close()
