#!/usr/bin/env bash
# Local services of the production profile, on loopback, for development and CI.
#
#   infra/services.sh install                 Debian packages (redis-server, postgresql, Java 17, wrk) when absent
#   infra/services.sh start [--with mlflow] [--with prefect] [--with worker]
#                                             Redis and PostgreSQL as plain processes (no systemd),
#                                             a `personas` role and databases; optionally a real
#                                             `mlflow server` and `prefect server start` on PostgreSQL;
#                                             `--with worker` (implies prefect) registers the work pool
#                                             and the deployments of flows/prefect.yaml (`personas deploy`,
#                                             when PERSONAS_SOURCES names a sources.yaml) and starts a
#                                             `prefect worker` on pool $PERSONAS_WORK_POOL (default personas)
#   infra/services.sh env                     the connection variables, for `eval "$(infra/services.sh env)"`
#   infra/services.sh status                  health checks (redis-cli ping, pg_isready, HTTP health)
#   infra/services.sh stop                    stops what `start` started (by the pid files it wrote)
#   infra/services.sh down|up|restart NAME    one service (redis, postgres, mlflow, prefect, worker): for
#                                             maintenance and the fault-injection tests; `down` kills
#                                             it at once (SIGKILL for redis/mlflow/prefect, pg_ctl -m
#                                             immediate for postgres), as a crash would
#
# Every command is idempotent. State lives under $PERSONAS_INFRA_DIR (default /tmp/personas-infra):
# data directories, logs and pid files. Ports: PERSONAS_REDIS_PORT (6390), PERSONAS_PG_PORT (5440),
# PERSONAS_MLFLOW_PORT (5005), PERSONAS_PREFECT_PORT (4210), PERSONAS_WORKER_PORT (8210, the worker's
# health endpoint) — off the defaults so a developer's own services are left alone. The PostgreSQL password comes from PERSONAS_PG_PASSWORD (default: a
# random one generated at first start and kept in the infra dir, mode 600); nothing is committed.
# `start` and `env` print `export NAME=value` lines on stdout; progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
INFRA_DIR="${PERSONAS_INFRA_DIR:-/tmp/personas-infra}"
HOST=127.0.0.1
REDIS_PORT="${PERSONAS_REDIS_PORT:-6390}"
PG_PORT="${PERSONAS_PG_PORT:-5440}"
MLFLOW_PORT="${PERSONAS_MLFLOW_PORT:-5005}"
PREFECT_PORT="${PERSONAS_PREFECT_PORT:-4210}"
WORKER_PORT="${PERSONAS_WORKER_PORT:-8210}"
WORK_POOL="${PERSONAS_WORK_POOL:-personas}"
PG_USER=personas
VENV_BIN="${PERSONAS_VENV_BIN:-$ROOT/.venv/bin}"

log() { echo "services: $*" >&2; }
die() { echo "services: $*" >&2; exit 1; }

pg_bin() {
  # Debian's versioned PostgreSQL binaries (initdb, pg_ctl are not on PATH there).
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/initdb" ]] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  return 1
}

# PostgreSQL refuses to run as root: as root, its processes run as this unprivileged user.
PG_OS_USER="${PERSONAS_PG_OS_USER:-postgres}"
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    if command -v runuser >/dev/null 2>&1; then runuser -u "$PG_OS_USER" -- "$@"; else su "$PG_OS_USER" -s /bin/bash -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

pg_password() {
  if [[ -n "${PERSONAS_PG_PASSWORD:-}" ]]; then echo "$PERSONAS_PG_PASSWORD"; return; fi
  local f="$INFRA_DIR/pg-password"
  if [[ ! -s "$f" ]]; then
    mkdir -p "$INFRA_DIR"
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$f")
  fi
  cat "$f"
}

pg_url() { # $1 = database, $2 = scheme
  echo "${2:-postgresql}://$PG_USER:$(pg_password)@$HOST:$PG_PORT/$1"
}

