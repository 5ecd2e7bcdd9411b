#!/usr/bin/env bash
# Local backend of kdtool's job runners, with the interface of Kaldi's utils/run.pl:
#
#   run_local.sh [options] [JOB=1:N] <log-file> <command> [args...]
# e.g.
#   run_local.sh --max-jobs-run 2 JOB=1:4 exp/log/fbank.JOB.log \
#     python -m kdtool.bin.compute_fbank --job JOB --nj 4 data/train dump/fbank/train
#
# runs the command once per index 1..4, with every "JOB" in the log name and the command replaced by
# the index, at most --max-jobs-run at once (default: the number of CPUs). Each job writes its own log
# (header, the command's stdout+stderr, footer with its exit code). Arguments without whitespace are
# passed verbatim, so an escaped "\|" or "\>" acts in the job's shell; arguments with whitespace are
# quoted. The options of the queue backend (--mem, --num-threads, --gpu, --time, --config) are accepted
# and ignored here, so a recipe switches backends by changing only its $cmd (see run_slurm.sh).
# Exit status: 0 if every job succeeded; else 1, with the tail of the first failed job's log on stderr.

die() { echo "run_local.sh: $*" >&2; exit 1; }

max_jobs=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
while [[ $# -gt 0 && $1 == --* ]]; do
  opt=${1%%=*}
  case ${opt} in
    --max-jobs-run|--mem|--num-threads|--gpu|--time|--config) ;;
    *) die "unknown option ${opt} (known: --max-jobs-run --mem --num-threads --gpu --time --config)" ;;
  esac
  if [[ $1 == *=* ]]; then val=${1#*=}; shift
  else [ $# -ge 2 ] || die "option ${opt} needs a value"; val=$2; shift 2; fi
  [ "${opt}" = --max-jobs-run ] && max_jobs=${val}
done
[[ ${max_jobs} =~ ^[1-9][0-9]*$ ]] || die "--max-jobs-run must be a positive integer, not '${max_jobs}'"

. "$(dirname "${BASH_SOURCE[0]}")/job_args.sh"
parse_job_args "$@"

status_dir=$(mktemp -d) || die "cannot create a temporary directory"
trap 'rm -rf "${status_dir}"' EXIT

run_job() {  # <index>: runs one job into its log; its exit code goes to ${status_dir}/<index>
  local log=${logfile} c=${cmd} start rc elapsed
  if [ -n "${var}" ]; then log=${log//"${var}"/$1}; c=${c//"${var}"/$1}; fi
  mkdir -p "$(dirname "${log}")" || { echo 1 >"${status_dir}/$1"; return; }
  printf '# %s\n# Started at %s\n' "${c}" "$(date)" >"${log}"
  start=$(date +%s)
  bash -c "set -o pipefail; ${c}" >>"${log}" 2>&1 </dev/null
  rc=$?; elapsed=$(($(date +%s) - start))
  printf '# Accounting: time=%d threads=1\n# Ended (code %d) at %s, elapsed time %d seconds\n' \
    "${elapsed}" "${rc}" "$(date)" "${elapsed}" >>"${log}"
  echo "${rc}" >"${status_dir}/$1"
}

# Each job in its own process group (set -m), so that an interrupt can stop whole jobs, children too.
set -m
trap 'for p in $(jobs -p); do kill -TERM -- -"${p}" 2>/dev/null; done; disown -a
      echo "run_local.sh: interrupted, jobs killed" >&2; exit 130' INT TERM
running=0
for ((i = first; i <= last; i++)); do
  if [ "${running}" -ge "${max_jobs}" ]; then wait -n; running=$((running - 1)); fi
  run_job "${i}" &
  running=$((running + 1))
done
wait

failed=(); num_jobs=$((last - first + 1))
for ((i = first; i <= last; i++)); do
  [ "$(cat "${status_dir}/${i}" 2>/dev/null)" = 0 ] || failed+=("${i}")
done
[ ${#failed[@]} -eq 0 ] && exit 0
pattern=${logfile}; [ -n "${var}" ] && pattern=${logfile//"${var}"/*}
first_log=${logfile}; [ -n "${var}" ] && first_log=${logfile//"${var}"/${failed[0]}}
echo "run_local.sh: ${#failed[@]} / ${num_jobs} failed, log is in ${pattern}" >&2
echo "run_local.sh: last lines of ${first_log}:" >&2
tail -n 20 "${first_log}" >&2
exit 1
