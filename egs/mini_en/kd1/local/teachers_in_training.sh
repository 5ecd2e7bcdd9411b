#!/usr/bin/env bash
# The shipped teachers' training spans many CPU hours, longer than one working session on a machine that may be
# handed over bare: this keeps its resume point in the repository until the teachers are packed.
#   local/teachers_in_training.sh save      # exp/<teacher>/ -> teachers/in_training/<teacher>/ (the resume point)
#   local/teachers_in_training.sh restore   # the reverse, for exp dirs that have no resume point yet
# then `./run.sh --retrain_teachers --stop_stage 3` goes on exactly where the saved run was (same data: the corpus
# is seeded; same config: kdtool.bin.train refuses another). What is kept per teacher: its config, tokens, CMVN,
# logs, metrics and checkpoints/last.ckpt (weights, optimizer, scheduler, the loader's position; ~90 MB). The
# best-epoch checkpoints are not kept: model.pth averages those of them that are still on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
teachers="ar_teacher transducer_teacher"
store=teachers/in_training
case "${1:-}" in
  save)
    for t in ${teachers}; do
      [ -f "exp/${t}/checkpoints/last.ckpt" ] || { echo "$0: exp/${t}/checkpoints/last.ckpt: none to save" >&2; exit 1; }
      rm -rf "${store}/${t}.tmp" && mkdir -p "${store}/${t}.tmp/checkpoints"
      cp -a "exp/${t}"/{config.yaml,cmvn.ark,tokens,train.log,csv} "${store}/${t}.tmp/"
      cp -a "exp/${t}/checkpoints/last.ckpt" "${store}/${t}.tmp/checkpoints/"
      rm -rf "${store:?}/${t}" && mv "${store}/${t}.tmp" "${store}/${t}"
      echo "$0: saved exp/${t} -> ${store}/${t} ($(du -sh "${store}/${t}" | cut -f1))"
    done ;;
  restore)
    for t in ${teachers}; do
      [ -d "${store}/${t}" ] || { echo "$0: ${store}/${t}: nothing saved" >&2; continue; }
      if [ -f "exp/${t}/checkpoints/last.ckpt" ]; then
        echo "$0: exp/${t} has a resume point of its own; left as it is"; continue
      fi
      mkdir -p "exp/${t}" && cp -a "${store}/${t}/." "exp/${t}/"
      echo "$0: restored ${store}/${t} -> exp/${t}"
    done ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
