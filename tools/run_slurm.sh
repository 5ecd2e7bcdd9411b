#!/usr/bin/env bash
# SLURM backend of kdtool's job runners: the interface of run_local.sh (Kaldi's run.pl/slurm.pl):
#
#   run_slurm.sh [options] [JOB=1:N] <log-file> <command> [args...]
# e.g.
#   run_slurm.sh --mem 8G --num-threads 4 --gpu 1 --time 12:00:00 JOB=1:4 exp/log/train.JOB.log \
#     python -m kdtool.bin.train --job JOB ...
#
# Submits ONE array job (sbatch --wait --array=1-4) and waits for it; each array task runs the job
# whose index is its SLURM_ARRAY_TASK_ID and writes the same log as run_local.sh. Options map to sbatch:
# --mem X -> --mem=X, --num-threads N -> --cpus-per-task=N, --gpu N -> --gres=gpu:N, --time T -> --time=T,
# --max-jobs-run K -> --array=1-4%K; more sbatch flags come from $KDTOOL_SBATCH_OPTS (split on spaces,
# e.g. "--partition=gpu --account=asr"). The batch script, the tasks' SLURM output and their exit codes
# (<name>.done.<index>) go to <log dir>/q/. Interrupting this script does not cancel the array job:
# use scancel --name=<name>. Exit status: 0 if every job succeeded; else 1, with the tail of the first
# failed job's log on stderr.

die() { echo "run_slurm.sh: $*" >&2; exit 1; }

max_jobs=; threads=1; sbatch_opts=()
while [[ $# -gt 0 && $1 == --* ]]; do
  opt=${1%%=*}
  case ${opt} in
    --max-jobs-run|--mem|--num-threads|--gpu|--time|--config) ;;
    *) die "unknown option ${opt} (known: --max-jobs-run --mem --num-threads --gpu --time --config)" ;;
  esac
  if [[ $1 == *=* ]]; then val=${1#*=}; shift
  else [ $# -ge 2 ] || die "option ${opt} needs a value"; val=$2; shift 2; fi
  case ${opt} in
    --max-jobs-run) [[ ${val} =~ ^[1-9][0-9]*$ ]] || die "--max-jobs-run must be a positive integer"
                    max_jobs=${val} ;;
    --mem) sbatch_opts+=("--mem=${val}") ;;
    --num-threads) threads=${val}; sbatch_opts+=("--cpus-per-task=${val}") ;;
    --gpu) [ "${val}" = 0 ] || sbatch_opts+=("--gres=gpu:${val}") ;;  # Kaldi's "--gpu 0": no GPU
    --time) sbatch_opts+=("--time=${val}") ;;
    --config) ;;  # Kaldi's queue configs have no meaning here; use KDTOOL_SBATCH_OPTS instead
  esac
done

. "$(dirname "${BASH_SOURCE[0]}")/job_args.sh"
parse_job_args "$@"
command -v sbatch >/dev/null || die "sbatch not found on PATH: not a SLURM machine? (run_local.sh runs jobs locally)"

# q/ sits beside the logs (above any directory named after the index), named after the log file.
qdir=$(dirname "${logfile}")
while [ -n "${var}" ] && [[ ${qdir} == *"${var}"* ]]; do qdir=$(dirname "${qdir}"); done
qdir=${qdir}/q
name=$(basename "${logfile}" .log)
[ -n "${var}" ] && { name=${name//."${var}"/}; name=${name//"${var}"/}; }
name=${name:-job}
mkdir -p "${qdir}" || die "cannot create ${qdir}"
rm -f "${qdir}/${name}.done."*  # stale exit codes would hide jobs that never ran

# The batch script: the values are fixed here (quoted with %q), the task's index is read at run time.
{
  echo '#!/usr/bin/env bash'
  echo "# Written by run_slurm.sh; run as one task of a SLURM array job."
  printf 'cd %q || exit 1\n' "${PWD}"
  printf 'var=%q logfile=%q cmd=%q done_file=%q threads=%q\n' \
    "${var}" "${logfile}" "${cmd}" "${qdir}/${name}.done" "${threads}"
  cat <<'EOF'
i=${SLURM_ARRAY_TASK_ID:?not run as a task of a SLURM array job}
log=${logfile} c=${cmd}
if [ -n "${var}" ]; then log=${log//"${var}"/${i}}; c=${c//"${var}"/${i}}; fi
mkdir -p "$(dirname "${log}")"
printf '# %s\n# Started at %s\n' "${c}" "$(date)" >"${log}"
start=$(date +%s)
bash -c "set -o pipefail; ${c}" >>"${log}" 2>&1 </dev/null
rc=$?; elapsed=$(($(date +%s) - start))
printf '# Accounting: time=%d threads=%s\n# Ended (code %d) at %s, elapsed time %d seconds\n' \
  "${elapsed}" "${threads}" "${rc}" "$(date)" "${elapsed}" >>"${log}"
echo "${rc}" >"${done_file}.${i}"
exit "${rc}"
EOF
} >"${qdir}/${name}.sh" || die "cannot write ${qdir}/${name}.sh"

array="${first}-${last}${max_jobs:+%${max_jobs}}"
# KDTOOL_SBATCH_OPTS is split on whitespace on purpose.
# shellcheck disable=SC2086
sbatch --wait --array="${array}" --job-name="${name}" --output="${qdir}/${name}.%a.out" \
  "${sbatch_opts[@]}" ${KDTOOL_SBATCH_OPTS:-} "${qdir}/${name}.sh" >&2
sbatch_rc=$?

# sbatch's exit code only says that some task failed: the done files say which.
failed=(); num_jobs=$((last - first + 1))
for ((i = first; i <= last; i++)); do
  [ "$(cat "${qdir}/${name}.done.${i}" 2>/dev/null)" = 0 ] || failed+=("${i}")
done
[ ${#failed[@]} -eq 0 ] && exit 0
pattern=${logfile}; [ -n "${var}" ] && pattern=${logfile//"${var}"/*}
first_log=${logfile}; [ -n "${var}" ] && first_log=${logfile//"${var}"/${failed[0]}}
echo "run_slurm.sh: ${#failed[@]} / ${num_jobs} failed, log is in ${pattern}" >&2
if [ ! -f "${qdir}/${name}.done.${failed[0]}" ]; then
  echo "run_slurm.sh: job ${failed[0]} left no exit code (sbatch exited with ${sbatch_rc}; killed or" \
    "never started? see ${qdir}/${name}.${failed[0]}.out)" >&2
fi
if [ -f "${first_log}" ]; then
  echo "run_slurm.sh: last lines of ${first_log}:" >&2
  tail -n 20 "${first_log}" >&2
fi
exit 1
