"""Stage 5: train a student by distillation from a teacher's soft labels and N-best lists.

    python -m kdtool.bin.distill --config conf/train_ctc_student_kd.yaml \
        --train_data dump/fbank/train --untrans_data dump/fbank/untrans --valid_data dump/fbank/dev \
        --teacher_dir exp/ar_teacher --soft_label_dir exp/ar_teacher/soft_labels \
        --token_list data/token_list/char --cmvn dump/fbank/train/cmvn.ark --exp_dir exp/ctc_student_kd

The config's kd_conf picks the dumps under --soft_label_dir by stage 4's names (e.g.
fb_posteriors_train, frame_posteriors_untrans, token_posteriors_train, nbest_train); --soft_labels
and --nbest name dump dirs explicitly instead.

loss = (1 - alpha) * supervised + alpha * (weighted frame-, token-, sequence- and lattice-level KD
terms); an untranscribed utterance (a set without text) learns from the teacher alone. alpha, T,
the terms' weights, online mode and initialisation from the teacher are in the config's kd_conf /
init_conf (documented in kdtool/kd/distill.py). Same trainer as stage 3: DDP flags, resume after a
kill, checkpoint averaging. model_info.json records the config, its twin's (kdtool.kd.distill.twin_config),
the seed and the teacher: what the results table reads.
"""
from kdtool.bin._common import command_line, run_main
from kdtool.bin.train import devices, model_checked, with_seed
from kdtool.bin.train import get_parser as train_parser
from kdtool.kd.distill import distill, load_student_config, twin_config


def get_parser():
    p = train_parser(__doc__)  # stage 3's options (config, data, tokens, CMVN, exp dir, devices)
    p.add_argument("--untrans_data", nargs="*", default=[],
                   help="untranscribed feature dir(s); used when kd_conf.untranscribed is true")
    p.add_argument("--soft_labels", nargs="*", default=[],
                   help="soft-label dump dir(s) from stage 4, any types; each feeds the KD term of its type")
    p.add_argument("--nbest", nargs="*", default=[], help="N-best dir(s) from stage 4 (sequence-level KD)")
    p.add_argument("--teacher_dir", default=None, help="teacher exp dir (online mode, init_conf)")
    p.add_argument("--soft_label_dir", default=None, help="stage 4's output dir: dumps found by their names")
    return p


def main():
    args = get_parser().parse_args()
    config = model_checked(with_seed(load_student_config(args.config, args.overrides), args.seed), args)
    distill(config, args.exp_dir, args.train_data, args.valid_data, args.token_list, args.cmvn,
            soft_label_dirs=args.soft_labels, nbest_dirs=args.nbest, teacher_dir=args.teacher_dir,
            soft_label_dir=args.soft_label_dir, untrans_dirs=args.untrans_data, devices=devices(args),
            num_nodes=args.num_nodes, accelerator=args.accelerator,
            extra_info={"config": args.config, "overrides": args.overrides,
                        "twin_config": twin_config(args.config, args.overrides), "seed": config["seed"],
                        "seed_option": args.seed, "command": command_line("kdtool.bin.distill")})


if __name__ == "__main__":
    run_main(main)
