#!/usr/bin/python3
"""Starts and stops the real servers the integration tests use: a PostgreSQL 15 primary, a streaming
replica made with pg_basebackup, and redis-server, on free loopback ports in a temp directory.

    cluster.py up DIR     # writes DIR/state.json
    cluster.py down DIR

postgres refuses to run as root, so as root the servers run as the unprivileged user `sluicetest`
(scripts/setup.sh creates it)."""
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
OS_USER = "sluicetest"
APP_PASSWORD = "secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(cmd, **kw):
    """Runs cmd as the unprivileged server user when we are root."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", OS_USER, "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


def chown_tree(path):
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(OS_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1/localhost, used by sluice and the primary."""
    os.makedirs(d, exist_ok=True)
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=sluice test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
    with open(f"{d}/san.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr")
    run("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey",
        f"{d}/ca.key", "-CAcreateserial", "-days", "30", "-extfile", f"{d}/san.ext",
        "-out", f"{d}/server.crt")
    os.chmod(f"{d}/server.key", 0o600)


def psql(port, sql, db="postgres", sockdir=None):
    return as_server_user(["psql", "-X", "-q", "-At", "-v",
                           "ON_ERROR_STOP=1", "-h", sockdir, "-p", str(port), "-d", db, "-c", sql],
                          capture_output=True, text=True)


def process_alive(pid):
    """True while pid runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_port(port, proc, what, timeout=20):
    """Waits until 127.0.0.1:port accepts connections; fails when proc exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


def stop_process(proc, timeout=20):
    """SIGTERM, then SIGKILL after timeout seconds; waits for the exit."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def up(base):
    base = os.path.abspath(base)
    if os.path.exists(base):
        down(base)
        shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    os.chmod(base, 0o755)
    st = {"dir": base, "primary_port": free_port(), "replica_port": free_port(),
          "redis_port": free_port(), "app_password": APP_PASSWORD, "os_user": OS_USER}
    st["primary_dir"] = f"{base}/primary"
    st["replica_dir"] = f"{base}/replica"
    st["sock_dir"] = f"{base}/sock"
    st["certs"] = f"{base}/certs"
    os.makedirs(st["sock_dir"])
    make_certs(st["certs"])
    chown_tree(base)
    # sluice (root or not) must read the certs too.
    for f in os.listdir(st["certs"]):
        os.chmod(f"{st['certs']}/{f}", 0o644)

    su = OS_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    st["superuser"] = su
    as_server_user([f"{PG_BIN}/initdb", "-D", st["primary_dir"], "-U", su, "-E", "UTF8",
                    "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"],
                   capture_output=True)
    shutil.copy(f"{st['certs']}/server.crt", f"{st['primary_dir']}/server.crt")
    shutil.copy(f"{st['certs']}/server.key", f"{st['primary_dir']}/server.key")
    chown_tree(st["primary_dir"])
    os.chmod(f"{st['primary_dir']}/server.key", 0o600)
    with open(f"{st['primary_dir']}/postgresql.conf", "a") as f:
        f.write(f"""
