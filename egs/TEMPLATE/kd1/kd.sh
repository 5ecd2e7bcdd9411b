#!/usr/bin/env bash
# The shared kdtool pipeline. A recipe's run.sh calls it with its options; each stage is a few
# lines that call one entry point and write under data/, dump/ or exp/, so any stage can be rerun
# alone (./run.sh --stage N --stop_stage N).
#   1 data preparation   2 features and tokens   3 teacher training   4 soft-label dumping
#   5 student distillation   6 decoding   7 scoring
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (kd.sh:${BASH_LINENO[0]}) $*"; }
run_start=$(date +%s)

# General
stage=1                 # first stage to run
stop_stage=7            # last stage to run
nj=4                    # parallel jobs for data stages
datadir=data            # data dirs and token lists (local/data.sh must write its sets there)
dumpdir=dump            # features
expdir=exp              # models, soft labels, decodes
# Stage 1: data
local_data_opts=""      # options for local/data.sh
train_set=train         # transcribed training data (<datadir>/<name>)
valid_set=dev           # validation data
test_sets="test"        # evaluation data, space separated
untrans_set=""          # untranscribed pool for distillation (no text), optional
fs=16000                # sample rate every utterance must have
# Stage 2: features and tokens
speed_perturb_factors=""  # e.g. "0.9 1.0 1.1" (training set only)
n_mels=80
token_type=bpe          # bpe (sentencepiece) or char
nbpe=300                # sentencepiece vocabulary size
bpe_model_type=unigram  # unigram or bpe
# Stage 3: teachers
teacher_configs=""      # training configs, space separated; each trains exp/<config name without train_>
teacher_packages=""     # packaged teachers (kdtool.bin.pack_model: a recipe's shipped ones, or one trained elsewhere),
                        # each installed as exp/<package dir name> instead of trained, its sha256s checked first
teacher_train_set=""    # the teachers' own training set (default: train_set): stage 2 makes its features, CMVN and
                        # the token list from it, stage 3 trains on it; students take token list and CMVN from their teacher
teacher_args=""         # config overrides for every stage-3 training, KEY=VALUE space separated, dotted keys,
                        # YAML values without spaces ("max_epoch=5 optim_conf.lr=0.001"; python -m kdtool.bin.train --set)
ngpu=0                  # GPUs per training job (0: CPU)
train_jobs=1            # trainings run side by side in stages 3 and 5 (teachers, students, chains); on a CPU
                        # each gets nproc/train_jobs threads (OMP_NUM_THREADS, unless set); with GPUs, give
                        # each job its own (slurm.pl does; run.pl jobs would share the first one)
gpu_inference=false     # stages 4 and 6 on a GPU: their jobs get --device cuda and run through cuda_cmd (which
                        # asks SLURM for one GPU per job); local jobs all share the first visible GPU
# Stage 4: the teacher's knowledge, dumped once for any number of students
kd_teacher=""           # exp dir whose knowledge is dumped (default: the first teacher package's or config's)
soft_label_types="frame_posteriors"  # any of: frame_posteriors (training set + untrans_set), and for the
                        # training set fb_posteriors, token_posteriors (AR teacher), rnnt_lattice (transducer);
                        # a ":dense" suffix also keeps every token (dir <type>_dense_<set>)
soft_label_topk=8       # tokens kept per frame or position
soft_label_temperature=1.0
nbest=0                 # N-best lists of an AR teacher for sequence-level KD (0: none), training set + untrans_set
nbest_beam=10
nbest_untrans=true      # N-best lists on untrans_set too (only students that learn sequence-level KD from the pool need them)
soft_label_dir=""       # stage 4 writes <soft_label_dir>/<type>_<set> (default: ${kd_teacher}/soft_labels)
# Stage 5: students; each config's kd_conf names the KD terms and the dumps it learns from
student_configs=""      # student configs (model + training + kd_conf), space separated; list each KD student's
                        # twin too (its KD-free base:, or its twin:): RESULTS.md compares them as recorded in
                        # exp/<name>/model_info.json (twin_config, seed, teacher)
student_args=""         # config overrides for every stage-5 training (students, chain links), as teacher_args:
                        # --student_args "kd_conf.alpha=0.3 max_epoch=5"; exp/<name>/config.yaml has the result
