"""Kaldi-compatible 80-dim fbank for a data dir, in parallel jobs, to ark/scp.

    # one job of N (run N of these through cmd.sh's runner), then merge:
    python -m kdtool.bin.compute_fbank --nj 4 --job 2 data/train dump/fbank/train
    python -m kdtool.bin.compute_fbank --nj 4 --merge data/train dump/fbank/train

    # or all in one process (--nj 1, no --job): compute and merge
    python -m kdtool.bin.compute_fbank data/train dump/fbank/train

The merged dir holds feats.scp, utt2num_frames and a copy of the data dir's files.
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.features.fbank import compute_fbank_job, merge_fbank_jobs
from kdtool.utils.jobs import check_jobs


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p.add_argument("--nj", type=int, default=1, help="number of jobs the data dir is split into")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--job", type=int, help="which job (1-based) to compute")
    g.add_argument("--merge", action="store_true", help="join the finished jobs' outputs")
    p.add_argument("--fs", type=int, default=16000, help="expected sample rate of every utterance")
    p.add_argument("--num_mel_bins", type=int, default=80)
    p.add_argument("--cmd_timeout", type=float, default=None,
                   help="seconds a wav.scp command may run (default: $KDTOOL_WAV_CMD_TIMEOUT or 300)")
    return p


def main():
    args = get_parser().parse_args()
    check_jobs(args.nj, args.job)
    if args.merge:
        merge_fbank_jobs(args.data_dir, args.out_dir, args.nj)
        return
    if args.job is None and args.nj > 1:
        raise ValueError(f"--nj {args.nj} without --job: run each of the {args.nj} jobs with --job N "
                         "(1..nj), then --merge; or --nj 1 to compute and merge in one process")
    compute_fbank_job(args.data_dir, args.out_dir, args.job or 1, args.nj, args.fs, args.num_mel_bins,
                      args.cmd_timeout)
    if args.job is None:
        merge_fbank_jobs(args.data_dir, args.out_dir, 1)


if __name__ == "__main__":
    run_main(main)
