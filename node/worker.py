"""Entry point of the supervised node process: `python -m node.worker CONFIG_JSON`.
`hearth join` runs it in its own process group so that nothing hivemind starts can outlive the node."""

import json
import logging
import sys
import threading

from node.config import NodeConfig
from node.daemon import NodeError, install_stop_handlers, run_node
from node.tls import trust_process_wide
from node.instance import AlreadyRunning, InstanceLock, die_with_parent

logger = logging.getLogger("node")


def main(argv: list[str]) -> int:
    config = NodeConfig.from_json_dict(json.loads(argv[0]))
    verbosity = int(argv[1]) if len(argv) > 1 else 0
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent()  # if the supervisor is killed, even by SIGKILL, shut down gracefully too
    stop = threading.Event()
    install_stop_handlers(stop)
    if config.ca_cert:  # every HTTPS and MQTT-over-TLS client of this process trusts it too
        try:
            trust_process_wide(config.ca_cert, config.data_dir)
        except ValueError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
    lock = InstanceLock(config.data_dir)
    try:
        lock.acquire()
        summary = run_node(config, stop)
    except (NodeError, AlreadyRunning) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Forced stop.", file=sys.stderr)
        return 130
    print(
        f"Stopped at epoch {summary['epoch']}: contributed {summary['samples']:,} samples, "
        f"{summary['reports_acknowledged']} report(s) in the coordinator's ledger, {summary['reports_waiting']} waiting in the outbox.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
