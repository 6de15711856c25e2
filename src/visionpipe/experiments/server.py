"""A team's tracking server on one machine: PostgreSQL (the machine's own server binaries) holding MLflow's
store and the sweeps' Optuna studies, and ``mlflow server --serve-artifacts`` on it, both in the background.

Everything lives under one folder (``data/server/`` by default): ``pgdata/`` (the database cluster,
initialised on first start), ``password`` (generated, mode 0600), ``artifacts/`` (what the MLflow server
stores for its clients), ``postgres.log``, ``mlflow.log`` and ``server.json`` (ports and process ids, so a
second start reuses the data and the ports). Both servers listen on 127.0.0.1 only.

PostgreSQL refuses to run as root: under root its programs run as the ``postgres`` user (else ``nobody``),
who owns ``pgdata/`` and must be able to enter every folder above it.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg

from visionpipe.errors import ConfigError

logger = logging.getLogger(__name__)

SERVER_DIR = "data/server"
DB_USER = "visionpipe"
DATABASES = ("mlflow", "optuna")  # separate databases: both keep an alembic_version table
PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")


@dataclass
class TrackingServer:
    """Where a started server answers: MLflow's URL, and the Optuna storage URL for sweeps."""
    root: Path
    pg_port: int
    mlflow_port: int
    password: str

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def database_url(self, database: str) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.pg_port}/{database}"

    @property
    def sweep_storage(self) -> str:
        return self.database_url("optuna")


