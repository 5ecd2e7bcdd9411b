#!/usr/bin/env bash
# Built-in English corpus, synthesized offline (no download): the quick start.
#   ./run.sh                      # the quick start (conf/pipeline.conf, ~30 min on 2 cores): the shipped teachers,
#                                 # the headline students with and without KD, decoded and scored
#   ./run.sh --full               # every student of the table, 3 seeds for the headline pairs, ONNX exports
#                                 # (conf/pipeline_full.conf, at most 3 h on 2 cores)
#   ./run.sh --fast               # the --full pipeline on a tiny corpus with tiny teachers (conf/pipeline_fast.conf): CI
#   ./run.sh --retrain_teachers   # the teachers mini_en ships (conf/teachers/), trained from scratch on their own
#                                 # 6,000 utterances (data/train_teacher, ~4 h): many CPU hours; resumable
#   ./run.sh --stage 2 --stop_stage 2 [any kd.sh option; it overrides conf/pipeline.conf]
set -euo pipefail

config=conf/pipeline.conf
args=()
for a in "$@"; do
  case "${a}" in
    --fast) config=conf/pipeline_fast.conf ;;
    --full) config=conf/pipeline_full.conf ;;
    --retrain_teachers)
      # the same corpus stream, cut at 6,000 utterances for the teachers (train and untrans are inside it)
      args+=(--local_data_opts "--nj 4 --n_teacher_train 6000" --teacher_train_set train_teacher
             --teacher_packages "" --teacher_configs "conf/teachers/train_ar_teacher.yaml conf/teachers/train_transducer_teacher.yaml") ;;
    *) args+=("${a}") ;;
  esac
done

./kd.sh --config "${config}" "${args[@]+"${args[@]}"}"