student_seeds=""        # train each student config once per seed ("1 2 3": exp/<name>_seed1 ..., the config's seed
                        # replaced); RESULTS.md then gives mean and std over the seeds and a paired bootstrap
                        # on their pooled utterances. Empty: once, with the config's seed.
seeded_students=""      # with student_seeds: the student configs and chains (any of a chain's configs) trained once per
                        # seed (default: every one; the others train once, with their config's seed)
chains=""               # progressive distillation: chains of student configs, comma-separated within a
                        # chain ("a.yaml,b.yaml c.yaml": a then b distilled from a, and c alone)
chain_teacher=""        # exp dir that starts every chain (e.g. exp/transducer_teacher)
chain_soft_label_types="rnnt_lattice"  # what each link's teacher dumps for its student
# Stage 6-7: decoding and scoring
decode_sets=""          # sets to decode (default: valid_set and test_sets)
decode_configs=""       # decode configs, each used for the models of the kind its name says (decode_<kind>_*.yaml)
                        # (default: every conf/decode_*.yaml)
decode_jobs=1           # decodes run side by side in stage 6 (each one thread: RTFs stay single-thread ones)
models=""               # exp dirs to decode (default: every trained model under expdir)
export_students=false   # true: stage 6 also exports each model that has an export (ctc, nar, streaming transducer)
                        # into <model>/export (python -m kdtool.bin.export) and decodes it in onnxruntime, fp32 and
                        # int8, with each decode config whose method has an ONNX backend (decode_<name>_onnx[_int8]_<set>)
results=RESULTS.md      # stage 7's table (plots go to plots/ beside it; the rows also to ${expdir}/results.json)
results_notes=          # a Markdown file of findings written by hand (e.g. local/results_notes.md), put under the table
cer_convention=espnet   # espnet: a space between words is a <space> token of the CER; no_space: spaces left out

help_message="Usage: $0 [options]   (see the option list below; recipes pass theirs from run.sh)"
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 1; }
. ./path.sh
. ./cmd.sh

[ -n "${speed_perturb_factors}" ] && train_sp=${train_set}_sp || train_sp=${train_set}
teacher_sp=${teacher_train_set:-${train_sp}}
if [ "${token_type}" = bpe ]; then token_dir=${datadir}/token_list/bpe_${bpe_model_type}${nbpe}; else token_dir=${datadir}/token_list/char; fi
all_sets=$(echo ${teacher_sp} ${train_sp} ${valid_set} ${test_sets} ${untrans_set} | tr " " "\n" | awk '!seen[$0]++' | tr "\n" " ")
# stages 4 and 6: the runner and device of the teacher's and the decoders' jobs
if ${gpu_inference}; then infer_cmd=${cuda_cmd}; infer_device=cuda; else infer_cmd=${decode_cmd}; infer_device=cpu; fi

# Independent jobs side by side: bg N CMD... starts CMD in the background once fewer than N of ours
# run; bg_wait waits for all of them and fails if any failed (each job's log says why).
bg_pids=()
bg() {
  local n=$1; shift
  while [ "$(jobs -pr | wc -l)" -ge "${n}" ]; do wait -n || true; done
  "$@" &
  bg_pids+=($!)
}
bg_wait() {
  local pid failed=0
  for pid in "${bg_pids[@]}"; do wait "${pid}" || failed=$((failed + 1)); done
  bg_pids=()
  [ "${failed}" -eq 0 ] || { log "${failed} job(s) failed; their logs are named above"; exit 1; }
}
if [ "${train_jobs}" -gt 1 ] && [ "${ngpu}" -eq 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=$(( $(nproc) / train_jobs )); [ "${OMP_NUM_THREADS}" -ge 1 ] || OMP_NUM_THREADS=1
  export OMP_NUM_THREADS
fi

# stage_done N: log how long stage N took, and keep it in ${expdir}/stage_times.tsv
stage_begin=$(date +%s)
stage_done() {
  local now; now=$(date +%s)
  mkdir -p "${expdir}"
  printf '%s\t%s\t%d\n' "$1" "$(date '+%Y-%m-%dT%H:%M:%S')" $((now - stage_begin)) >> "${expdir}/stage_times.tsv"
  log "Stage $1 done in $((now - stage_begin)) s"
  stage_begin=${now}
}
# keep_log LOG: a rerun's job would overwrite LOG (run.pl truncates it); keep the earlier one as LOG.1, LOG.2, ...
# (a resumed training's first epochs, or a finished one's whole run, are logged there)
keep_log() {
  local n=1
  [ -f "$1" ] || return 0
  while [ -e "$1.${n}" ]; do n=$((n + 1)); done
  mv "$1" "$1.${n}"
}
in_stages() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }

if in_stages 1; then
  log "Stage 1: data preparation: local/data.sh ${local_data_opts}"
  # shellcheck disable=SC2086
  local/data.sh ${local_data_opts}
  for x in ${train_set} ${valid_set} ${test_sets}; do
    python -m kdtool.bin.validate_data_dir --audio --sample-rate "${fs}" --require-text "${datadir}/${x}"
  done
  for x in ${untrans_set}; do
    python -m kdtool.bin.validate_data_dir --audio --sample-rate "${fs}" "${datadir}/${x}"
  done
  stage_done 1
fi

if in_stages 2; then
  log "Stage 2: fbank features (${n_mels} bins), global CMVN, token list (${token_dir})"
  if [ -n "${speed_perturb_factors}" ]; then
    python -m kdtool.bin.speed_perturb --factors ${speed_perturb_factors} "${datadir}/${train_set}" "${datadir}/${train_sp}"
  fi
  for x in ${all_sets}; do
    ${train_cmd} JOB=1:"${nj}" "${dumpdir}/fbank/${x}/log/fbank.JOB.log" \
      python -m kdtool.bin.compute_fbank --nj "${nj}" --job JOB --fs "${fs}" --num_mel_bins "${n_mels}" \
        "${datadir}/${x}" "${dumpdir}/fbank/${x}"
    python -m kdtool.bin.compute_fbank --nj "${nj}" --merge "${datadir}/${x}" "${dumpdir}/fbank/${x}"
  done
  for x in $(echo ${train_sp} ${teacher_sp} | tr " " "\n" | sort -u); do
    python -m kdtool.bin.compute_cmvn "${dumpdir}/fbank/${x}/feats.scp" "${dumpdir}/fbank/${x}/cmvn.ark"
  done
  python -m kdtool.bin.make_tokens --token_type "${token_type}" --vocab_size "${nbpe}" \
    --bpe_model_type "${bpe_model_type}" "${datadir}/${teacher_train_set:-${train_set}}/text" "${token_dir}"
  stage_done 2
fi

if in_stages 3; then
  for pkg in ${teacher_packages}; do
    log "Stage 3: installing ${expdir}/$(basename "${pkg}") from ${pkg}"
    python -m kdtool.bin.install_model --package "${pkg}" --exp_dir "${expdir}/$(basename "${pkg}")"
  done
  for config in ${teacher_configs}; do
    exp=${expdir}/$(basename "${config}" .yaml | sed 's/^train_//')
    log "Stage 3: training ${exp} (${config}); log: ${exp}/train.log"
    keep_log "${exp}/train.log"
    bg "${train_jobs}" ${cuda_cmd} --gpu "${ngpu}" "${exp}/train.log" \
      python -m kdtool.bin.train --config "${config}" --train_data "${dumpdir}/fbank/${teacher_sp}" \
        --valid_data "${dumpdir}/fbank/${valid_set}" --token_list "${token_dir}" \
        --cmvn "${dumpdir}/fbank/${teacher_sp}/cmvn.ark" --exp_dir "${exp}" ${teacher_args:+--set ${teacher_args}} \
        --accelerator "$([ "${ngpu}" -gt 0 ] && echo gpu || echo cpu)" --devices "$([ "${ngpu}" -gt 0 ] && echo "${ngpu}" || echo 1)"
  done
  bg_wait
  stage_done 3
fi

if [ -z "${kd_teacher}" ] && [ -n "${teacher_packages}${teacher_configs}" ]; then
  first=$(echo ${teacher_packages} ${teacher_configs} | cut -d' ' -f1)
  kd_teacher=${expdir}/$(basename "${first}" .yaml | sed 's/^train_//')
fi

[ -n "${soft_label_dir}" ] || soft_label_dir=${kd_teacher}/soft_labels

