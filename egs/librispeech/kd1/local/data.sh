#!/usr/bin/env bash
# Stage 1: Kaldi-style data dirs for LibriSpeech, run from the recipe folder:
#     local/data.sh [--librispeech DIR] [--train_sets train-clean-100,train-clean-360] [--check_audio true]
# writes data/<set> with - turned into _ (data/train_clean_100, data/dev_clean, data/test_clean, and
# data/dev_other, data/test_other when the corpus has them), then fixes and validates each.
# With more than one training subset it also writes their union, data/train_<hours>: <hours> is the sum
# of the numbers that end the subsets' names (train-clean-100,train-clean-360: data/train_460; all
# three: data/train_960); set train_set to it in conf/pipeline.conf.
set -euo pipefail
. ./path.sh
. ./db.sh

librispeech=${LIBRISPEECH}     # the folder holding train-clean-100/, dev-clean/, ...
train_sets="train-clean-100"   # training subsets, comma- or space-separated (commas survive kd.sh's local_data_opts)
check_audio=true               # open every audio file while validating (slow on the full corpus)
help_message="Usage: $0 [options]   (run from the recipe folder; the corpus path comes from db.sh)"
. utils/parse_options.sh

if [ $# -ne 0 ]; then
  echo "$0: unexpected argument(s): $*; see $0 --help" >&2
  exit 1
fi
read -ra subsets <<< "${train_sets//,/ }"
train_sets=${subsets[*]}
# More than one training subset: their union goes to data/train_<sum of the hours that end their names>
combined=""
if [ ${#subsets[@]} -gt 1 ]; then
  hours=0
  for s in "${subsets[@]}"; do
    if ! [[ ${s} =~ -([0-9]+)$ ]]; then
      echo "$0: cannot name the combined training dir: ${s} does not end in its hours (-<number>)" >&2
      exit 1
    fi
    hours=$((hours + 10#${BASH_REMATCH[1]}))
  done
  combined=data/train_${hours}
fi
if [ ! -d "${librispeech}" ]; then
  echo "$0: LibriSpeech not found: '${librispeech}' does not exist." >&2
  echo "$0: set LIBRISPEECH in db.sh (or in the environment), or pass --librispeech DIR" >&2
  exit 1
fi
# Accept the folder the archives were extracted in, too (it holds LibriSpeech/).
if [ ! -d "${librispeech}/dev-clean" ] && [ -d "${librispeech}/LibriSpeech" ]; then
  librispeech=${librispeech}/LibriSpeech
fi

sets=""
for s in ${train_sets}; do
  [ -d "${librispeech}/${s}" ] || { echo "$0: training set ${s} not found: ${librispeech}/${s} does not exist" >&2; exit 1; }
  sets="${sets} ${s}"
done
for s in dev-clean test-clean; do
  [ -d "${librispeech}/${s}" ] || { echo "$0: ${s} is required but ${librispeech}/${s} does not exist" >&2; exit 1; }
done
for s in dev-clean dev-other test-clean test-other; do
  [ -d "${librispeech}/${s}" ] || continue
  case " ${sets} " in *" ${s} "*) ;; *) sets="${sets} ${s}" ;; esac
done

validate_opts="--require-text"
if ${check_audio}; then validate_opts="${validate_opts} --audio --sample-rate 16000"; fi

for s in ${sets}; do
  dir=data/${s//-/_}
  echo "$0: preparing ${dir} from ${librispeech}/${s}"
  python local/prepare_librispeech.py "${librispeech}/${s}" "${dir}"
  python -m kdtool.bin.fix_data_dir "${dir}"
  # shellcheck disable=SC2086
  python -m kdtool.bin.validate_data_dir ${validate_opts} "${dir}"
done
if [ -n "${combined}" ]; then
  echo "$0: combining ${train_sets} into ${combined}"
  # shellcheck disable=SC2046
  python -m kdtool.bin.combine_data_dirs "${combined}" $(for s in ${train_sets}; do echo "data/${s//-/_}"; done)
  python -m kdtool.bin.validate_data_dir --require-text "${combined}"  # its audio was checked above
fi
echo "$0: done:$(for s in ${sets}; do printf ' data/%s' "${s//-/_}"; done)${combined:+ ${combined}}"
