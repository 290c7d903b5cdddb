#!/usr/bin/env bash
# The service and a local Prometheus scraping it with the repository's alert rules loaded (`make observe`).
#
# Starts `python -m app` on 127.0.0.1:APP_PORT unless something already answers HEALTH_PATH there, writes a
# Prometheus config to build/observe/ (scrape job METRICS_JOB, alerts/*.rules.yaml; those three come from
# app/contract.py), starts Debian's `prometheus` on 127.0.0.1:9090 with its storage in that folder, prints
# the URLs and stops what it started on Ctrl-C.
# With Docker, `docker compose up --build` adds Grafana and trace collection (docker-compose.yml).
#
# Environment: OBSERVE_APP_PORT (APP_PORT), OBSERVE_PROMETHEUS_PORT (9090), OBSERVE_DIR (build/observe),
# PYTHON (.venv/bin/python), PROMETHEUS (prometheus); the app reads NANOCHAT_* as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(python3 "$ROOT/app/contract.py")"  # APP_PORT, HEALTH_PATH, METRICS_PATH, METRICS_JOB
APP_PORT="${OBSERVE_APP_PORT:-$APP_PORT}"
PROMETHEUS_PORT="${OBSERVE_PROMETHEUS_PORT:-9090}"
OUT="${OBSERVE_DIR:-$ROOT/build/observe}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PROMETHEUS="${PROMETHEUS:-prometheus}"
APP_URL="http://127.0.0.1:$APP_PORT"
PROMETHEUS_URL="http://127.0.0.1:$PROMETHEUS_PORT"
STARTUP_TIMEOUT_S=${OBSERVE_STARTUP_TIMEOUT_S:-120}

die() {
    echo "observe: $*" >&2
    exit 1
}

command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
command -v "$PROMETHEUS" >/dev/null || die "$PROMETHEUS not found (apt-get install -y prometheus)"

pids=()
cleanup() {
    trap - INT TERM EXIT
    if ((${#pids[@]})); then
        echo "observe: stopping ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for URL PID LOG: until URL answers 2xx; fail if PID ends first or the timeout passes
wait_for() {
    local url=$1 pid=$2 log=$3 waited=0
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "process $pid ended before $url answered (log: $log)"
        fi
        ((waited++ < STARTUP_TIMEOUT_S)) || die "$url did not answer within ${STARTUP_TIMEOUT_S}s (log: $log)"
        sleep 1
    done
}

mkdir -p "$OUT"

if curl -fsS -o /dev/null "$APP_URL$HEALTH_PATH" 2>/dev/null; then
    echo "observe: using the app already running at $APP_URL"
else
    echo "observe: starting the app on $APP_URL (log: $OUT/app.log)"
    (cd "$ROOT" && exec "$PYTHON" -m app --host 127.0.0.1 --port "$APP_PORT") >"$OUT/app.log" 2>&1 &
    pids+=("$!")
    wait_for "$APP_URL$HEALTH_PATH" "$!" "$OUT/app.log"
fi

if curl -fsS -o /dev/null "$PROMETHEUS_URL/-/ready" 2>/dev/null; then
    die "something already answers on $PROMETHEUS_URL; stop it or set OBSERVE_PROMETHEUS_PORT"
fi
cat >"$OUT/prometheus.yml" <<EOF
# Written by scripts/observe.sh; rewritten on every run.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - "$ROOT/alerts/*.rules.yaml"
scrape_configs:
  - job_name: $METRICS_JOB
    static_configs:
      - targets: ["127.0.0.1:$APP_PORT"]
EOF
echo "observe: starting Prometheus on $PROMETHEUS_URL (log: $OUT/prometheus.log)"
"$PROMETHEUS" --config.file="$OUT/prometheus.yml" --storage.tsdb.path="$OUT/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$OUT/prometheus.log" 2>&1 &
pids+=("$!")
wait_for "$PROMETHEUS_URL/-/ready" "$!" "$OUT/prometheus.log"

# Debian's build serves only the classic web UI, under /classic
ui=""
if curl -fsS -o /dev/null "$PROMETHEUS_URL/classic/graph" 2>/dev/null; then ui=/classic; fi
cat <<EOF

  app          $APP_URL  (metrics: $APP_URL$METRICS_PATH, figures: $APP_URL/stats)
  prometheus   $PROMETHEUS_URL$ui/graph
  alerts       $PROMETHEUS_URL$ui/alerts  (API: $PROMETHEUS_URL/api/v1/alerts)
  targets      $PROMETHEUS_URL$ui/targets
  config       $OUT/prometheus.yml

Press Ctrl-C to stop.
EOF

# Run until Ctrl-C, or until one of the processes ends on its own.
if ((${#pids[@]})); then
    wait -n "${pids[@]}" || true
    die "a process ended on its own; see the logs in $OUT"
fi
