"""Entry point of the supervised node process: `python -m node.worker CONFIG_JSON [VERBOSITY [stay]]`.
`hearth join` and `hearth node start` run it in its own process group so that nothing hivemind starts can outlive
the node."""

import json
import logging
import os
import sys
import threading

from node.config import NodeConfig
from node.daemon import install_stop_handlers
from node.host import NodeHost
from node.instance import AlreadyRunning, InstanceLock, die_with_parent

logger = logging.getLogger("node")


def main(argv: list[str]) -> int:
    """argv: the node's settings as JSON, the verbosity, and "stay" to wait for the next join when a run ends."""
    config = NodeConfig.from_json_dict(json.loads(argv[0]))
    verbosity = int(argv[1]) if len(argv) > 1 else 0
    stay = argv[2:3] == ["stay"]
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent()  # if the supervisor is killed, even by SIGKILL, shut down gracefully too
    stop = threading.Event()
    install_stop_handlers(stop)
    lock = InstanceLock(config.data_dir)
    try:
        lock.acquire()
        return NodeHost(config, stop, stay).serve()
    except AlreadyRunning as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Forced stop.", file=sys.stderr)
        return 130
    except Exception:  # a bug: end now, as hivemind's threads would keep a returning process alive forever
        logger.exception("The node process failed")
        logging.shutdown()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
