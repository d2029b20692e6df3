"""The local control channel: a unix socket (mode 0600, in the node's private data dir) that only the same OS
user can reach. One JSON request per connection, one JSON reply: `status`, `pause`, `resume`, `snooze`, `stop`, `join`."""

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
Handler = Callable[[dict], dict]


class ControlError(RuntimeError):
    pass


class NotRunning(ControlError):
    """No node answers on this data dir's control socket."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / "control.sock"


class ControlServer:
    """Serves requests on a background thread; `handlers` maps a command name to fn(request) -> reply. Commands
    named in `fixed` keep their handler under any `overlay`."""

    def __init__(self, path: Path, handlers: dict[str, Handler], fixed: tuple[str, ...] = ()):
        self.path, self.handlers, self.fixed = path, handlers, fixed
        if path.exists():
            path.unlink()  # a stale socket of a crashed run (the instance lock guarantees we are alone)
        outer = self

        class RequestHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(json.dumps(outer.dispatch(self.rfile.readline(MAX_REQUEST_BYTES))).encode() + b"\n")

        old_umask = os.umask(0o177)  # the socket is created 0600: only this OS user may connect
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), RequestHandler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hearth-control", daemon=True)

    def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            handler = self.handlers[request["command"]]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": f"unknown or malformed request; commands: {', '.join(self.handlers)}"}
        try:
            return {"ok": True, **handler(request)}
        except (ValueError, ControlError) as e:
            return {"ok": False, "error": str(e)}

    @contextlib.contextmanager
    def overlay(self, handlers: dict[str, Handler]):
        """Serve these handlers too (over the others, except the fixed ones) until the block ends."""
        base = self.handlers
        self.handlers = {**base, **{name: handler for name, handler in handlers.items() if name not in self.fixed}}
        try:
            yield
        finally:
            self.handlers = base

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def request(path: Path, command: str, timeout: float = 5.0, **fields) -> dict[str, Any]:
    """Send one command to a running node; raises ControlError with a sentence for the volunteer."""
    if not path.exists():
        raise NotRunning(f"no Hearth node is running here (no control socket at {path})")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(path))
            client.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
            reply = client.makefile("rb").readline()
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotRunning(f"no Hearth node is running here (stale control socket at {path})") from None
    except OSError as e:
        raise ControlError(f"could not talk to the node: {e}") from None
    answer = json.loads(reply) if reply else {"ok": False, "error": "the node closed the connection"}
    if not answer.pop("ok", False):
        raise ControlError(answer.get("error", "the node refused the request"))
    return answer
