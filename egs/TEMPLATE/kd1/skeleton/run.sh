#!/usr/bin/env bash
# Write local/data.sh and set the corpus path in db.sh, then:
#   ./run.sh                                   # all stages, options from conf/pipeline.conf
#   ./run.sh --stage 2 --stop_stage 2 --nj 32  # any kd.sh option overrides the conf
set -euo pipefail
./kd.sh --config conf/pipeline.conf "$@"
