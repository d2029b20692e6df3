"""A throwaway PostgreSQL cluster on 127.0.0.1 as plain processes, for tests and benchmarks: initdb into a
temporary directory, a free port, trust authentication for the `postgres` user, stopped and deleted at the end.
PostgreSQL refuses to run as root, so as root initdb and the server run as the `postgres` user (runuser).

Library use: `with PostgresCluster() as pg: ... pg.url` (a postgresql+asyncpg:// URL of the `postgres` database).
Command line:
    python scripts/postgres.py [--port PORT] [--no-fsync]   # prints the URL, runs until Ctrl+C
    python scripts/postgres.py start --dir DIR [--no-fsync]  # prints the URL and returns (CI)
    python scripts/postgres.py stop --dir DIR
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

INSTALL_HINT = "install it: apt-get install postgresql"
SEARCH_DIRS = ["/usr/local/bin", *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
START_TIMEOUT = 60


class PostgresMissing(RuntimeError):
    pass


def postgres_bin_dir() -> Optional[Path]:
    """The directory holding initdb and pg_ctl (Debian keeps them off PATH in /usr/lib/postgresql/N/bin)."""
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p] + [Path(d) for d in SEARCH_DIRS]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresCluster:
    """One cluster in `work_dir` (a new temporary directory unless given). fsync=False trades crash safety for
    speed: right for tests, wrong for a benchmark meant to reflect a real deployment."""

    def __init__(self, port: int = 0, work_dir: Optional[Path] = None, fsync: bool = True):
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise PostgresMissing(f"PostgreSQL (initdb, pg_ctl) is not installed; {INSTALL_HINT}")
        self.bin_dir, self.requested_port, self.fsync = bin_dir, port, fsync
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="hearth-postgres-")) if work_dir is None else Path(work_dir)
        self.data_dir = self.work_dir / "data"
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*_as_server_user(), *argv], capture_output=True, text=True, **kwargs)

    def start(self) -> "PostgresCluster":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.work_dir, user.pw_uid, user.pw_gid)
        init = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-sync", timeout=120)  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        for _ in range(5):  # a free port can be taken between choosing it and the server binding it
            port = self.requested_port or free_port()
            options = f"-p {port} -k {self.work_dir} -c listen_addresses=127.0.0.1"
            if not self.fsync:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            started = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT),
                                "-l", str(self.work_dir / "postgres.log"), "-o", options, "start", timeout=START_TIMEOUT + 30)  # fmt: skip
            if started.returncode == 0:
                self.port = port
                (self.work_dir / "url").write_text(self.url)
                return self
            if self.requested_port:
                break
        log = self.work_dir / "postgres.log"
        raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["run", "start", "stop"], default="run",
                        help="run: until Ctrl+C (default); start/stop: a cluster in --dir that outlives this command")  # fmt: skip
    parser.add_argument("--dir", type=Path, help="work directory for start/stop (deleted by stop)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--no-fsync", action="store_true", help="faster, not crash-safe (tests)")
    args = parser.parse_args()
    if args.action != "run" and args.dir is None:
        parser.error(f"{args.action} needs --dir")
    try:
        cluster = PostgresCluster(args.port, args.dir, fsync=not args.no_fsync)
        if args.action == "stop":
            cluster.stop()
            shutil.rmtree(args.dir, ignore_errors=True)
            return
        cluster.start()
    except (PostgresMissing, RuntimeError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(cluster.url, flush=True)
    if args.action == "start":
        return
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's background job starts with it ignored
        signal.signal(signum, signal.default_int_handler)
    print("PostgreSQL is running; Ctrl+C stops it and deletes its data", file=sys.stderr, flush=True)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
