"""Stage 6: decode a feature dir with a trained model (stage 3 or 5 exp dir).

    python -m kdtool.bin.decode --model_dir exp/teacher_ar --data dump/fbank/test \
        --config conf/decode_ar_beam10.yaml --out_dir exp/teacher_ar/decode_ar_beam10_test
    # on a GPU: the same with --device cuda (or cuda:N)

The config names a method and its options (unknown keys are an error), e.g.

    method: ar_beam        # ctc_greedy | ar_beam | maskctc_greedy | maskctc_beam | transducer_greedy | ...
    beam_size: 10
    ctc_weight: 0.3

Writes text, decode_time and decode_info.json (which records the device and the sha256 of the weights
and of feats.scp) into --out_dir, ready for
``python -m kdtool.bin.score --ref <data> <out_dir>`` (the RTF is wall time over audio: on a GPU, the
GPU's). See kdtool/decode/runner.py for every method's options and defaults.

``--backend onnx`` (or ``onnx_int8``) decodes with the model's export (python -m kdtool.bin.export)
in onnxruntime instead, from raw fbank: the same searches, the graphs instead of PyTorch.
"""
import argparse

from kdtool.bin._common import command_line, run_main
from kdtool.decode.runner import decode_dir, load_decode_config, up_to_date
from kdtool.models.load import resolve_device


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="trained exp dir (model.pth, config.yaml, tokens/, cmvn.ark)")
    p.add_argument("--data", required=True, help="feature dir from stage 2 (feats.scp, utt2num_frames)")
    p.add_argument("--config", required=True, help="decode YAML: method and its options")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (1: single-thread RTF)")
    p.add_argument("--device", default="cpu", help="torch device of the model: cpu, cuda or cuda:N")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx_int8"),
                   help="torch: the PyTorch model; onnx / onnx_int8: the fp32 / int8 graphs of --export_dir in "
                        "onnxruntime on the CPU (methods ctc_greedy, maskctc_greedy, maskctc_beam, "
                        "transducer_greedy, transducer_streaming; make them with python -m kdtool.bin.export)")
    p.add_argument("--export_dir", default=None, help="the model's export dir (default: <model_dir>/export)")
    p.add_argument("--skip_up_to_date", action="store_true",
                   help="do nothing if --out_dir was decoded from the same weights, features and config "
                        "(what stage 6 passes, so that a rerun decodes only what changed)")
    return p


def main():
    parser = get_parser()
    args = parser.parse_args()
    if args.num_threads < 1:
        parser.error(f"--num_threads must be 1 or more, not {args.num_threads}")
    device = resolve_device(args.device)  # an unusable device fails before any work
    method, options = load_decode_config(args.config)  # a bad config fails before the model is loaded
    if args.skip_up_to_date and up_to_date(args.out_dir, args.model_dir, args.data, method, options, args.backend,
                                           args.export_dir):
        print(f"{args.out_dir}: up to date (same weights, features and config); skipped")
        return
    info = decode_dir(args.model_dir, args.data, method, options, args.out_dir, args.num_threads,
                      command_line("kdtool.bin.decode"), device, args.backend, args.export_dir)
    print(f"{args.out_dir}: {info['utterances']} utterances decoded with {info['method']}")


if __name__ == "__main__":
    run_main(main)
