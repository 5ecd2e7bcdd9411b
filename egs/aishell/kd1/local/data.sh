#!/usr/bin/env bash
# Stage 1: Kaldi-style data dirs for AISHELL-1, run from the recipe folder:
#     local/data.sh [--aishell DIR] [--check_audio true]
# writes data/train, data/dev and data/test (text in characters, spaces removed), then fixes and
# validates each.
set -euo pipefail
. ./path.sh
. ./db.sh

aishell=${AISHELL}   # the folder holding data_aishell/, or data_aishell itself
check_audio=true     # open every audio file while validating (slow on the full corpus)
help_message="Usage: $0 [options]   (run from the recipe folder; the corpus path comes from db.sh)"
. utils/parse_options.sh

if [ $# -ne 0 ]; then
  echo "$0: unexpected argument(s): $*; see $0 --help" >&2
  exit 1
fi
if [ ! -d "${aishell}" ]; then
  echo "$0: AISHELL-1 not found: '${aishell}' does not exist." >&2
  echo "$0: set AISHELL in db.sh (or in the environment), or pass --aishell DIR" >&2
  exit 1
fi

validate_opts="--require-text"
if ${check_audio}; then validate_opts="${validate_opts} --audio --sample-rate 16000"; fi

for s in train dev test; do
  echo "$0: preparing data/${s}"
  python local/prepare_aishell.py "${aishell}" "${s}" "data/${s}"
  python -m kdtool.bin.fix_data_dir "data/${s}"
  # shellcheck disable=SC2086
  python -m kdtool.bin.validate_data_dir ${validate_opts} "data/${s}"
done
echo "$0: done: data/train data/dev data/test"