listen_addresses = '127.0.0.1'
port = {st['primary_port']}
unix_socket_directories = '{st['sock_dir']}'
password_encryption = 'scram-sha-256'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
shared_preload_libraries = 'pg_stat_statements'
""")
    with open(f"{st['primary_dir']}/pg_hba.conf", "w") as f:
        f.write("local all all trust\n"
                "host replication repl 127.0.0.1/32 scram-sha-256\n"
                "host all md5user 127.0.0.1/32 md5\n"
                "host all pwuser 127.0.0.1/32 password\n"
                "host all trustuser 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n")
    as_server_user([f"{PG_BIN}/pg_ctl", "-D", st["primary_dir"], "-l", f"{base}/primary.log",
                    "-w", "start"], capture_output=True)
    sock = st["sock_dir"]
    psql(st["primary_port"], f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'", sockdir=sock)
    psql(st["primary_port"], "CREATE ROLE repl REPLICATION LOGIN PASSWORD 'replpass'", sockdir=sock)
    psql(st["primary_port"], "CREATE ROLE other LOGIN PASSWORD 'otherpass'", sockdir=sock)
    psql(st["primary_port"], "SET password_encryption = 'md5'; "
         "CREATE ROLE md5user LOGIN PASSWORD 'md5pass'", sockdir=sock)
    psql(st["primary_port"], "CREATE ROLE pwuser LOGIN PASSWORD 'pwpass'", sockdir=sock)
    psql(st["primary_port"], "CREATE ROLE trustuser LOGIN", sockdir=sock)
    psql(st["primary_port"], "CREATE DATABASE appdb OWNER app", sockdir=sock)
    psql(st["primary_port"], "GRANT ALL ON SCHEMA public TO app, other, md5user", db="appdb", sockdir=sock)
    # Where statements ran (read routing tests count them on each server).
    psql(st["primary_port"], "CREATE EXTENSION pg_stat_statements", db="appdb", sockdir=sock)
    # The cache's WAL follower logs in as app (routing.health_user) and streams a logical slot.
    psql(st["primary_port"], "ALTER ROLE app REPLICATION", sockdir=sock)

    passfile = f"{base}/pgpass"
    with open(passfile, "w") as f:
        f.write(f"127.0.0.1:{st['primary_port']}:*:repl:replpass\n")
    chown_tree(base)
    os.chmod(passfile, 0o600)
    as_server_user(["env", f"PGPASSFILE={passfile}", f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1",
                    "-p", str(st["primary_port"]), "-U", "repl", "-D", st["replica_dir"], "-R",
                    "-X", "stream", "-C", "-S", "replica1", "-c", "fast"], capture_output=True)
    with open(f"{st['replica_dir']}/postgresql.conf", "a") as f:
        f.write(f"\nport = {st['replica_port']}\n")
    as_server_user([f"{PG_BIN}/pg_ctl", "-D", st["replica_dir"], "-l", f"{base}/replica.log",
                    "-w", "start"], capture_output=True)
    wait_for(lambda: "streaming" in psql(st["primary_port"], "SELECT state FROM pg_stat_replication",
                                         sockdir=sock).stdout, "replication to stream")
    wait_for(lambda: psql(st["replica_port"], "SELECT pg_is_in_recovery()",
                          sockdir=sock).stdout.strip() == "t", "the replica to be in recovery")

    st["redis_pidfile"] = f"{base}/redis.pid"
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(st["redis_port"]),
                    "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--pidfile", st["redis_pidfile"], "--logfile", f"{base}/redis.log"], check=True)
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(st["redis_port"]), "ping"],
                                    capture_output=True, text=True).stdout.strip() == "PONG", "redis")
    with open(f"{base}/state.json", "w") as f:
        json.dump(st, f, indent=2)
    print(f"cluster up: primary :{st['primary_port']} replica :{st['replica_port']} "
          f"redis :{st['redis_port']} in {base}")


def down(base):
    base = os.path.abspath(base)
    state = f"{base}/state.json"
    for d in ("replica", "primary"):
        if os.path.exists(f"{base}/{d}/postmaster.pid"):
            try:
                as_server_user([f"{PG_BIN}/pg_ctl", "-D", f"{base}/{d}", "-m", "immediate", "-w", "stop"],
                               capture_output=True)
            except subprocess.CalledProcessError:
                pass
    pidfile = f"{base}/redis.pid"
    if os.path.exists(pidfile):
        try:
            pid = int(open(pidfile).read().strip())
            os.kill(pid, 15)
            # Gone before we return: callers check that nothing is left behind.
            wait_for(lambda: not process_alive(pid), "redis-server to exit", timeout=10)
        except (ProcessLookupError, ValueError):
            pass
    if os.path.exists(state):
        os.remove(state)
    print(f"cluster down: {base}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: cluster.py up|down DIR")
    (up if sys.argv[1] == "up" else down)(sys.argv[2])
