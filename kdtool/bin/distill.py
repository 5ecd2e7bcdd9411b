"""Stage 5: train a student by frame-level distillation from a teacher's soft labels.

    python -m kdtool.bin.distill --config conf/train_ctc_student_kd.yaml \
        --train_data dump/fbank/train dump/fbank/untrans --valid_data dump/fbank/dev \
        --soft_labels exp/ar_teacher/soft_labels/fb_posteriors_train \
                      exp/ar_teacher/soft_labels/frame_posteriors_untrans \
        --teacher_dir exp/ar_teacher --token_list data/token_list/bpe_unigram300 \
        --cmvn dump/fbank/train/cmvn.ark --exp_dir exp/ctc_student_kd

loss = (1 - alpha) * supervised + alpha * T^2 * KL(teacher || student CTC posteriors at T); an
untranscribed utterance (a set without text) contributes the KD term only. alpha, T, online
mode and initialisation from the teacher are in the config's kd_conf / init_conf (documented in
kdtool/kd/distill.py). Same trainer as stage 3: DDP flags, resume after a kill, checkpoint averaging.
"""
import argparse

from kdtool.bin._common import run_main
from kdtool.kd.distill import distill, load_student_config


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="student model + training + kd_conf YAML")
    p.add_argument("--train_data", required=True, nargs="+", help="feature dir(s) from stage 2")
    p.add_argument("--valid_data", required=True)
    p.add_argument("--soft_labels", nargs="*", default=[], help="soft-label dump dir(s) from stage 4")
    p.add_argument("--teacher_dir", default=None, help="teacher exp dir (online mode, init_conf)")
    p.add_argument("--token_list", required=True, help="token-list dir from stage 2 (the teacher's)")
    p.add_argument("--cmvn", required=True, help="global CMVN stats of the training set")
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    p.add_argument("--devices", default="auto", help="number of GPUs (or 'auto')")
    p.add_argument("--num_nodes", type=int, default=1)
    return p


def main():
    args = get_parser().parse_args()
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    distill(load_student_config(args.config), args.exp_dir, args.train_data, args.valid_data, args.token_list,
            args.cmvn, soft_label_dirs=args.soft_labels, teacher_dir=args.teacher_dir, devices=devices,
            num_nodes=args.num_nodes, accelerator=args.accelerator)


if __name__ == "__main__":
    run_main(main)
