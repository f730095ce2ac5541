#!/usr/bin/env python3
"""A non-Rust worker next to riskfeat-agent, in ~150 lines (docs/integration.md).

It follows the credential generations the agent publishes in its `pgpass`
output and acks each one in `worker.json`, exactly as riskfeat-worker does,
so the agent revokes an old lease only once this program stopped using it:

  1. read the pgpass output; its first line is `# generation=<n> ...`, the
     next ones `host:port:dbname:user:password` (replica first, then primary);
  2. on a generation newer than the one in use: open a connection with the
     new credential (psycopg, when installed) and check it with `SELECT 1`;
  3. close the connections of the old generation;
  4. write `worker.json` atomically (temp file, fsync, rename) with
     `{"generation": <n>, "pid": ..., "updated_at": ..., "config_versions": {}}`.

It re-reads the file when the agent sends SIGHUP (`notify_pid_file` names the
pid file this program writes with --pid-file) and every --interval seconds in
case a signal was missed. SIGTERM/SIGINT end it. Python 3.8+, standard library
only; psycopg 3 (https://www.psycopg.org) makes it connect for real.

    python3 reader.py --shared-dir /run/riskfeat --pid-file /run/riskfeat/app.pid
"""

import argparse
import datetime
import json
import os
import re
import signal
import sys
import time

try:
    import psycopg  # type: ignore
except ImportError:  # the protocol works without it; only the check is skipped
    psycopg = None


def parse_pgpass(path):
    """(generation, [(host, port, dbname, user, password), ...]) of a pgpass output."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    generation = None
    entries = []
    for line in lines:
        if line.startswith("#"):
            m = re.search(r"\bgeneration=(\d+)", line)
            if m and generation is None:
                generation = int(m.group(1))
            continue
        if not line:
            continue
        # Split on ':' not escaped by '\'; '\:' is ':' and '\\' is '\'.
        fields, cur, chars = [], [], iter(line)
        for c in chars:
            if c == "\\":
                cur.append(next(chars, ""))
            elif c == ":":
                fields.append("".join(cur))
                cur = []
            else:
                cur.append(c)
        fields.append("".join(cur))
        if len(fields) == 5:
            entries.append(tuple(fields))
    if generation is None or not entries:
        raise ValueError(f"{path}: no generation line or no entry")
    return generation, entries


def write_ack(shared_dir, generation):
    """worker.json, atomically: readers (the agent) never see half a file."""
    path = os.path.join(shared_dir, "worker.json")
    tmp = os.path.join(shared_dir, f".worker.json.tmp.{os.getpid()}")
    ack = {
        "generation": generation,
        "pid": os.getpid(),
        "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config_versions": {},
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.fchmod(fd, 0o640)  # the umask may have narrowed it
        os.write(fd, (json.dumps(ack) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(shared_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def connect(entry):
    """A checked connection with the credential of `entry`, or None without psycopg."""
    host, port, dbname, user, password = entry
    if psycopg is None:
        return None
    conn = psycopg.connect(
        host=host, port=port, dbname=dbname, user=user, password=password,
        connect_timeout=5,  # TLS: libpq's PGSSLMODE / PGSSLROOTCERT apply
    )
    conn.execute("SELECT 1").fetchone()
    return conn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-dir", default="/run/riskfeat")
    ap.add_argument("--pgpass", help="the pgpass output (default <shared-dir>/pgpass)")
    ap.add_argument("--pid-file", help="write our pid here (the agent's notify_pid_file)")
    ap.add_argument("--interval", type=float, default=5.0, help="re-read at least this often (s)")
    ap.add_argument("--require-connect", action="store_true",
                    help="fail when psycopg is missing instead of acking unchecked")
    args = ap.parse_args()
    pgpass = args.pgpass or os.path.join(args.shared_dir, "pgpass")
    if args.require_connect and psycopg is None:
        sys.exit("reader: --require-connect but psycopg is not installed")

    state = {"reload": True, "stop": False}

    def on_hup(_sig, _frame):
        print("reader: SIGHUP received: re-reading", pgpass, flush=True)
        state["reload"] = True

    def on_term(_sig, _frame):
        state["stop"] = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(args.pid_file + ".tmp", args.pid_file)

    in_use, conn, last_read = 0, None, 0.0
    while not state["stop"]:
        if state["reload"] or time.monotonic() - last_read >= args.interval:
            state["reload"], last_read = False, time.monotonic()
            try:
                generation, entries = parse_pgpass(pgpass)
                if generation > in_use:
                    new = connect(entries[0])  # the replica's line comes first
                    if conn is not None:
                        conn.close()  # no connection of the old generation is left
                    conn, in_use = new, generation
                    write_ack(args.shared_dir, generation)
                    checked = "checked with SELECT 1" if new else "unchecked: no psycopg"
                    print(f"reader: acked generation {generation} ({checked})", flush=True)
            except (OSError, ValueError) as e:
                print(f"reader: {e}; keeping generation {in_use}", flush=True)
            except Exception as e:  # a connect error: keep the old one, retry in 1 s
                print(f"reader: generation not usable yet: {type(e).__name__}: {e}", flush=True)
                last_read = time.monotonic() - args.interval + 1.0
        time.sleep(0.05)
    if conn is not None:
        conn.close()


if __name__ == "__main__":
    main()