# up_to_date DIR MODULE OPTS...: whether DIR is a finished dump made with OPTS from the teacher's current weights and
# the data's current features and transcripts (MODULE's --check, which says why not); a stale or half-done one is redone
up_to_date() {
  local out=$1 why; shift
  if why=$(python -m "$@" --check); then
    log "Stage 4: ${out} is complete and up to date; skipped"
    return 0
  fi
  [ ! -e "${out}" ] || log "Stage 4: redoing ${why:-${out}}"
  return 1
}

# dump_knowledge TEACHER OUT_ROOT TYPES: stage 4's dumps of TEACHER into OUT_ROOT/<type>[_dense]_<set>
dump_knowledge() {
  local teacher=$1 root=$2 entry type topk name sets x out opts
  for entry in $3; do
    type=${entry%:dense}; topk=${soft_label_topk}; name=${type}
    [ "${entry}" != "${type}" ] && { topk=0; name=${type}_dense; }
    [ "${type}" = rnnt_lattice ] && topk=0  # 3 numbers per lattice node: always dense
    sets="${train_sp}"; [ "${type}" = frame_posteriors ] && sets="${sets} ${untrans_set}"
    for x in ${sets}; do
      out=${root}/${name}_${x}
      opts="--teacher ${teacher} --data ${dumpdir}/fbank/${x} --out_dir ${out} --type ${type} --nj ${nj}"
      opts="${opts} --topk ${topk} --temperature ${soft_label_temperature}"
      # shellcheck disable=SC2086
      up_to_date "${out}" kdtool.bin.dump_soft_labels ${opts} && continue
      log "Stage 4: ${type} of ${teacher} on ${x} -> ${out}"
      # shellcheck disable=SC2086
      ${infer_cmd} JOB=1:"${nj}" "${out}/log/dump.JOB.log" python -m kdtool.bin.dump_soft_labels ${opts} \
        --device "${infer_device}" --job JOB
      # shellcheck disable=SC2086
      python -m kdtool.bin.dump_soft_labels ${opts} --merge
    done
  done
}

# exp_of CONFIG: the exp dir a config trains
exp_of() { echo "${expdir}/$(basename "$1" .yaml | sed 's/^train_//')"; }

# distill CONFIG TEACHER SOFT_LABEL_DIR [SEED]: stage 5 for one student, into exp/<config name without train_>
# (with a SEED: exp/<config name without train_>_seed<SEED>, the config's seed replaced)
distill() {
  local exp; exp=$(exp_of "$1")${4:+_seed$4}
  log "Stage 5: distilling ${exp} ($1) from $2; log: ${exp}/train.log"
  keep_log "${exp}/train.log"
  ${cuda_cmd} --gpu "${ngpu}" "${exp}/train.log" \
    python -m kdtool.bin.distill --config "$1" --train_data "${dumpdir}/fbank/${train_sp}" \
      ${untrans_set:+--untrans_data "${dumpdir}/fbank/${untrans_set}"} --valid_data "${dumpdir}/fbank/${valid_set}" \
      --teacher_dir "$2" --soft_label_dir "$3" --token_list "$2/tokens" --cmvn "$2/cmvn.ark" --exp_dir "${exp}" ${4:+--seed "$4"} \
      ${student_args:+--set ${student_args}} \
      --accelerator "$([ "${ngpu}" -gt 0 ] && echo gpu || echo cpu)" --devices "$([ "${ngpu}" -gt 0 ] && echo "${ngpu}" || echo 1)"
  last_student=${exp}
}

if in_stages 4; then
  dump_knowledge "${kd_teacher}" "${soft_label_dir}" "${soft_label_types}"
  if [ "${nbest}" -gt 0 ]; then
    nbest_sets=${train_sp}; ${nbest_untrans} && nbest_sets="${nbest_sets} ${untrans_set}"
    for x in ${nbest_sets}; do
      out=${soft_label_dir}/nbest_${x}
      up_to_date "${out}" kdtool.bin.dump_nbest --teacher "${kd_teacher}" --data "${dumpdir}/fbank/${x}" \
        --out_dir "${out}" --nbest "${nbest}" --beam_size "${nbest_beam}" && continue
      log "Stage 4: ${nbest}-best lists of ${kd_teacher} on ${x} -> ${out}"
      ${infer_cmd} JOB=1:"${nj}" "${out}/log/nbest.JOB.log" python -m kdtool.bin.dump_nbest --teacher "${kd_teacher}" \
        --data "${dumpdir}/fbank/${x}" --out_dir "${out}" --nbest "${nbest}" --beam_size "${nbest_beam}" --nj "${nj}" \
        --device "${infer_device}" --job JOB
      python -m kdtool.bin.dump_nbest --teacher "${kd_teacher}" --data "${dumpdir}/fbank/${x}" --out_dir "${out}" \
        --nj "${nj}" --merge
    done
  fi
  stage_done 4