def pg_bin(program: str) -> str | None:
    """The path of a PostgreSQL server program: on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(program)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / program).is_file():
            return str(folder / program)
    return None


def missing_programs() -> list[str]:
    """PostgreSQL server programs this machine lacks (empty when it can run a server)."""
    return [p for p in PG_PROGRAMS if pg_bin(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a closed port in TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pg_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL's programs run as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ConfigError("PostgreSQL refuses to run as root and this machine has neither a 'postgres' nor a 'nobody' user: "
                      "create one (useradd postgres) or start the server as a normal user")


def _check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    for parent in [folder, *folder.parents]:
        mode = parent.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & stat.S_IXOTH:
            raise ConfigError(f"{parent}: PostgreSQL runs as user '{account.pw_name}' (it refuses root), who cannot enter this "
                              f"folder; `chmod o+x {parent}`, or keep the server folder elsewhere (--dir)")


def _pg(account, *args: str, log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    program = pg_bin(args[0])
    if program is None:
        raise ConfigError(f"PostgreSQL's {args[0]} is not installed: install the PostgreSQL server (apt-get install postgresql)")
    kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    proc = subprocess.run([program, *args[1:]], capture_output=True, text=True, cwd="/", check=False, timeout=300, **kwargs)
    if check and proc.returncode != 0:
        tail = (log.read_text(errors="replace")[-2000:] if log and log.is_file() else "") or proc.stderr[-2000:] or proc.stdout[-2000:]
        raise ConfigError(f"{args[0]} {args[1] if len(args) > 1 else ''} failed (exit {proc.returncode}): {tail.strip()}")
    return proc


def _owned_by(path: Path, account, mode: int) -> None:
    if account:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(mode)


def _read_state(root: Path) -> dict:
    path = root / "server.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(root: Path, state: dict) -> None:
    tmp = root / "server.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(root / "server.json")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _start_postgres(root: Path, account, state: dict) -> tuple[int, str]:
    pgdata, log, password_file = root / "pgdata", root / "postgres.log", root / "password"
    if password_file.is_file():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    if not (pgdata / "PG_VERSION").is_file():
        logger.info("initialising the PostgreSQL cluster in %s", pgdata)
        pgdata.mkdir(exist_ok=True)
        _owned_by(pgdata, account, 0o700)
        pwfile = root / ".initdb-password"
        pwfile.write_text(password + "\n")
        _owned_by(pwfile, account, 0o600)
        try:
            _pg(account, "initdb", "-D", str(pgdata), "-U", DB_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--no-locale")
        finally:
            pwfile.unlink(missing_ok=True)
    if not log.exists():
        log.touch()
    _owned_by(log, account, 0o600)
    port = state.get("pg_port")
    if _pg(account, "pg_ctl", "status", "-D", str(pgdata), check=False).returncode == 0:
        return port, password  # already running (a second start)
    if not port or not _port_free(port):
        if port:
            logger.warning("PostgreSQL's port %d is taken: choosing another (clients need the new URLs below)", port)
        port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
    _pg(account, "pg_ctl", "start", "-D", str(pgdata), "-l", str(log), "-w", "-t", "120", "-o", options, log=log)
    return port, password


def _ensure_databases(port: int, password: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, password=password, dbname="postgres",
                                   connect_timeout=5, autocommit=True)
            break
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise ConfigError(f"PostgreSQL on 127.0.0.1:{port} does not accept connections: {str(err).strip()}") from None
            time.sleep(0.5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cur.fetchall()}
            for name in DATABASES:
                if name not in present:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def _start_mlflow(root: Path, server: TrackingServer, state: dict, workers: int) -> int:
    pid = state.get("mlflow_pid")
    if _pid_alive(pid) and _healthy(server.tracking_uri):
        return pid
    port = server.mlflow_port
    if not _port_free(port):
        logger.warning("MLflow's port %d is taken: choosing another (clients need the new URLs below)", port)
        server.mlflow_port = port = _free_port()
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--serve-artifacts", "--artifacts-destination", artifacts.as_uri()]
    # the store's URL (with its password) through the environment, not the command line `ps` shows
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # MLflow's GenAI job runner (8 processes): unused here
           **os.environ, "MLFLOW_BACKEND_STORE_URI": server.database_url("mlflow"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "mlflow.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 180
    while not _healthy(server.tracking_uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc.pid)
            tail = (root / "mlflow.log").read_text(errors="replace")[-2000:]
            raise ConfigError(f"mlflow server did not start (log: {root / 'mlflow.log'}):\n{tail}")
        time.sleep(0.5)
    return proc.pid


def _kill_group(pid: int | None, timeout: float = 20) -> None:
    if not _pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # the server's own session: uvicorn and its workers
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(root: str | Path, workers: int = 2) -> TrackingServer:
    """Start (or find running) PostgreSQL and the MLflow server under ``root``; initialise on first use."""
    missing = missing_programs()
    if missing:
        raise ConfigError(f"PostgreSQL server programs not found: {', '.join(missing)}; install the PostgreSQL server "
                          "(apt-get install postgresql) or put its bin folder on PATH")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    account = _pg_account()
    root.chmod(0o711 if account else 0o700)  # PostgreSQL's account enters it; nobody lists it
    if account:
        _check_reachable(root, account)
    state = _read_state(root)
    pg_port, password = _start_postgres(root, account, state)
    _ensure_databases(pg_port, password)
    server = TrackingServer(root, pg_port, state.get("mlflow_port") or _free_port(), password)
    state.update(pg_port=pg_port, mlflow_port=server.mlflow_port)
    _write_state(root, state)
    pid = _start_mlflow(root, server, state, workers)
    state.update(mlflow_port=server.mlflow_port, mlflow_pid=pid, pg_user=account.pw_name if account else None)
    _write_state(root, state)
    return server


def stop(root: str | Path) -> list[str]:
    """Stop the MLflow server and PostgreSQL started under ``root``; what was stopped."""
    root = Path(root).resolve()
    state = _read_state(root)
    stopped = []
    if _pid_alive(state.get("mlflow_pid")):
        _kill_group(state["mlflow_pid"])
        stopped.append("mlflow server")
    if (root / "pgdata" / "PG_VERSION").is_file():
        account = _pg_account()
        if _pg(account, "pg_ctl", "status", "-D", str(root / "pgdata"), check=False).returncode == 0:
            _pg(account, "pg_ctl", "stop", "-D", str(root / "pgdata"), "-m", "fast", "-w", "-t", "60")
            stopped.append("PostgreSQL")
    state.pop("mlflow_pid", None)
    if state:
        _write_state(root, state)
    return stopped
