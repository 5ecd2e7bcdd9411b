#!/usr/bin/env bash
# Built-in English corpus, synthesized offline (no download): the quick start.
#   ./run.sh                      # every stage kdtool has, on the default corpus
#   ./run.sh --fast               # a tiny corpus (conf/pipeline_fast.conf), for CI and a first look
#   ./run.sh --stage 2 --stop_stage 2 [any kd.sh option; it overrides conf/pipeline.conf]
set -euo pipefail

config=conf/pipeline.conf
args=()
for a in "$@"; do [ "${a}" = --fast ] && config=conf/pipeline_fast.conf || args+=("${a}"); done

./kd.sh --config "${config}" "${args[@]+"${args[@]}"}"
