#!/usr/bin/env bash
# Built-in English corpus, synthesized offline (no download): the quick start.
#   ./run.sh                      # every stage kdtool has, on the default corpus
#   ./run.sh --fast               # a tiny corpus (conf/pipeline_fast.conf), for CI and a first look
#   ./run.sh --retrain_teachers   # the teachers mini_en ships (conf/teachers/), trained from scratch on their own
#                                 # 6,000 utterances (data/train_teacher, ~4 h): many CPU hours; resumable
#   ./run.sh --stage 2 --stop_stage 2 [any kd.sh option; it overrides conf/pipeline.conf]
set -euo pipefail

config=conf/pipeline.conf
args=()
for a in "$@"; do
  case "${a}" in
    --fast) config=conf/pipeline_fast.conf ;;
    --retrain_teachers)
      # the same corpus stream, cut at 6,000 utterances for the teachers (train and untrans are inside it)
      args+=(--local_data_opts "--nj 4 --n_teacher_train 6000" --teacher_train_set train_teacher
             --teacher_packages "" --teacher_configs "conf/teachers/train_ar_teacher.yaml conf/teachers/train_transducer_teacher.yaml") ;;
    *) args+=("${a}") ;;
  esac
done

./kd.sh --config "${config}" "${args[@]+"${args[@]}"}"
