#!/usr/bin/env bash
# Built-in English corpus, synthesized offline (no download): the quick start.
#   ./run.sh                      # every stage kdtool has, on the default corpus
#   ./run.sh --fast               # a tiny corpus, for CI and a first look (a minute or two)
#   ./run.sh --stage 2 --stop_stage 2 [any kd.sh option]
set -euo pipefail

fast=false
args=()
for a in "$@"; do [ "${a}" = --fast ] && fast=true || args+=("${a}"); done

local_data_opts="--nj 4"
${fast} && local_data_opts="--nj 2 --fast true"

./kd.sh \
  --local_data_opts "${local_data_opts}" \
  --train_set train \
  --valid_set dev \
  --test_sets "test test_unseen" \
  --untrans_set untrans \
  --token_type bpe \
  --nbpe 300 \
  "${args[@]+"${args[@]}"}"
