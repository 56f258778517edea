#!/usr/bin/env bash
# Throwaway PostgreSQL for tests and demos, from Debian's server packages.
#
#   deploy/postgres.sh install                 install the server binaries if missing (root)
#   deploy/postgres.sh start  DATA_DIR [PORT]  initdb if needed, start, print `export` lines
#   deploy/postgres.sh stop   DATA_DIR         fast shutdown; fine if not running
#   deploy/postgres.sh status DATA_DIR         exit 0 if running, 3 if not
#   deploy/postgres.sh env    DATA_DIR         print `export` lines for a running server
#
# The server listens on 127.0.0.1 only; its Unix socket lives inside DATA_DIR. The role
# and database are both `loyalty` (password `loyalty`): never use this for real data.
# Typical use:  eval "$(deploy/postgres.sh start /tmp/loyalty-pg)"
#
# Everything but the `export` lines goes to stderr, so stdout can be eval'd or parsed.
set -euo pipefail

readonly DB_USER=loyalty
readonly DB_PASSWORD=loyalty
readonly DB_NAME=loyalty
readonly RUN_AS=postgres # system user for initdb/pg_ctl when we are root

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,8s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

# Newest installed server version's bin dir, or nothing.
find_bindir() {
    local initdb
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    if [[ -x $initdb ]]; then dirname "$initdb"; fi
}

install_server() {
    if [[ -n $(find_bindir) ]]; then return 0; fi
    if [[ $EUID -ne 0 ]]; then
        die "PostgreSQL server binaries are missing; run as root: apt-get install postgresql"
    fi
    log "installing PostgreSQL server packages (apt-get install postgresql)..."
    # apt's chatter goes to stderr to keep stdout clean for `export` lines.
    {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    } >&2
    [[ -n $(find_bindir) ]] || die "apt-get install postgresql did not provide initdb"
}

ensure_run_as_user() {
    if [[ $EUID -ne 0 ]] || id -u "$RUN_AS" >/dev/null 2>&1; then return 0; fi
    log "creating system user $RUN_AS"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$RUN_AS"
}

# Run a server program as the data dir's owner: `postgres` when we are root
# (initdb and postgres refuse to run as root), ourselves otherwise. `cd /` because
# the postgres user may not be allowed into the caller's working directory.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u "$RUN_AS" -- "$@")
    else
        (cd / && "$@")
    fi
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Port of the running server, from line 4 of postmaster.pid.
running_port() {
    sed -n 4p "$DATA_DIR/postmaster.pid"
}

is_running() {
    [[ -f $DATA_DIR/PG_VERSION ]] && as_owner "$BINDIR/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

print_env() {
    local port=$1
    printf 'export %s=%q\n' \
        PERSISTENCE_MODULE eventsourcing.postgres \
        POSTGRES_HOST 127.0.0.1 \
        POSTGRES_PORT "$port" \
        POSTGRES_USER "$DB_USER" \
        POSTGRES_PASSWORD "$DB_PASSWORD" \
        POSTGRES_DBNAME "$DB_NAME"
}

psql_admin() {
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DATA_DIR" -p "$1" -U postgres \
        -d postgres "${@:2}"
}

init_cluster() {
    mkdir -p "$DATA_DIR"
    if [[ $EUID -eq 0 ]]; then chown "$RUN_AS:" "$DATA_DIR"; fi
    chmod 0700 "$DATA_DIR"
    if ! as_owner test -w "$DATA_DIR"; then
        die "user $RUN_AS cannot reach $DATA_DIR (a parent directory is not searchable); use a directory under /tmp"
    fi
    if [[ -f $DATA_DIR/PG_VERSION ]]; then return 0; fi
    if [[ -n $(ls -A "$DATA_DIR") ]]; then
        die "$DATA_DIR is not empty and is not a PostgreSQL data directory"
    fi
    log "initialising cluster in $DATA_DIR"
    # Local (socket) connections are trusted: the socket sits in the 0700 data dir.
    local out
    if ! out=$(as_owner "$BINDIR/initdb" -D "$DATA_DIR" -U postgres --no-locale \
        --encoding=UTF8 --auth-local=trust --auth-host=scram-sha-256 2>&1); then
        printf '%s\n' "$out" >&2
        die "initdb failed"
    fi
    # Durability is pointless for a throwaway test server; speed is not. Benchmarks set
    # LOYALTY_PG_DURABLE=1 to keep PostgreSQL's defaults (fsync, synchronous commit).
    as_owner tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- throwaway test server (deploy/postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA_DIR'
password_encryption = 'scram-sha-256'
max_connections = 200
EOF
    if [[ ${LOYALTY_PG_DURABLE:-0} != 1 ]]; then
        as_owner tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
}

cmd_start() {
    local port=${1:-}
    if [[ -n $port && ! $port =~ ^[0-9]+$ ]]; then die "PORT must be a number: $port"; fi
    install_server
    BINDIR=$(find_bindir)
    ensure_run_as_user
    init_cluster
    if is_running; then
        port=$(running_port)
        log "already running on 127.0.0.1:$port"
        print_env "$port"
        return 0
    fi
    if [[ -z $port ]]; then port=$(free_port); fi
    # Unix socket paths are limited to 107 bytes.
    if ((${#DATA_DIR} + 20 > 107)); then die "DATA_DIR path too long for a Unix socket: $DATA_DIR"; fi
    if ! as_owner "$BINDIR/pg_ctl" start -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
        -o "-p $port" >/dev/null; then
        tail -n 20 "$DATA_DIR/server.log" >&2 || true
        die "server failed to start (log: $DATA_DIR/server.log)"
    fi
    local tries=0
    until "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port"; do
        ((++tries < 60)) || die "server not ready on 127.0.0.1:$port"
        sleep 0.5
    done
    psql_admin "$port" <<SQL
SELECT 'CREATE ROLE $DB_USER LOGIN SUPERUSER PASSWORD ''$DB_PASSWORD'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \gexec
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
SQL
    log "running on 127.0.0.1:$port (data: $DATA_DIR)"
    print_env "$port"
}

cmd_stop() {
    BINDIR=$(find_bindir)
    if [[ -z $BINDIR ]] || ! is_running; then
        log "not running"
        return 0
    fi
    as_owner "$BINDIR/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 60 >/dev/null
    log "stopped"
}

cmd_status() {
    BINDIR=$(find_bindir)
    if [[ -n $BINDIR ]] && is_running; then
        log "running on 127.0.0.1:$(running_port) (data: $DATA_DIR)"
        return 0
    fi
    log "not running"
    return 3
}

cmd_env() {
    BINDIR=$(find_bindir)
    if [[ -z $BINDIR ]] || ! is_running; then die "no server running in $DATA_DIR"; fi
    print_env "$(running_port)"
}

main() {
    local cmd=${1:-}
    if [[ $cmd == install ]]; then
        install_server
        return 0
    fi
    [[ $# -ge 2 ]] || usage
    DATA_DIR=$(realpath -m -- "$2")
    case $cmd in
        start) cmd_start "${3:-}" ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        *) usage ;;
    esac
}

BINDIR=
DATA_DIR=
main "$@"
