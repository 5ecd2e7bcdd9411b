"""Pack a trained exp dir into a compact, checked package (float16 weights, sha256 of every file that
matters), the form in which a recipe ships its teachers (kdtool/models/package.py has the layout).

    python -m kdtool.bin.pack_model --exp_dir exp_teacher/ar_teacher --out_dir teachers/ar_teacher \
        --info '{"train_command": "./run.sh --retrain_teachers", "test_wer": 12.3}'
"""
import argparse
import json

from kdtool.bin._common import run_main
from kdtool.models.package import pack


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="a trained exp dir (model.pth, model_info.json, ...)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--info", default="{}", help="JSON object added to the package's model_info.json")
    args = p.parse_args()
    try:
        extra = json.loads(args.info)
    except ValueError as e:
        raise ValueError(f"--info: not JSON: {e}") from None
    if not isinstance(extra, dict):
        raise ValueError("--info: must be a JSON object")
    info = pack(args.exp_dir, args.out_dir, extra)
    print(json.dumps(info["package"], indent=2))


if __name__ == "__main__":
    run_main(main)
