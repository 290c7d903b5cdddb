#!/usr/bin/env bash
# The GPU group by hand, to spend free credits only while you use it: `up` starts VMs, `down` stops them
# all (a group at size 0 costs nothing), `status` lists the VMs and the group's recent errors (quota, no
# spot capacity, a boot that fails). `make gpu-up ENV=dev`, `make gpu-down ENV=dev`, `make gpu-status ...`.
#
#   scripts/gpu.sh up ENV [--size N] [--dry-run]
#   scripts/gpu.sh down ENV [--dry-run]
#   scripts/gpu.sh status ENV
#
# With an autoscaler (gpu.autoscaling or gpu.schedule in the env file) `down` turns it off before resizing
# to 0 and `up` turns it back on (it then sizes the group: its minimum, the schedule); without one `up`
# resizes to N (default 1). Nothing to start before the first release: the VMs would have no image.
#
# Options:
#   --size N     `up` without an autoscaler: this many VMs (default 1)
#   --dry-run    print the gcloud commands that change something instead of running them
#   -h, --help   this text
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

ACTION=""
ENV_ARG=""
SIZE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=${2:?--size needs a number}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    -*) fail "unknown argument $1 (see --help)" 2 ;;
    *)
      if [ -z "$ACTION" ]; then ACTION=$1; elif [ -z "$ENV_ARG" ]; then ENV_ARG=$1; else fail "unknown argument $1 (see --help)" 2; fi
      shift ;;
  esac
done
case "$ACTION" in up | down | status) ;; *) fail "say up, down or status (see --help)" 2 ;; esac
[ -n "$ENV_ARG" ] || fail "name the environment: scripts/gpu.sh $ACTION dev" 2
[[ "$SIZE" =~ ^[0-9]+$ ]] || fail "--size needs a number" 2

load_env "$ENV_ARG"
[ "$GPU_ENABLED" = true ] || fail "$ENV_NAME has no GPU group (gpu.enabled: false in $ENV_FILE)" 1
WHERE=(--project "$PROJECT" --region "$REGION")
MIG=(gcloud compute instance-groups managed)

# The group's autoscaler, if any (the group's status names it)
autoscaler=$("${MIG[@]}" describe "$GPU_GROUP" "${WHERE[@]}" --format 'value(status.autoscaler)')

case "$ACTION" in
  status)
    size=$("${MIG[@]}" describe "$GPU_GROUP" "${WHERE[@]}" --format 'value(targetSize)')
    echo "$GPU_GROUP ($PROJECT, $REGION): target size $size${autoscaler:+, autoscaler ${autoscaler##*/}}"
    "${MIG[@]}" list-instances "$GPU_GROUP" "${WHERE[@]}"
    echo "recent errors:"
    "${MIG[@]}" list-errors "$GPU_GROUP" "${WHERE[@]}"
    ;;
  down)
    if [ -n "$autoscaler" ]; then
      run "${MIG[@]}" update-autoscaling "$GPU_GROUP" "${WHERE[@]}" --mode off
    fi
    run "${MIG[@]}" resize "$GPU_GROUP" "${WHERE[@]}" --size 0
    step "$GPU_GROUP: no VMs${autoscaler:+ (autoscaler off until scripts/gpu.sh up $ENV_NAME)}"
    ;;
  up)
    [ "$PHASE" != foundation ] ||
      fail "no GPU image is released yet (phase: foundation): make bootstrap ENV=$ENV_NAME first" 1
    if [ -n "$autoscaler" ]; then
      run "${MIG[@]}" update-autoscaling "$GPU_GROUP" "${WHERE[@]}" --mode on
      step "$GPU_GROUP: autoscaler on; it sizes the group (scripts/gpu.sh status $ENV_NAME)"
    else
      run "${MIG[@]}" resize "$GPU_GROUP" "${WHERE[@]}" --size "$SIZE"
      step "$GPU_GROUP: $SIZE VM(s) starting (scripts/gpu.sh status $ENV_NAME; errors show there)"
    fi
    ;;
esac
