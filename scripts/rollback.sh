#!/usr/bin/env bash
# Put the service back on the last good revision: all traffic to the revision tagged `previous` (set by
# scripts/deploy.sh when it promoted the current one), or to the revision given with --to. Nothing is
# rebuilt or redeployed, so it takes seconds. docs/runbooks/release.md has the checklist around it.
#
#   scripts/rollback.sh --env dev [--to REVISION] [--dry-run]
#
# Options:
#   --env NAME     environment file envs/NAME.yaml (default dev)
#   --to REVISION  roll back to this revision (see `gcloud run revisions list`) instead of `previous`
#   --dry-run      print the gcloud commands instead of running them; changes nothing
#   -h, --help     this text
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

ENV_NAME=dev
TARGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV_NAME=${2:?--env needs a name}; shift 2 ;;
    --to) TARGET=${2:?--to needs a revision name}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" 2 ;;
  esac
done

load_env "$ENV_NAME"
serving=$(query "<serving-revision>" current_revision)
if [ -z "$TARGET" ]; then
  TARGET=$(query "<previous-revision>" tagged_revision previous)
  [ -n "$TARGET" ] || fail "no revision is tagged previous: give one with --to (gcloud run revisions list)" 1
fi
[ "$TARGET" != "$serving" ] || fail "$TARGET already serves all traffic: nothing to roll back" 1

step "roll $SERVICE back from $serving to $TARGET ($PROJECT/$REGION)"
run gcloud run services update-traffic "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --to-revisions "$TARGET=100" --update-tags "previous=$serving" --quiet
record_release "$ENV_NAME" "$TARGET" "(rollback)" "$serving"
step "rolled back: $TARGET serves 100%; $serving is now tagged previous (roll forward with --to $serving)"
