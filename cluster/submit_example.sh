#!/usr/bin/env bash
# Submit a search to a running Ray cluster and follow it. Usage:
#   cluster/submit_example.sh http://HEAD:8265 [key=value ...]
# Results, the feature cache and the Optuna study go to /mnt/shared, which every node mounts.
set -euo pipefail
ADDRESS=${1:?usage: $0 http://HEAD:8265 [key=value ...]}
shift
cd "$(dirname "$0")/.."
# The rayproject images' interpreter has ray + torch; raysearch-adapters is installed on every node
# (cluster/ray-cluster.yaml setup_commands, or the image of cluster/Dockerfile). A cluster whose
# image lacks the other dependencies: add --runtime-env cluster/runtime_env.yaml (pip).
exec raysearch-adapters submit --address "$ADDRESS" --python /home/ray/anaconda3/bin/python --follow \
  results.dir=/mnt/shared/results search.name="search-$(date +%Y%m%d-%H%M)" \
  resources.use_gpu=true resources.gpus_per_worker=0.25 "$@"
