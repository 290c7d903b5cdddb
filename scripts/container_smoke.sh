#!/usr/bin/env bash
# Build the CPU image with podman and smoke-test it for real: run it, wait for /ready, stream one chat
# completion, read /metrics, send SIGTERM and expect a clean drain (exit 0). Prints one JSON line of figures
# (image size, build and ready times) as its last line; exits non-zero with a message on any failure.
#
#   scripts/container_smoke.sh [--keep] [--rebuild-base]
#
# Works without Docker Hub: the base image is a Debian bookworm made with debootstrap from the apt mirror
# this machine already uses (cached as a tarball under build/container/), and pip inside the build uses the
# host's CA bundle and local wheel folder when pip's config names them. Needs root, podman, buildah, runc
# catatonit and debootstrap (Debian: apt-get install -y podman buildah runc catatonit debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(python3 app/contract.py)"  # READY_PATH, METRICS_PATH, CHAT_COMPLETIONS_PATH

IMAGE=localhost/nanochat:cpu
BASE=localhost/python-base:bookworm
WORK=build/container
KEEP=0
REBUILD_BASE=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "container_smoke: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "container_smoke: $*" >&2; exit 1; }
for tool in podman debootstrap curl; do
  command -v "$tool" >/dev/null || die "needs $tool (Debian: apt-get install -y podman buildah runc catatonit debootstrap curl)"
done
[ "$(id -u)" = 0 ] || die "needs root (rootful podman, debootstrap)"
mkdir -p "$WORK"

# podman on this kind of machine: runc (crun fails on hybrid cgroups) and sane ulimits
export CONTAINERS_CONF="$PWD/$WORK/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF

# ---- the base image -----------------------------------------------------------------------------------------
if [ "$REBUILD_BASE" = 1 ] || ! podman image exists "$BASE"; then
  tarball="$WORK/python-base.tar"
  if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$tarball" ]; then
    # the Debian mirror apt already uses (not a third-party repository such as nodesource)
    mirror=$( (grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
      /etc/apt/sources.list.d/ 2>/dev/null || true) | awk 'NR == 1 {print $2}')
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    echo "container_smoke: debootstrap bookworm from $mirror" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: see $WORK/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball" .
    rm -rf "$rootfs"
  fi
  podman import "$tarball" "$BASE" >/dev/null
fi

# ---- build --------------------------------------------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$BASE" --target cpu --network host --format docker -t "$IMAGE")  # docker: keeps HEALTHCHECK
pip_setting() {  # a value from `pip config list` (any scope), e.g. pip_setting cert
  python3 -m pip config list 2>/dev/null | sed -nE "s/^[^.]*\.$1='([^']*)'$/\1/p" | head -1
}
cert=${PIP_CERT:-$(pip_setting cert)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  build_args+=(-v "$cert:$cert:ro" --build-arg "PIP_CERT=$cert")
fi
wheels=${PIP_FIND_LINKS:-$(pip_setting find-links)}
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  build_args+=(-v "$wheels:$wheels:ro" --build-arg "PIP_FIND_LINKS=$wheels" --build-arg TORCH_INDEX_URL=)
fi
start=$(date +%s)
podman build "${build_args[@]}" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "podman build failed (log: $WORK/build.log)"; }
build_s=$(( $(date +%s) - start ))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')

# ---- run ----------------------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name="nanochat-smoke-$$"
cleanup() { [ "$KEEP" = 1 ] || podman rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
start=$(date +%s.%N)
mport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
podman run -d --init --name "$name" --network host -e PORT="$port" -e NANOCHAT_METRICS_PORT="$mport" \
  -e NANOCHAT_WORKERS=1 "$IMAGE" >/dev/null
url="http://127.0.0.1:$port"
for _ in $(seq 1 240); do
  if curl -fsS "$url$READY_PATH" >/dev/null 2>&1; then break; fi
  [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || { podman logs "$name" >&2; die "the container exited before $READY_PATH answered"; }
  sleep 0.5
done
curl -fsS "$url$READY_PATH" >/dev/null || { podman logs "$name" | tail -20 >&2; die "$READY_PATH did not answer 200 within 120 s"; }
ready_s=$(python3 -c "import time; print(round(time.time() - $start, 1))")

reply=$(curl -fsS -N "$url$CHAT_COMPLETIONS_PATH" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16,"stream":true}')
grep -q '"delta":{"content"' <<<"$reply" || die "no content chunk in the streamed reply: $reply"
tail -c 200 <<<"$reply" | grep -q 'data: \[DONE\]' || die "the stream did not end with data: [DONE]"
# retrieval over the bundled docs index (NANOCHAT_RAG_INDEXES in the image)
hits=$(curl -fsS "$url/v1/retrieve" -H 'Content-Type: application/json' \
  -d '{"query":"How do I roll back a release?","k":5}')
grep -q 'docs/runbooks/release.md' <<<"$hits" || die "/v1/retrieve did not find docs/runbooks/release.md: $hits"
# metrics on their own port (the image's NANOCHAT_METRICS_PORT), never on the public one
metrics=$(curl -fsS "http://127.0.0.1:$mport$METRICS_PATH")
grep -q '^nanochat_requests_total' <<<"$metrics" || die "/metrics has no nanochat_requests_total"
public=$(curl -s -o /dev/null -w '%{http_code}' "$url$METRICS_PATH")
[ "$public" = 404 ] || die "$METRICS_PATH on the public port answered $public (expected 404)"
user=$(podman exec "$name" id -u)
[ "$user" != 0 ] || die "the server runs as root"

podman kill --signal TERM "$name" >/dev/null
code=$(podman wait "$name")
[ "$code" = 0 ] || { podman logs "$name" | tail -20 >&2; die "exit status $code after SIGTERM (expected 0)"; }
logs=$(podman logs "$name" 2>&1)  # whole, not piped: grep -q closing the pipe early would fail pipefail
grep -qiE 'shutting down|drain' <<<"$logs" || die "no shutdown/drain line in the logs after SIGTERM"

printf '{"image": "%s", "size_bytes": %s, "size_mb": %s, "build_s": %s, "ready_s": %s, "user": %s, "exit_after_sigterm": %s}\n' \
  "$IMAGE" "$size" "$(( size / 1000000 ))" "$build_s" "$ready_s" "$user" "$code"
