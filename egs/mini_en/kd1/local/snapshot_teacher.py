"""A teacher whose training is still under way, as a trained exp dir: model.pth averages the best epoch
checkpoints on disk so far (what the finished training would average), model_info.json says it is a snapshot.
local/pack_teachers.sh --snapshot true packs such a dir as an interim shipped teacher.

    python local/snapshot_teacher.py exp/ar_teacher exp/ar_teacher_snapshot
"""
import json
import re
import shutil
import sys
from pathlib import Path

import torch

from kdtool.models import count_params, model_size_mb
from kdtool.models.load import load_trained, write_checksums
from kdtool.train.trainer import average_checkpoints


def main(src, dst):
    src, dst = Path(src), Path(dst)
    best = sorted(src.glob("checkpoints/epoch*.ckpt"))
    if not best:
        sys.exit(f"{src}/checkpoints: no epoch checkpoint yet (the first epoch has not ended)")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.yaml", "cmvn.ark"):
        shutil.copy2(src / name, tmp / name)
    shutil.copytree(src / "tokens", tmp / "tokens")
    torch.save(average_checkpoints(best), tmp / "model.pth")
    write_checksums(tmp)
    trained = load_trained(tmp)
    text = "".join(p.read_text(errors="replace") for p in sorted(src.glob("train.log*")))
    epochs = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"epoch (\d+)/\d+ done in ([\d.]+) s", text)]
    command = next((ln[2:] for ln in text.splitlines() if ln.startswith("# python -m kdtool.bin.train")), None)
    info = {"kind": trained.model.kind, "params": count_params(trained.model),
            "size_mb": round(model_size_mb(trained.model), 3), "vocab_size": len(trained.tokenizer),
            "input_size": int(trained.cmvn.shape[1] - 1), "averaged": [p.name for p in best],
            "epochs": max((e for e, _ in epochs), default=0), "snapshot": True, "command": command,
            "train_minutes": round(sum(dict(epochs).values()) / 60, 1)}
    (tmp / "model_info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"{dst}: {info['kind']}, {info['params']} parameters, epochs {info['epochs']}, averaged "
          f"{', '.join(info['averaged'])}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