fi

# chain_knowledge TEACHER: what a chain's student learns from TEACHER (dumped once; redone when TEACHER is retrained)
chain_knowledge() {
  dump_knowledge "$1" "$1/soft_labels" "${chain_soft_label_types}"
}

# run_chain A.yaml,B.yaml,... [SEED]: progressive distillation; each student is the next one's teacher
run_chain() {
  local teacher=${chain_teacher} config
  for config in ${1//,/ }; do
    chain_knowledge "${teacher}"
    distill "${config}" "${teacher}" "${teacher}/soft_labels" "${2:-}"
    teacher=${last_student}
  done
}

# seeds_of CONFIGS: the seeds to train a student config (or a chain, comma-separated) with; "default": its own
seeds_of() {
  local c
  [ -n "${student_seeds}" ] || { echo default; return; }
  [ -n "${seeded_students}" ] || { echo "${student_seeds}"; return; }
  for c in ${1//,/ }; do
    [[ " ${seeded_students} " == *" ${c} "* ]] && { echo "${student_seeds}"; return; }
  done
  echo default
}

if in_stages 5; then
  for seed in ${student_seeds}; do
    [[ "${seed}" =~ ^[0-9]+$ ]] || { echo "$0: --student_seeds: '${seed}' is not a seed (integers >= 0, space separated)" >&2; exit 1; }
  done
  for c in ${seeded_students}; do
    [[ " ${student_configs} ${chains//,/ } " == *" ${c} "* ]] || { echo "$0: --seeded_students: ${c} is not one of student_configs or chains" >&2; exit 1; }
  done
  # side by side, two jobs must not train the same exp dir (chains may share a first stage only when run one by one)
  dups=$(for c in ${student_configs} ${chains//,/ }; do exp_of "${c}"; done | sort | uniq -d | xargs)
  if [ -n "${dups}" ] && [ "${train_jobs}" -gt 1 ]; then
    echo "$0: ${dups}: trained by more than one job of stage 5; with --train_jobs ${train_jobs} each student config may appear once" >&2
    exit 1
  fi
  [ -z "${chains}" ] || chain_knowledge "${chain_teacher}"  # shared by every chain: dumped before they start
  for chain in ${chains}; do  # first: a chain's stages run one after the other
    for seed in $(seeds_of "${chain}"); do
      bg "${train_jobs}" run_chain "${chain}" "${seed#default}"
    done
  done
  for config in ${student_configs}; do
    for seed in $(seeds_of "${config}"); do  # default: the config's own seed, exp dir without _seed
      bg "${train_jobs}" distill "${config}" "${kd_teacher}" "${soft_label_dir}" "${seed#default}"
    done
  done
  bg_wait
  stage_done 5
fi

# Every trained model (a dir with model.pth) is decoded with each decode config decode_<kind>_*.yaml that fits its kind;
# a decode dir made from the same weights, features and config is skipped.
if [ -z "${models}" ] && { in_stages 6 || in_stages 7; }; then
  models=$(find "${expdir}" -mindepth 2 -maxdepth 2 -name model.pth -printf '%h ' 2>/dev/null | xargs -n1 | sort | xargs)
fi
[ -n "${decode_sets}" ] || decode_sets="${valid_set} ${test_sets}"
if in_stages 6 || in_stages 7; then
  for model in ${models}; do
    [ -f "${model}/model_info.json" ] || { echo "$0: ${model}: not a trained model (no model_info.json); train it or leave it out of --models" >&2; exit 1; }
  done
  for config in ${decode_configs}; do
    [ -f "${config}" ] || { echo "$0: --decode_configs: ${config}: no such file" >&2; exit 1; }
    [[ "$(basename "${config}")" == decode_*_*.yaml ]] || { echo "$0: --decode_configs: ${config}: not named decode_<kind>_<name>.yaml (the kind picks the models it decodes)" >&2; exit 1; }
  done
fi
decode_dirs() {  # model -> the decode configs for its kind
  local kind; kind=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['kind'])" "$1/model_info.json")
  if [ -n "${decode_configs}" ]; then
    printf '%s\n' ${decode_configs} | grep -E "(^|/)decode_${kind}_[^/]*\.yaml$" || true
  else
    ls conf/decode_"${kind}"_*.yaml 2>/dev/null || true
  fi
}
# the methods the onnx backends decode (kdtool.decode.runner.ONNX_METHODS; tests/test_export_recipe.py checks)
onnx_methods="ctc_greedy maskctc_greedy maskctc_beam transducer_greedy transducer_streaming"
exportable() {  # model -> success if kdtool.bin.export exports it (ctc, nar; transducer: streaming encoder,
  # LSTM predictor (kdtool's layout) or stateless one (sherpa-onnx's))
  python -c "import json, sys, yaml
kind = json.load(open(sys.argv[1] + '/model_info.json'))['kind']
c = yaml.safe_load(open(sys.argv[1] + '/config.yaml'))
lstm = c.get('decoder', 'rnn') == 'rnn' and (c.get('decoder_conf') or {}).get('rnn_type', 'lstm') == 'lstm'
predictor = lstm or c.get('decoder') == 'stateless'
sys.exit(not (kind in ('ctc', 'nar') or (kind == 'transducer' and c.get('encoder') == 'streaming_conformer' and predictor)))" "$1"
}
decode_runs() {  # model -> "config name backend" of each of its decodes (the onnx ones if it was exported)
  local config name method
  for config in $(decode_dirs "$1"); do
    name=$(basename "${config}" .yaml | sed 's/^decode_//')
    echo "${config} ${name} torch"
    ${export_students} && [ -f "$1/export/export_info.json" ] || continue
    method=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['method'])" "${config}")
    if [[ " ${onnx_methods} " == *" ${method} "* ]]; then
      echo "${config} ${name}_onnx onnx"
      echo "${config} ${name}_onnx_int8 onnx_int8"
    fi
  done
}

if in_stages 6; then
  if ${export_students}; then
    for model in ${models}; do
      exportable "${model}" || { log "Stage 6: ${model} has no export (its kind or model); not exported"; continue; }
      log "Stage 6: exporting ${model} to ${model}/export"
      bg "${decode_jobs}" ${decode_cmd} "${model}/export.log" \
        python -m kdtool.bin.export --model_dir "${model}" --out_dir "${model}/export" --skip_up_to_date
    done
    bg_wait
  fi
  for model in ${models}; do
    while read -r config name backend <&3; do  # fd 3: the jobs keep their own stdin
      for x in ${decode_sets}; do
        log "Stage 6: decoding ${x} with ${model} (${config}, ${backend})"
        # the onnx backends run on the CPU: their jobs go through decode_cmd
        bg "${decode_jobs}" $([ "${backend}" = torch ] && echo "${infer_cmd}" || echo "${decode_cmd}") \
          "${model}/decode_${name}_${x}/decode.log" \
          python -m kdtool.bin.decode --model_dir "${model}" --data "${dumpdir}/fbank/${x}" --config "${config}" \
            --out_dir "${model}/decode_${name}_${x}" --device "$([ "${backend}" = torch ] && echo "${infer_device}" || echo cpu)" \
            --backend "${backend}" --skip_up_to_date
      done
    done 3< <(decode_runs "${model}")
  done
  bg_wait
  stage_done 6
fi

if in_stages 7; then
  for model in ${models}; do
    while read -r config name backend <&3; do  # fd 3: the jobs keep their own stdin
      for x in ${decode_sets}; do
        python -m kdtool.bin.score --ref "${dumpdir}/fbank/${x}" --cer_convention "${cer_convention}" "${model}/decode_${name}_${x}"
      done
    done 3< <(decode_runs "${model}")
  done
  python -m kdtool.bin.make_results --exp "${expdir}" --out "${results}" --title "$(basename "$(dirname "${PWD}")")" \
    --dev_set "${valid_set}" --test_set "${test_sets%% *}" ${results_notes:+--notes "${results_notes}"}
  stage_done 7
fi

log "Finished in $(( $(date +%s) - run_start )) s"
