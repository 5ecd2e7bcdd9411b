#!/usr/bin/env bash
# The shipped teachers' training spans many CPU hours, longer than one working session on a machine that may be
# handed over bare: this keeps its resume point in the repository until the teachers are packed.
#   local/teachers_in_training.sh save [TEACHER...]     # exp/<teacher>/ -> teachers/in_training/<teacher>/
#   local/teachers_in_training.sh restore [TEACHER...]  # the reverse, for exp dirs that have no resume point yet
# (TEACHER: ar_teacher, transducer_teacher; default both) then `./run.sh --retrain_teachers --stop_stage 3` goes on
# exactly where the saved run was (same data: the corpus is seeded; same config: kdtool.bin.train refuses another).
# What is kept per teacher: its config, tokens, CMVN, logs, metrics and the resume point (exp's
# checkpoints/last.ckpt: weights, optimizer, scheduler, the loader's position; ~90 MB). Each save adds a new
# checkpoints/resume-<UTC time>.ckpt and leaves the older ones, so that a commit of it adds a file instead of
# rewriting one (a rewritten 90 MB file counts twice against a submission's size); restore takes the newest.
# The best-epoch checkpoints are not kept: model.pth averages those of them that are still on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
store=teachers/in_training
action=${1:-}; shift || true
teachers=${*:-ar_teacher transducer_teacher}
newest() { ls "$1"/resume-*.ckpt 2>/dev/null | LC_ALL=C sort | tail -n 1 || true; }
case "${action}" in
  save)
    for t in ${teachers}; do
      [ -f "exp/${t}/checkpoints/last.ckpt" ] || { echo "$0: exp/${t}/checkpoints/last.ckpt: none to save" >&2; exit 1; }
      mkdir -p "${store}/${t}/checkpoints"
      for f in config.yaml cmvn.ark tokens csv; do
        rm -rf "${store}/${t}/${f}.tmp" && cp -a "exp/${t}/${f}" "${store}/${t}/${f}.tmp"
        rm -rf "${store:?}/${t}/${f}" && mv "${store}/${t}/${f}.tmp" "${store}/${t}/${f}"
      done
      cat exp/"${t}"/train.log.[0-9]* exp/"${t}"/train.log 2>/dev/null > "${store}/${t}/train.log.tmp" || true
      mv "${store}/${t}/train.log.tmp" "${store}/${t}/train.log"
      out=${store}/${t}/checkpoints/resume-$(date -u +%Y%m%dT%H%M%S).ckpt
      cp "exp/${t}/checkpoints/last.ckpt" "${out}.tmp" && mv "${out}.tmp" "${out}"
      echo "$0: saved exp/${t} -> ${out} ($(du -sh "${out}" | cut -f1))"
    done ;;
  restore)
    for t in ${teachers}; do
      [ -d "${store}/${t}" ] || { echo "$0: ${store}/${t}: nothing saved" >&2; continue; }
      if [ -f "exp/${t}/checkpoints/last.ckpt" ]; then
        echo "$0: exp/${t} has a resume point of its own; left as it is"; continue
      fi
      ckpt=$(newest "${store}/${t}/checkpoints"); ckpt=${ckpt:-${store}/${t}/checkpoints/last.ckpt}
      mkdir -p "exp/${t}/checkpoints"
      cp -a "${store}/${t}"/{config.yaml,cmvn.ark,tokens,csv,train.log} "exp/${t}/"
      cp "${ckpt}" "exp/${t}/checkpoints/last.ckpt"
      echo "$0: restored ${ckpt} -> exp/${t}"
    done ;;
  *) echo "usage: $0 save|restore [TEACHER...]" >&2; exit 2 ;;
esac
