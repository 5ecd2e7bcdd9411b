# Where parallel jobs run; edit this file (or set KDTOOL_CMD_BACKEND) for your machine.
#   local: jobs run on this machine, at most --max-jobs-run at once (tools/run_local.sh, like Kaldi's run.pl)
#   slurm: one array job per step on a SLURM cluster (tools/run_slurm.sh, like Kaldi's slurm.pl);
#          add partitions or accounts through KDTOOL_SBATCH_OPTS, e.g. "--partition=gpu --account=me"
# Usage inside the pipeline:  ${train_cmd} JOB=1:4 exp/log/x.JOB.log python -m kdtool.bin.x --job JOB
cmd_backend=${KDTOOL_CMD_BACKEND:-local}
case "${cmd_backend}" in
  local)
    export train_cmd="run_local.sh"
    export cuda_cmd="run_local.sh"
    export decode_cmd="run_local.sh" ;;
  slurm)
    export train_cmd="run_slurm.sh --mem 4G"
    export cuda_cmd="run_slurm.sh --mem 16G --gpu 1"
    export decode_cmd="run_slurm.sh --mem 4G" ;;
  *)
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local or slurm)" >&2
    exit 1 ;;
esac
