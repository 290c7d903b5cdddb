#!/usr/bin/env bash
# The Spark data preparation (nanochat/data/spark_prepare.py) as a Dataproc Serverless batch: stage the
# demo corpora here (pip and apt-get downloads, which the batch's VMs cannot make), copy them to the env's
# data bucket, and submit the job, which writes the parquet shards beside them. The env needs
# `dataprep.enabled: true` in its env file, applied (make apply ENV=...): the bucket, the batches'
# service account and subnet (modules/dataprep.py). docs/data.md "Spark" has the details.
#
#   scripts/dataprep.sh --env dev [--dry-run]
#
# Then: gcloud storage cp 'gs://BUCKET/shards/*.parquet' data/spark/pretrain/   (the trainer's folder)
#
# Options:
#   --env NAME   the environment, envs/NAME.yaml (default dev)
#   --dry-run    print every command (staging, upload, submit) instead of running it; changes nothing
#   -h, --help   this text
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

env_args "$0" dry-run "$@"
load_env "$ENV_ARG"
names=$("$PYTHON" -m infra.names "$ENV_FILE") || fail "cannot read the names of $ENV_FILE" 2
while IFS='=' read -r key value; do
  case "$key" in DATAPREP_*) declare -g "$key=$value" ;; esac
done <<<"$names"
[ "$DATAPREP_ENABLED" = true ] ||
  fail "$ENV_NAME has no data preparation resources: set dataprep.enabled: true in $ENV_FILE and apply it" 1
runtime=$("$PYTHON" -c 'from nanochat.data.spark_prepare import DATAPROC_RUNTIME; print(DATAPROC_RUNTIME)')

work=build/dataprep/$ENV_NAME
bucket=gs://$DATAPREP_BUCKET
batch=nanochat-dataprep-$(date -u +%Y%m%d-%H%M%S)

step "staging the demo corpora in $work/raw"
run "$PYTHON" -m nanochat.data.spark_prepare stage --out "$work/raw" --cache "$work/downloads"
run "$PYTHON" -m zipfile -c "$work/nanochat.zip" nanochat  # the job's imports, shipped as --py-files
step "copying them to $bucket/raw"
run gcloud storage rsync --recursive --delete-unmatched-destination-objects "$work/raw" "$bucket/raw" \
  --project "$PROJECT"
step "submitting batch $batch (Dataproc Serverless runtime $runtime) as $DATAPREP_SERVICE_ACCOUNT"
run gcloud dataproc batches submit pyspark nanochat/data/spark_prepare.py \
  --project "$PROJECT" --region "$REGION" --batch "$batch" --version "$runtime" \
  --service-account "$DATAPREP_SERVICE_ACCOUNT" \
  --subnet "projects/$PROJECT/regions/$REGION/subnetworks/$DATAPREP_SUBNET" \
  --deps-bucket "$bucket" --staging-bucket "$DATAPREP_BUCKET" \
  --py-files "$work/nanochat.zip" --labels "env=$ENV_NAME,app=nanochat" \
  -- run --input "$bucket/raw" --out "$bucket/shards" --overwrite
step "shards in $bucket/shards (the last one is the validation split)"
