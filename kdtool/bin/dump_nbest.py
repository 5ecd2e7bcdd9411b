"""Stage 4: an AR teacher's N-best lists (for sequence-level distillation), in parallel jobs.

    # one job of N (run N of these through cmd.sh's runner), then merge:
    python -m kdtool.bin.dump_nbest --teacher exp/ar_teacher --data dump/fbank/train \
        --out_dir exp/ar_teacher/soft_labels/nbest_train --nbest 5 --beam_size 10 --nj 4 --job 2
    python -m kdtool.bin.dump_nbest --teacher exp/ar_teacher --data dump/fbank/train \
        --out_dir exp/ar_teacher/soft_labels/nbest_train --nj 4 --merge

Joint CTC/attention beam search (as stage 6's ar_beam); --device cuda (or cuda:N) runs it on a GPU
(the merge needs none). The format is documented in kdtool/kd/nbest.py. Untranscribed sets work too:
the lists need no transcript. --check (with the dump's options) exits 0 when --out_dir is complete and
made with these options from the teacher's current weights and the data's current features, else 1
with the reason (stage 4 then redoes it).
"""
import argparse

from kdtool.bin._common import dump_jobs_and_check, run_main
from kdtool.utils import provenance


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="trained AR exp dir")
    p.add_argument("--data", required=True, help="feature dir from stage 2")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--nbest", type=int, default=5, help="hypotheses kept per utterance")
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--ctc_weight", type=float, default=0.3, help="weight of the CTC prefix score in the search")
    p.add_argument("--nj", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--job", type=int, help="which job (1-based) to compute")
    g.add_argument("--merge", action="store_true", help="join the finished jobs' lists into nbest.jsonl")
    g.add_argument("--check", action="store_true",
                   help="exit 0 if --out_dir is complete and up to date (teacher, data, options), else 1")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per encoder batch")
    p.add_argument("--device", default="cpu", help="the teacher's torch device: cpu, cuda or cuda:N (not for --merge)")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (parallelism comes from the jobs)")
    return p


def main():
    parser = get_parser()
    args = parser.parse_args()
    if args.nj < 1 or args.batch_size < 1 or args.num_threads < 1:
        parser.error("--nj, --batch_size and --num_threads must be 1 or more")
    dump_jobs_and_check(parser, args, "nbest.json", "nbest.jsonl",
                        provenance.nbest_options(args.nbest, args.beam_size, args.ctc_weight))
    from kdtool.kd.nbest import dump_nbest_job, merge_nbest
    from kdtool.models.load import resolve_device
    if not args.merge:
        device = resolve_device(args.device)  # an unusable device fails before any work
        import torch
        torch.set_num_threads(args.num_threads)
        dump_nbest_job(args.teacher, args.data, args.out_dir, args.nbest, args.beam_size, args.ctc_weight,
                       args.job or 1, args.nj, args.batch_size, device)
    if args.merge or args.nj == 1:
        print(f"{args.out_dir}: N-best lists of {merge_nbest(args.out_dir, args.nj)} utterances")


if __name__ == "__main__":
    run_main(main)
