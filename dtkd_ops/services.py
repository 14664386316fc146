"""The team stack's servers on this machine: PostgreSQL and an MLflow tracking server on it.

    python -m dtkd_ops.services up|down|status|env     (``make team-up`` runs ``up`` and then
                                                         registers the ZenML side: pipelines.team_stack)

* **PostgreSQL**: Debian's ``postgresql`` package (``make team-up`` installs it when missing and
  it runs as root). A private cluster under ``$DTKD_HOME/team/postgres``, listening on 127.0.0.1
  only, password authentication (scram-sha-256) for the role ``dtkd``; databases ``mlflow`` (the
  tracking store and registry) and ``mlflow_auth`` (the server's users). As root, the server runs
  as the ``postgres`` system user (PostgreSQL refuses root).
* **MLflow tracking server** (``mlflow server --app-name basic-auth``) on that database, with a
  proxied artifact store (``--artifacts-destination``: clients upload through the server, they
  need no access to its disk) and HTTP basic auth: an admin user whose password is generated once.
  ZenML's MLflow tracker requires credentials for a remote tracking URI; so would any real server.

State, credentials (mode 0600) and logs live in ``$DTKD_HOME/team``; ``env`` prints the variables a
client needs (``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME/PASSWORD``, ``DTKD_LOCK_URL``:
the PostgreSQL advisory lock that makes concurrent promotes from different processes or machines
safe). No zenml import here (dtkd_ops never imports it).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dtkd_ops.home import dtkd_home

ROLE = "dtkd"
DATABASES = ("mlflow", "mlflow_auth")


class ServiceError(RuntimeError):
    """A service could not start or stop; the message names it and its log file."""


@dataclass(frozen=True)
class TeamPaths:
    root: Path

    @classmethod
    def default(cls) -> "TeamPaths":
        return cls(dtkd_home() / "team")

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def state(self) -> Path:
        return self.root / "state.json"  # ports, credentials: 0600

    @property
    def artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"


# ---------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    """The PostgreSQL server binaries (Debian keeps them out of PATH, one folder per version)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise ServiceError("PostgreSQL is not installed: `apt-get install postgresql` (make team-up does it as root)")
    return versions[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, env: Optional[dict] = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_state(paths: TeamPaths) -> dict:
    return json.loads(paths.state.read_text()) if paths.state.is_file() else {}


def _state(paths: TeamPaths) -> dict:
    """Ports and credentials, made once and kept (a restarted stack keeps its users and URLs)."""
    state = load_state(paths)
    if not state:
        state = {"pg_port": free_port(), "mlflow_port": free_port(), "pg_password": secrets.token_urlsafe(24),
                 "mlflow_user": "admin", "mlflow_password": secrets.token_urlsafe(24),
                 "flask_secret": secrets.token_urlsafe(32)}
        _write_private(paths.state, json.dumps(state, indent=1))
    return state


def database_url(state: dict, database: str, driver: str = "postgresql") -> str:
    return f"{driver}://{ROLE}:{state['pg_password']}@127.0.0.1:{state['pg_port']}/{database}"


def tracking_uri(state: dict) -> str:
    return f"http://127.0.0.1:{state['mlflow_port']}"


def client_env(paths: Optional[TeamPaths] = None) -> dict[str, str]:
    """What a client (the CLI gate, a pipeline run, a test) needs to use the team stack."""
    state = load_state(paths or TeamPaths.default())
    if not state:
        raise ServiceError("the team stack was never started: make team-up")
    return {"MLFLOW_TRACKING_URI": tracking_uri(state), "MLFLOW_TRACKING_USERNAME": state["mlflow_user"],
            "MLFLOW_TRACKING_PASSWORD": state["mlflow_password"], "DTKD_LOCK_URL": database_url(state, "mlflow")}


# ---------------------------------------------------------------------------- PostgreSQL


def postgres_up(paths: TeamPaths, state: dict) -> None:
    bindir, data = _pg_bin(), paths.postgres
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = paths.root / ".pgpass-init"
        _write_private(pwfile, state["pg_password"] + "\n")
        if os.geteuid() == 0:  # the postgres user must own the cluster and read the password file once
            for p in (paths.root, data, pwfile):
                shutil.chown(p, "postgres", "postgres")
        try:
            _run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={pwfile}",
                               "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
    if subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "status"]),
                      capture_output=True).returncode != 0:
        log = paths.log("postgres")
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        options = f"-p {state['pg_port']} -c listen_addresses=127.0.0.1 -k {data}"
        _run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                           "start"]), f"PostgreSQL (log: {log})")
    _create_databases(state)


