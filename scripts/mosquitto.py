"""A real Mosquitto broker on 127.0.0.1 as a plain process, for tests and benchmarks: free port, temporary
config (anonymous, no persistence), waits until it accepts connections, stops cleanly.

Library use: `with Mosquitto() as broker: ... broker.url`. Command line (runs until Ctrl+C):
    python scripts/mosquitto.py [--port PORT] [--tls-cert FILE --tls-key FILE [--tls-host HOST]]
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

INSTALL_HINT = "install it: apt-get install mosquitto"
START_TIMEOUT = 15.0


class MosquittoMissing(RuntimeError):
    pass


def mosquitto_binary() -> Optional[str]:
    """Path of the mosquitto executable (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process. Queues are unbounded for QoS 1 (the default 1,000 queued messages per client
    would drop reports whenever the coordinator falls behind a burst) and 100 messages may be in flight."""

    def __init__(self, port: int = 0, work_dir: Optional[Path] = None, auth_files: Optional[tuple[Path, Path]] = None,
                 tls_files: Optional[tuple[Path, Path]] = None, tls_host: str = "127.0.0.1"):  # fmt: skip
        """`auth_files`: (password file, ACL file), e.g. from coordinator.broker_acl.mosquitto_files: no anonymous
        clients, and topics as the ACL says. `tls_files`: (certificate, key), PEM: a second listener, MQTT over TLS
        on tls_host (nodes connect there, mqtts://); the plain one stays on 127.0.0.1 for the coordinator."""
        self.auth_files, self.tls_files, self.tls_host = auth_files, tls_files, tls_host
        self.tls_port = 0
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoMissing(f"the mosquitto binary is not installed; {INSTALL_HINT}")
        self.binary, self.requested_port = binary, port
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="hearth-mosquitto-")) if work_dir is None else work_dir
        self.port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> Optional[str]:
        return f"mqtts://{self.tls_host}:{self.tls_port}" if self.tls_files else None

    def _tls_listener(self) -> list[str]:
        if self.tls_files is None:
            return []
        self.tls_port = self.tls_port or free_port()
        return [f"listener {self.tls_port} {self.tls_host}", f"certfile {self.tls_files[0]}",
                f"keyfile {self.tls_files[1]}", "tls_version tlsv1.2"]  # fmt: skip

    def _config(self, port: int) -> str:
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "max_queued_messages 0", "max_inflight_messages 100", "log_dest stderr",
                 "log_type error", "log_type warning"]  # fmt: skip
        if self.auth_files is not None:
            lines[1] = "allow_anonymous false"
            lines += [f"password_file {self.auth_files[0]}", f"acl_file {self.auth_files[1]}"]
        lines += self._tls_listener()  # (listener options follow their `listener` line)
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to the `mosquitto` user, who cannot read our files
        return "\n".join(lines) + "\n"

    def start(self) -> "Mosquitto":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):  # a free port can be taken between choosing it and mosquitto binding it
            port = self.requested_port or free_port()
            config = self.work_dir / "mosquitto.conf"
            config.write_text(self._config(port))
            log = (self.work_dir / "mosquitto.log").open("w")
            self.process = subprocess.Popen([self.binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip
            log.close()
            deadline = time.monotonic() + START_TIMEOUT
            while self.process.poll() is None and time.monotonic() < deadline:
                if _accepts(port):
                    self.port = port
                    return self
                time.sleep(0.05)
            self.stop()
            if self.requested_port:
                break
        raise RuntimeError(f"mosquitto did not start:\n{(self.work_dir / 'mosquitto.log').read_text()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: also listen for MQTT over TLS")
    parser.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    parser.add_argument("--tls-host", default="127.0.0.1", help="interface of the TLS listener (0.0.0.0: all)")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls_files = (args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert else None
    try:
        broker = Mosquitto(args.port, tls_files=tls_files, tls_host=args.tls_host).start()
    except MosquittoMissing as e:
        raise SystemExit(str(e)) from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"mosquitto listening on {broker.url}" + (f" and {broker.tls_url} (TLS)" if tls_files else ""), flush=True)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()


if __name__ == "__main__":
    main()
