# Sourced by run_local.sh and run_slurm.sh: what both make of the arguments after the options,
#   [VAR=a:b] <log-file> <command> [args...]
# parse_job_args "$@" sets var (empty without a range), first, last, logfile and cmd, or calls the
# caller's die() with a clear message.
parse_job_args() {
  var=; first=1; last=1
  if [[ ${1:-} =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
    var=${BASH_REMATCH[1]}
    [[ ${BASH_REMATCH[2]} =~ ^([0-9]+):([0-9]+)$ ]] || die "bad job range '$1' (expected e.g. JOB=1:4)"
    first=$((10#${BASH_REMATCH[1]})); last=$((10#${BASH_REMATCH[2]}))
    [ "${first}" -le "${last}" ] || die "bad job range '$1': the end is before the start"
    shift
  fi
  [ $# -ge 2 ] || die "usage: $(basename "$0") [options] [JOB=1:N] <log-file> <command> [args...]"
  logfile=$1; shift
  if [ "${last}" -gt "${first}" ] && [[ ${logfile} != *"${var}"* ]]; then
    die "the log file '${logfile}' does not contain ${var}: all jobs would write the same log"
  fi
  # Join the command as run.pl does: only arguments with whitespace (or empty ones) are quoted.
  cmd=
  local arg
  for arg in "$@"; do
    if [[ -n ${arg} && ${arg} != *[[:space:]]* ]]; then cmd+="${arg} "; else cmd+="$(printf %q "${arg}") "; fi
  done
  cmd=${cmd% }
}