cmd_install() {
  local pkgs=()
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  pg_bin >/dev/null 2>&1 || pkgs+=(postgresql)
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)  # the load generator of tests/integration/test_load.py
  if ((${#pkgs[@]})); then
    [[ "$(id -u)" == 0 ]] || die "installing ${pkgs[*]} needs root; run 'sudo infra/services.sh install'."
    log "apt-get install ${pkgs[*]}"
    # Another apt process (a parallel job) holds the lock for a while: wait for it instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  else
    log "redis-server, postgresql, java and wrk are installed"
  fi
  # Debian's postinst starts packaged daemons where it can; ours run on their own ports and dirs.
}

# PERSONAS_REDIS_PASSWORD (optional) makes Redis require a password (requirepass); redis-cli reads it from REDISCLI_AUTH.
REDIS_PASSWORD="${PERSONAS_REDIS_PASSWORD:-}"
rcli() { REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h "$HOST" -p "$REDIS_PORT" "$@"; }
redis_up() { rcli ping 2>/dev/null | grep -q PONG; }
pg_up() { "$(pg_bin)/pg_isready" -q -h "$HOST" -p "$PG_PORT" 2>/dev/null; }
http_up() { curl -fsS -m 3 "$1" >/dev/null 2>&1 || "$VENV_BIN/python" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$1" >/dev/null 2>&1; }
WAIT_S="${PERSONAS_SERVICES_WAIT_S:-60}"  # how long a starting service may take (a loaded machine needs more)
wait_for() { # $1 = description, $2.. = check command; $WAIT_S seconds
  local i
  for i in $(seq 1 $((WAIT_S * 2))); do "${@:2}" && return 0; sleep 0.5; done
  die "$1 did not become healthy within $WAIT_S s; see the logs in $INFRA_DIR/logs (or allow more with PERSONAS_SERVICES_WAIT_S)."
}

start_redis() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server is not installed; run 'infra/services.sh install'."
  if redis_up; then log "redis already up on $HOST:$REDIS_PORT"; return; fi
  mkdir -p "$INFRA_DIR/redis" "$INFRA_DIR/logs"
  # An in-memory cache of the offline store: snapshots would only cost publish time
  # (PERSONAS_REDIS_APPENDONLY=yes keeps an append-only file, so a restart keeps the last publish).
  redis-server --bind "$HOST" --port "$REDIS_PORT" --dir "$INFRA_DIR/redis" --save "" --appendonly "${PERSONAS_REDIS_APPENDONLY:-no}" \
    --protected-mode yes --daemonize yes --pidfile "$INFRA_DIR/redis.pid" --logfile "$INFRA_DIR/logs/redis.log" \
    ${REDIS_PASSWORD:+--requirepass "$REDIS_PASSWORD"}
  wait_for "Redis on $HOST:$REDIS_PORT" redis_up
  log "redis up on $HOST:$REDIS_PORT"
}

start_postgres() {
  local bin; bin="$(pg_bin)" || die "PostgreSQL is not installed; run 'infra/services.sh install'."
  local data="$INFRA_DIR/postgres"
  mkdir -p "$INFRA_DIR/logs"
  if [[ "$(id -u)" == 0 ]]; then chown "$PG_OS_USER" "$INFRA_DIR" "$INFRA_DIR/logs" 2>/dev/null || true; chmod 755 "$INFRA_DIR"; fi
  if ! pg_up; then
    if [[ ! -s "$data/PG_VERSION" ]]; then
      mkdir -p "$data"
      [[ "$(id -u)" == 0 ]] && chown "$PG_OS_USER" "$data"
      local pwfile; pwfile="$(mktemp)"; pg_password > "$pwfile"; chmod 644 "$pwfile"
      as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 >"$INFRA_DIR/logs/initdb.log" 2>&1 \
        || { rm -f "$pwfile"; die "initdb failed; see $INFRA_DIR/logs/initdb.log."; }
      rm -f "$pwfile"
    fi
    touch "$INFRA_DIR/logs/postgres.log"; [[ "$(id -u)" == 0 ]] && chown "$PG_OS_USER" "$INFRA_DIR/logs/postgres.log"
    # Sockets in the data dir: /var/run/postgresql may not exist without the Debian service.
    as_pg "$bin/pg_ctl" -D "$data" -l "$INFRA_DIR/logs/postgres.log" -w -t 60 \
      -o "-c listen_addresses=$HOST -p $PG_PORT -k $data -c max_connections=200 -c fsync=off -c synchronous_commit=off" start >&2 \
      || die "PostgreSQL did not start; see $INFRA_DIR/logs/postgres.log."
    wait_for "PostgreSQL on $HOST:$PG_PORT" pg_up
  fi
  local db
  for db in personas personas_feast personas_mlflow personas_prefect; do
    PGPASSWORD="$(pg_password)" "$bin/psql" -qAt -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
      -c "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
      || PGPASSWORD="$(pg_password)" "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$db"
  done
  log "postgresql up on $HOST:$PG_PORT (role $PG_USER; databases personas, personas_feast, personas_mlflow, personas_prefect)"
}

start_bg() { # $1 = name, $2 = health url, $3.. = command
  local name="$1" url="$2"; shift 2
  if http_up "$url"; then
    [[ -f "$INFRA_DIR/$name.pid" ]] || die "$url answers but was not started from $INFRA_DIR; stop that server or set PERSONAS_${name^^}_PORT."
    log "$name already up ($url)"; return
  fi
  mkdir -p "$INFRA_DIR/logs"
  nohup setsid "$@" >"$INFRA_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! > "$INFRA_DIR/$name.pid"
  wait_for "$name ($url)" http_up "$url"
  log "$name up ($url)"
}

start_mlflow() {
  [[ -x "$VENV_BIN/mlflow" ]] || die "mlflow is not in $VENV_BIN; run 'make install' first."
  mkdir -p "$INFRA_DIR/mlflow-artifacts"
  start_bg mlflow "http://$HOST:$MLFLOW_PORT/health" \
    "$VENV_BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "$(pg_url personas_mlflow postgresql+psycopg)" \
    --artifacts-destination "$INFRA_DIR/mlflow-artifacts" --serve-artifacts
}

start_prefect() {
  [[ -x "$VENV_BIN/prefect" ]] || die "prefect is not in $VENV_BIN; run 'make install' first."
  mkdir -p "$INFRA_DIR/prefect-home"
  start_bg prefect "http://$HOST:$PREFECT_PORT/api/health" \
    env PREFECT_HOME="$INFRA_DIR/prefect-home" \
    PREFECT_API_DATABASE_CONNECTION_URL="$(pg_url personas_prefect postgresql+asyncpg)" \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
    "$VENV_BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
}

start_worker() {
  [[ -x "$VENV_BIN/prefect" && -x "$VENV_BIN/personas" ]] || die "prefect/personas are not in $VENV_BIN; run 'make install' first."
  # The worker's flow runs take every service from its environment (nothing secret is stored in a
  # deployment): the caller's variables where set, otherwise these services' (as `env` prints them).
  local line name
  while IFS= read -r line; do
    name="${line#export }"; name="${name%%=*}"
    [[ -n "${!name:-}" ]] || eval "$line"
  done < <(cmd_env)
  [[ -n "${PREFECT_API_URL:-}" ]] || die "the worker needs a Prefect server: start it with --with prefect, or set PREFECT_API_URL."
  export PERSONAS_PROFILE="${PERSONAS_PROFILE:-production}" PERSONAS_HOME="${PERSONAS_HOME:-$INFRA_DIR/workspace}"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false
  if [[ -n "${PERSONAS_SOURCES:-}" ]]; then
    log "registering the deployments of flows/prefect.yaml on pool $WORK_POOL (sources $PERSONAS_SOURCES, workspace $PERSONAS_HOME)"
    "$VENV_BIN/personas" deploy --sources "$PERSONAS_SOURCES" --pool "$WORK_POOL" >&2 || die "personas deploy failed (the line above says why)."
  else
    log "PERSONAS_SOURCES is unset: no deployments registered; run 'personas deploy --sources FILE --pool $WORK_POOL'."
  fi
  mkdir -p "$INFRA_DIR/worker-home"
  # --with-healthcheck serves /health on $WORKER_PORT: the check below and `status` use it.
  start_bg worker "http://$HOST:$WORKER_PORT/health" \
    env PREFECT_HOME="$INFRA_DIR/worker-home" PREFECT_WORKER_WEBSERVER_HOST="$HOST" PREFECT_WORKER_WEBSERVER_PORT="$WORKER_PORT" \
    PREFECT_WORKER_QUERY_SECONDS="${PERSONAS_WORKER_QUERY_SECONDS:-10}" \
    "$VENV_BIN/prefect" worker start --pool "$WORK_POOL" --type process --with-healthcheck --name "personas-$(hostname)-$WORKER_PORT"
  log "worker on pool $WORK_POOL (flow runs: PERSONAS_PROFILE=$PERSONAS_PROFILE, PERSONAS_HOME=$PERSONAS_HOME)"
}

cmd_env() {
  cat <<EOF
export PERSONAS_INFRA_DIR='$INFRA_DIR'
export PERSONAS_REDIS_URL='redis://${REDIS_PASSWORD:+:$REDIS_PASSWORD@}$HOST:$REDIS_PORT/0'
export PERSONAS_PG_URL='$(pg_url personas)'
export PERSONAS_FEAST_REGISTRY_URL='$(pg_url personas_feast postgresql+psycopg)'
export PERSONAS_FEAST_REDIS='$HOST:$REDIS_PORT,db=0${REDIS_PASSWORD:+,password=$REDIS_PASSWORD}'
EOF
  # Each server under a PERSONAS_ name too: CI exports only those, so tests of the local profile
  # keep their own MLflow store and Prefect API.
  if [[ -f "$INFRA_DIR/mlflow.pid" ]]; then
    echo "export PERSONAS_MLFLOW_TRACKING_URI='http://$HOST:$MLFLOW_PORT'"
    echo "export MLFLOW_TRACKING_URI='http://$HOST:$MLFLOW_PORT'"
  fi
  if [[ -f "$INFRA_DIR/prefect.pid" ]]; then
    echo "export PERSONAS_PREFECT_API_URL='http://$HOST:$PREFECT_PORT/api'"
    echo "export PREFECT_API_URL='http://$HOST:$PREFECT_PORT/api'"
  fi
}

cmd_start() {
  local with=()
  while (($#)); do
    case "$1" in
      --with) with+=("${2:?--with needs mlflow, prefect or worker}"); shift 2 ;;
      --with=*) with+=("${1#--with=}"); shift ;;
      *) die "unknown option '$1' for start; use --with mlflow, --with prefect and/or --with worker." ;;
    esac
  done
  local w
  for w in "${with[@]}"; do
    [[ "$w" =~ ^(mlflow|prefect|worker)$ ]] || die "unknown service '$w' after --with; use mlflow, prefect or worker."
  done
  mkdir -p "$INFRA_DIR"
  start_redis
  start_postgres
  # in dependency order: the worker needs the Prefect server (and uses MLflow when it runs)
  [[ " ${with[*]} " == *" mlflow "* ]] && start_mlflow
  [[ " ${with[*]} " == *" prefect "* || " ${with[*]} " == *" worker "* ]] && start_prefect
  [[ " ${with[*]} " == *" worker "* ]] && start_worker
  cmd_env
}

cmd_status() {
  local ok=0
  if redis_up; then echo "redis      up    redis://$HOST:$REDIS_PORT"; else echo "redis      DOWN  redis://$HOST:$REDIS_PORT"; ok=1; fi
  if pg_bin >/dev/null 2>&1 && pg_up; then echo "postgresql up    $HOST:$PG_PORT"; else echo "postgresql DOWN  $HOST:$PG_PORT"; ok=1; fi
  local name url
  for name in mlflow prefect worker; do
    case $name in
      mlflow) url="http://$HOST:$MLFLOW_PORT/health" ;;
      prefect) url="http://$HOST:$PREFECT_PORT/api/health" ;;
      worker) url="http://$HOST:$WORKER_PORT/health" ;;
    esac
    if http_up "$url"; then echo "$(printf '%-10s' $name) up    $url"
    elif [[ -f "$INFRA_DIR/$name.pid" ]]; then echo "$(printf '%-10s' $name) DOWN  $url"; ok=1
    else echo "$(printf '%-10s' $name) off   (start with --with $name)"; fi
  done
  return $ok
}

