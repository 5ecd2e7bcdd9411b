"""Stage 4: dump a teacher's soft labels (frame posteriors) to ark/scp, in parallel jobs.

    # one job of N (run N of these through cmd.sh's runner), then merge:
    python -m kdtool.bin.dump_soft_labels --teacher exp/ar_teacher --data dump/fbank/train \
        --out_dir exp/ar_teacher/soft_labels_train --type frame_posteriors --topk 8 --temperature 2.0 \
        --nj 4 --job 2
    python -m kdtool.bin.dump_soft_labels --teacher exp/ar_teacher --data dump/fbank/train \
        --out_dir exp/ar_teacher/soft_labels_train --type frame_posteriors --topk 8 --temperature 2.0 \
        --nj 4 --merge

Without --job and with --nj 1, the one job runs and is merged. --device cuda (or cuda:N) runs the
teacher on a GPU (the merge needs none). Types:

    frame_posteriors   softmax(CTC logits / T) per encoder frame, every utterance (text not needed)
    fb_posteriors      CTC forward-backward occupancies given the transcript (temperature 1)

--topk K stores the K most probable tokens per frame (renormalized); unset or 0: dense.
The merged dir holds soft_labels.{json,scp}, the jobs' arks and dump_info.json (counts, storage,
speed, and the sha256 of the teacher's weights and the data it was made from); the format is
documented in kdtool/kd/softlabels.py.

--check (with the options of the dump) only says whether --out_dir is up to date: exit 0 when it is
a complete dump made with these options from the teacher's current weights and the data dir's
current features (and transcripts, for the types that read them), else exit 1 with the reason
(stage 4 then redoes it).
"""
import argparse

from kdtool.bin._common import dump_jobs_and_check, run_main
from kdtool.utils import provenance

TYPES = ("frame_posteriors", "fb_posteriors", "token_posteriors", "rnnt_lattice")  # kdtool.kd.softlabels.TYPES


def str2bool(v):
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {v!r}")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="trained exp dir (model.pth, config.yaml, tokens/, cmvn.ark)")
    p.add_argument("--data", required=True, help="feature dir from stage 2 (feats.scp, utt2num_frames[, text])")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--type", choices=TYPES, default="frame_posteriors")
    p.add_argument("--topk", type=int, default=None, help="keep the K most probable tokens per frame (0/unset: dense)")
    p.add_argument("--temperature", type=float, default=1.0, help="frame_posteriors: softmax(logits / T)")
    p.add_argument("--nj", type=int, default=1, help="number of jobs the data dir is split into")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--job", type=int, help="which job (1-based) to compute")
    g.add_argument("--merge", action="store_true", help="join the finished jobs' outputs, write dump_info.json")
    g.add_argument("--check", action="store_true",
                   help="exit 0 if --out_dir is complete and up to date (teacher, data, options), else 1")
    p.add_argument("--batch_size", type=int, default=16, help="utterances per encoder batch (sorted by length)")
    p.add_argument("--skip_bad", type=str2bool, default=False,
                   help="true: leave out (and count) utterances that cannot be aligned / are too short")
    p.add_argument("--device", default="cpu", help="the teacher's torch device: cpu, cuda or cuda:N (not for --merge)")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (parallelism comes from the jobs)")
    return p


def main():
    parser = get_parser()
    args = parser.parse_args()
    if args.nj < 1:
        parser.error(f"--nj must be 1 or more, not {args.nj}")
    if args.topk is not None and args.topk < 0:
        parser.error(f"--topk must be 0 (dense) or more, not {args.topk}")
    if args.temperature <= 0:
        parser.error(f"--temperature must be positive, not {args.temperature}")
    if args.batch_size < 1 or args.num_threads < 1:
        parser.error("--batch_size and --num_threads must be 1 or more")
    dump_jobs_and_check(parser, args, "soft_labels.json", "dump_info.json",
                        provenance.soft_label_options(args.type, args.topk, args.temperature))
    from kdtool.kd.dump import dump_job, merge_dump
    from kdtool.models.load import resolve_device
    if args.merge:
        info = merge_dump(args.out_dir, args.nj)
        print(f"{args.out_dir}: {info['utterances']} utterances, {info['frames']} frames, "
              f"{info['bytes_per_frame']:.1f} bytes/frame")
        return
    device = resolve_device(args.device)  # an unusable device fails before any work
    import torch
    torch.set_num_threads(args.num_threads)
    dump_job(args.teacher, args.data, args.out_dir, args.type, args.topk or None, args.temperature,
             args.job or 1, args.nj, args.batch_size, args.skip_bad, device)
    if args.job is None and args.nj == 1:
        info = merge_dump(args.out_dir, 1)
        print(f"{args.out_dir}: {info['utterances']} utterances, {info['frames']} frames, "
              f"{info['bytes_per_frame']:.1f} bytes/frame")


if __name__ == "__main__":
    run_main(main)
