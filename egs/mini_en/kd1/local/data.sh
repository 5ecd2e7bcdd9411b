#!/usr/bin/env bash
# Stage 1 of mini_en: synthesize the corpus (local/synth_corpus.py) and write Kaldi data dirs
#   data/train, data/dev, data/test (training voices, unseen sentences),
#   data/test_unseen (held-out voices, unseen sentences), data/untrans (no text).
# The same options give the same corpus; a killed run resumes where it stopped.
set -euo pipefail
. ./path.sh
. ./cmd.sh

seed=1
vocab_size=1000        # sentences use only the N most frequent words of the fortunes
n_train=1500          # 1 h of speech: the whole run fits ~90 min on 2 CPU cores (3000 took 2 h 8 min on AVX-512)
n_dev=300
n_test=300
n_test_unseen=300
n_untrans=750
n_teacher_train=0      # also data/train_teacher: the first N utterances of the stream that train and untrans
                       # are cut from (the shipped teachers' training set; ./run.sh --retrain_teachers)
n_heldout_voices=10    # voices heard only in test_unseen
fast=false             # tiny corpus for tests and CI
nj=4
datadir=data           # where the data dirs go (./run.sh --fast: data_fast)
corpus=                # the synthesized audio (default: <datadir>/local/mini_en)
help_message="Usage: local/data.sh [options]"
. utils/parse_options.sh
corpus=${corpus:-${datadir}/local/mini_en}

if ${fast}; then
  vocab_size=300; n_train=300; n_dev=30; n_test=30; n_test_unseen=30; n_untrans=60
fi

python local/synth_corpus.py plan --seed "${seed}" --vocab_size "${vocab_size}" --n_train "${n_train}" \
  --n_dev "${n_dev}" --n_test "${n_test}" --n_test_unseen "${n_test_unseen}" --n_untrans "${n_untrans}" --n_teacher_train "${n_teacher_train}" \
  --n_heldout_voices "${n_heldout_voices}" "${corpus}"
${train_cmd} JOB=1:"${nj}" "${corpus}/log/synth.JOB.log" \
  python local/synth_corpus.py synth --job JOB --nj "${nj}" "${corpus}"
python local/synth_corpus.py datadirs "${corpus}" "${datadir}"
for x in train dev test test_unseen untrans $([ "${n_teacher_train}" -gt 0 ] && echo train_teacher); do
  python -m kdtool.bin.fix_data_dir "${datadir}/${x}"
done