stop_pidfile() { # $1 = name
  local f="$INFRA_DIR/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    # The server runs in its own session (setsid): stop its whole process group (workers too).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i; for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  log "$1 stopped"
}

cmd_stop() {
  stop_pidfile worker  # first: its flow runs (same process group) end with it
  stop_pidfile prefect
  stop_pidfile mlflow
  if [[ -f "$INFRA_DIR/redis.pid" ]]; then
    rcli shutdown nosave >/dev/null 2>&1 || kill "$(cat "$INFRA_DIR/redis.pid")" 2>/dev/null || true
    rm -f "$INFRA_DIR/redis.pid"; log "redis stopped"
  fi
  if [[ -s "$INFRA_DIR/postgres/postmaster.pid" ]] && pg_bin >/dev/null 2>&1; then
    as_pg "$(pg_bin)/pg_ctl" -D "$INFRA_DIR/postgres" -m fast -w stop >&2 || true
    log "postgresql stopped"
  fi
}

down_one() { # $1 = service; as abrupt as a crash: no clean shutdown, no final save
  case "$1" in
    redis)
      if [[ -f "$INFRA_DIR/redis.pid" ]]; then kill -KILL "$(cat "$INFRA_DIR/redis.pid")" 2>/dev/null || true; rm -f "$INFRA_DIR/redis.pid"; fi
      local i; for i in $(seq 1 40); do redis_up || break; sleep 0.25; done
      log "redis down" ;;
    postgres|postgresql)
      if [[ -s "$INFRA_DIR/postgres/postmaster.pid" ]] && pg_bin >/dev/null 2>&1; then
        as_pg "$(pg_bin)/pg_ctl" -D "$INFRA_DIR/postgres" -m immediate -w stop >&2 || true
      fi
      log "postgresql down" ;;
    mlflow|prefect|worker)
      local f="$INFRA_DIR/$1.pid"
      if [[ -f "$f" ]]; then kill -KILL -- "-$(cat "$f")" 2>/dev/null || kill -KILL "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
      log "$1 down" ;;
    *) die "unknown service '$1'; use redis, postgres, mlflow, prefect or worker." ;;
  esac
}

up_one() { # $1 = service
  mkdir -p "$INFRA_DIR"
  case "$1" in
    redis) start_redis ;;
    postgres|postgresql) start_postgres ;;
    mlflow) start_mlflow ;;
    prefect) start_prefect ;;
    worker) start_worker ;;
    *) die "unknown service '$1'; use redis, postgres, mlflow, prefect or worker." ;;
  esac
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop ;;
  status) shift; cmd_status ;;
  env) shift; cmd_env ;;
  down) shift; down_one "${1:?down needs a service: redis, postgres, mlflow, prefect or worker}" ;;
  up) shift; up_one "${1:?up needs a service: redis, postgres, mlflow, prefect or worker}" ;;
  restart) shift; down_one "${1:?restart needs a service: redis, postgres, mlflow, prefect or worker}"; up_one "$1" ;;
  *) echo "usage: infra/services.sh install|start [--with mlflow] [--with prefect] [--with worker]|env|status|stop|down NAME|up NAME|restart NAME" >&2; exit 2 ;;
esac