def _create_databases(state: dict) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url(state, "postgres"))
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
    finally:
        conn.close()


def postgres_down(paths: TeamPaths) -> None:
    if (paths.postgres / "PG_VERSION").is_file():
        subprocess.run(_as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(paths.postgres), "-m", "fast", "-w",
                                     "stop"]), capture_output=True)


# ---------------------------------------------------------------------------- MLflow server


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def mlflow_up(paths: TeamPaths, state: dict, timeout: float = 120.0) -> None:
    url = tracking_uri(state)
    if _healthy(url):
        return
    auth_ini = paths.root / "basic_auth.ini"
    _write_private(auth_ini, "\n".join([
        "[mlflow]", "default_permission = READ", f"database_uri = {database_url(state, 'mlflow_auth')}",
        f"admin_username = {state['mlflow_user']}", f"admin_password = {state['mlflow_password']}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth", ""]))
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    # the CSRF secret of the server's login forms: fixed per stack, so a restart keeps sessions valid
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": state["flask_secret"]}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
           "--backend-store-uri", database_url(state, "mlflow"),
           "--artifacts-destination", paths.artifacts.as_uri(), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(state["mlflow_port"]), "--workers", "1"]
    log = paths.log("mlflow")
    with open(log, "wb") as out:  # this start's log only: an error quotes it
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (paths.root / "mlflow.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"the MLflow server exited with {proc.returncode}; its log: {log}\n"
                               f"{log.read_text()[-3000:]}")
        if _healthy(url):
            return
        time.sleep(0.5)
    raise ServiceError(f"the MLflow server did not answer {url}/health within {timeout:.0f} s; its log: {log}")


def mlflow_down(paths: TeamPaths) -> None:
    pid_file = paths.root / "mlflow.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
        for _ in range(100):
            os.killpg(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the whole


def up(paths: Optional[TeamPaths] = None) -> dict[str, str]:
    """Start PostgreSQL and the MLflow server (idempotent); returns the client environment."""
    paths = paths or TeamPaths.default()
    state = _state(paths)
    postgres_up(paths, state)
    mlflow_up(paths, state)
    return client_env(paths)


def down(paths: Optional[TeamPaths] = None) -> None:
    paths = paths or TeamPaths.default()
    mlflow_down(paths)
    postgres_down(paths)


def status(paths: Optional[TeamPaths] = None) -> dict[str, bool]:
    paths = paths or TeamPaths.default()
    state = load_state(paths)
    if not state:
        return {"postgres": False, "mlflow": False}
    pg = subprocess.run(_as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(paths.postgres), "status"]),
                        capture_output=True).returncode == 0
    return {"postgres": pg, "mlflow": _healthy(tracking_uri(state))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dtkd_ops.services", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            env = up()
            print(f"PostgreSQL and MLflow server up: {env['MLFLOW_TRACKING_URI']} (state: {TeamPaths.default().root})")
        elif args.command == "down":
            down()
            print("team services stopped")
        elif args.command == "status":
            print(json.dumps(status()))
        else:
            print("\n".join(f"export {k}={v}" for k, v in client_env().items()))
    except ServiceError as err:
        print(f"dtkd_ops.services {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
