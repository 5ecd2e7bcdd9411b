#!/usr/bin/env bash
# Stage 1: write Kaldi-style data dirs for this corpus, run from the recipe folder (kd.sh calls it with
# conf/pipeline.conf's local_data_opts). For each set named in conf/pipeline.conf (train_set, valid_set,
# test_sets, untrans_set) it must write data/<set>/ with
#   wav.scp   <utt-id> <audio file (wav, flac)>   or   <utt-id> <shell command writing a wav> |
#   text      <utt-id> <transcript>               (not for untrans_set: a set without text is untranscribed)
#   utt2spk   <utt-id> <speaker-id>               (the speaker id a prefix of the utterance id)
# and end with `python -m kdtool.bin.fix_data_dir data/<set>` (sorts, drops incomplete utterances, writes
# spk2utt); kd.sh validates every set after this script. Examples: egs/librispeech/kd1/local/data.sh,
# egs/aishell/kd1/local/data.sh.
set -euo pipefail
. ./path.sh
. ./db.sh

help_message="Usage: $0 [options]   (run from the recipe folder; the corpus path comes from db.sh)"
. utils/parse_options.sh

echo "$0: not written yet: make it write data/<set>/{wav.scp,text,utt2spk} from ${CORPUS} (see its comments)" >&2
exit 1
