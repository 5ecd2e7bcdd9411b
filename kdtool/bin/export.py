"""Export a trained model (stage 3 or 5 exp dir) to ONNX, fp32 and int8, with a tokens.txt that
sherpa-onnx reads:

    python -m kdtool.bin.export --model_dir exp/ctc_student --out_dir exp/ctc_student/export

ctc, nar (Mask-CTC) and ar models: model.onnx (raw fbank -> CTC log-probs, CMVN inside; sherpa-onnx
loads it with OfflineRecognizer.from_zipformer_ctc), and for nar mlm_decoder.onnx; streaming
transducers: encoder.onnx (a chunk step with its caches), decoder.onnx, joiner.onnx, in kdtool's layout
(LSTM prediction network) or, for a model trained with ``decoder: stateless``, in sherpa-onnx's
(OnlineRecognizer.from_transducer; --layout). Each graph is
checked against PyTorch before the dir is written; export_info.json records the checks, what int8
quantized, sizes and sha256. Decode the export with ``python -m kdtool.bin.decode --backend onnx``
(or onnx_int8). See kdtool/export/exporter.py.
"""
import argparse
import json
from pathlib import Path

from kdtool.bin._common import run_main
from kdtool.export.exporter import DEFAULT_CHUNK_SIZE, LAYOUTS, export_model
from kdtool.utils.files import file_sha256


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="trained exp dir (model.pth, config.yaml, tokens/, cmvn.ark)")
    p.add_argument("--out_dir", required=True, help="export dir (replaced whole once the export is complete)")
    p.add_argument("--no_int8", action="store_true", help="fp32 graphs only")
    p.add_argument("--left_context", type=int, default=None,
                   help="streaming transducer: encoder frames of left context the chunk step keeps (default: "
                        "num_left_chunks * chunk_size if the model was trained with it, else 256)")
    p.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help="streaming transducer: encoder frames per chunk the export is checked with (the sherpa "
                        "layout: the chunk sherpa-onnx decodes with)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="streaming transducer: kdtool (LSTM prediction network; kdtool's onnx backend) or sherpa "
                        "(sherpa-onnx's icefall conformer layout, which needs decoder: stateless); default: the "
                        "one the model's prediction network fits")
    p.add_argument("--skip_up_to_date", action="store_true",
                   help="do nothing if --out_dir is a complete export of the same weights and tokens with the same "
                        "options (what kd.sh --export_students true passes)")
    return p


def up_to_date(args):
    """Whether ``args.out_dir`` holds a complete export of ``args.model_dir``'s weights and tokens, made with
    these options: every file export_info.json lists, of its size and sha256."""
    out, model_dir = Path(args.out_dir), Path(args.model_dir)
    try:
        info = json.loads((out / "export_info.json").read_text(encoding="utf-8"))
        same = (info["model_sha256"] == file_sha256(model_dir / "model.pth")
                and info["tokens_sha256"] == file_sha256(model_dir / "tokens" / "tokens.txt"))
        int8 = any(name.endswith(".int8.onnx") for name in info["files"])
        meta = info["metadata"]
        if info["kdtool_kind"] == "transducer":  # the options a streaming export was made with
            same = same and meta["chunk_size"] == str(args.chunk_size) and (
                args.left_context is None or meta["left_context"] == str(args.left_context)) and (
                args.layout is None or meta.get("layout", "kdtool") == args.layout)
        return same and int8 == (not args.no_int8) and all(
            (out / name).stat().st_size == f["bytes"] and file_sha256(out / name) == f["sha256"]
            for name, f in info["files"].items() if name != "export_info.json")
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no export, an incomplete or older one: exported again (a missing model is reported then)


def main():
    parser = get_parser()
    args = parser.parse_args()
    for name in ("left_context", "chunk_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    if args.skip_up_to_date and up_to_date(args):
        print(f"{args.out_dir}: up to date (same weights, tokens and options); skipped")
        return
    info = export_model(args.model_dir, args.out_dir, int8=not args.no_int8, left_context=args.left_context,
                        chunk_size=args.chunk_size, layout=args.layout)
    mb = {name: f["bytes"] / 1e6 for name, f in info["files"].items()}
    for name, g in info["graphs"].items():
        line = f"{args.out_dir}/{name}: {mb[name]:.2f} MB, max |onnx - torch| {g['check']['max_abs_diff']:.2g}"
        int8 = g.get("int8")
        if int8:
            line += (f"; {int8['file']}: {mb[int8['file']]:.2f} MB, max |int8 - torch| {int8['max_abs_diff']:.2g}, "
                     f"quantized {int8['quantized']}")
        print(line)


if __name__ == "__main__":
    run_main(main)
