#!/usr/bin/env bash
# Pack the teachers mini_en ships (teachers/<name>/, installed by stage 3) from their exp dirs after
# ./run.sh --retrain_teachers: each is decoded on dev, test and test_unseen with its decode configs, and the
# package's model_info.json gets the WERs, the training command, the data, the epochs and the training time.
#   local/pack_teachers.sh                   # exp/ar_teacher, exp/transducer_teacher (finished: model.pth)
#   local/pack_teachers.sh --snapshot true   # trainings still under way: their best epochs so far (an interim
#                                            # package, model_info "snapshot": true; local/snapshot_teacher.py)
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=false
teachers="ar_teacher transducer_teacher"
sets="dev test test_unseen"
decode_jobs=2
. utils/parse_options.sh
. ./path.sh
declare -A decodes=([ar_teacher]="conf/decode_ar_beam10.yaml"
                    [transducer_teacher]="conf/decode_transducer_beam4.yaml conf/decode_transducer_streaming.yaml")
train_set=train_teacher  # what both were trained on (./run.sh --retrain_teachers)

for t in ${teachers}; do
  exp=exp/${t}
  if ${snapshot}; then
    python local/snapshot_teacher.py "${exp}" "${exp}_snapshot"
    exp=${exp}_snapshot
  fi
  [ -f "${exp}/model.pth" ] || { echo "$0: ${exp}/model.pth: missing (training not finished? --snapshot true packs it as it is)" >&2; exit 1; }
  for config in ${decodes[${t}]}; do
    name=$(basename "${config}" .yaml | sed 's/^decode_//')
    for x in ${sets}; do
      out=${exp}/decode_${name}_${x}
      echo "$0: decoding ${x} with ${exp} (${config})"
      python -m kdtool.bin.decode --model_dir "${exp}" --data "dump/fbank/${x}" --config "${config}" --out_dir "${out}" \
        --num_threads 1 --skip_up_to_date > "${out}.log" 2>&1 &
      while [ "$(jobs -pr | wc -l)" -ge "${decode_jobs}" ]; do wait -n; done
    done
  done
  wait
  for config in ${decodes[${t}]}; do
    name=$(basename "${config}" .yaml | sed 's/^decode_//')
    for x in ${sets}; do python -m kdtool.bin.score --ref "dump/fbank/${x}" "${exp}/decode_${name}_${x}"; done
  done
  info=$(python - "${exp}" "${train_set}" "${snapshot}" <<'PY'
import json, sys
from pathlib import Path
exp, train, snapshot = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "true"
info = json.loads((exp / "model_info.json").read_text())
frames = [int(l.split()[1]) for l in open(f"dump/fbank/{train}/utt2num_frames")]
wer = {d.name[len("decode_"):]: json.loads((d / "score.json").read_text())["wer"] for d in sorted(exp.glob("decode_*"))
       if (d / "score.json").is_file()}
print(json.dumps({"train_command": "./run.sh --retrain_teachers --stop_stage 3  (egs/mini_en/kd1)",
                  "train_data": {"set": train, "utterances": len(frames), "hours": round(sum(frames) / 100 / 3600, 2)},
                  "wer": wer, **({"snapshot": True} if snapshot else {})}))
PY
)
  python -m kdtool.bin.pack_model --exp_dir "${exp}" --out_dir "teachers/${t}" --info "${info}"
done
