#!/usr/bin/env bash
# Streaming VQA on TDIUC with REMIND (the paper's settings). Every variable below can be set from
# the environment, e.g.
#   DATA_PATH=/data/TDIUC DATA_ORDER=iid ./vqa_experiments/run_tdiuc_experiment.sh
# DATA_PATH must hold the preprocessed questions and the PQ codes of DATA_ORDER (README: "Streaming VQA").
# With PREPARE=1 the script first runs preprocessing, ResNet-152 feature extraction (WEIGHTS=.../resnet152-394f9c45.pth)
# and PQ encoding on RAW_PATH. Running it again resumes after the last evaluated boundary.
set -euo pipefail

lr=${lr:-${LR:-2e-3}}
CONFIG=${CONFIG:-TDIUC_streaming}
DATA_ORDER=${DATA_ORDER:-qtype}                    # qtype or iid
MODE=${MODE:-stream_with_rehearsal}                 # stream_with_rehearsal (REMIND), stream (fine-tune) or full (offline)
DATA_PATH=${DATA_PATH:-./data/TDIUC}                # work folder: questions tables, codes, codebooks
RAW_PATH=${RAW_PATH:-./data/TDIUC}                 # the dataset as downloaded (only for PREPARE=1)
WEIGHTS=${WEIGHTS:-}                                # torchvision ResNet-152 .pth (only for PREPARE=1)
PREPARE=${PREPARE:-0}
expt=${expt:-${CONFIG}_${DATA_ORDER}_${lr}_${MODE}}
OUTPUT_DIR=${OUTPUT_DIR:-./snapshots/${expt}}
DEVICE=${DEVICE:-}                                  # cuda or cpu; empty = cuda when available
EXTRA_ARGS=${EXTRA_ARGS:-}                          # e.g. "--rehearsal_mode limited_buffer --max_buffer_size 10000"
PYTHON=${PYTHON:-python}

export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

device_args=()
if [ -n "${DEVICE}" ]; then device_args=(--device "${DEVICE}"); fi

if [ "${PREPARE}" = "1" ]; then
  if [ -z "${WEIGHTS}" ]; then
    echo "error: PREPARE=1 needs WEIGHTS=/path/to/resnet152-394f9c45.pth (torchvision's ImageNet ResNet-152; nothing is downloaded)" >&2
    exit 2
  fi
  if [ ! -f "${DATA_PATH}/train_tdiuc.npz" ]; then
    "${PYTHON}" -m vqa_experiments.tdiuc.preprocess_tdiuc --path "${RAW_PATH}" --out "${DATA_PATH}"
  fi
  if [ ! -f "${DATA_PATH}/map_tdiuc_resnet.json" ]; then
    "${PYTHON}" -m vqa_experiments.tdiuc.extract_image_features_tdiuc --path "${RAW_PATH}" --out "${DATA_PATH}" \
      --weights "${WEIGHTS}" "${device_args[@]}"
  fi
  if [ ! -f "${DATA_PATH}/all_tdiuc_resnetpq_${DATA_ORDER}_codes.npy" ]; then
    "${PYTHON}" -m vqa_experiments.tdiuc.pq_encoding_tdiuc --data_path "${DATA_PATH}" --data_order "${DATA_ORDER}" \
      "${device_args[@]}"
  fi
fi

# shellcheck disable=SC2086
"${PYTHON}" -u -m vqa_experiments.vqa_trainer \
  --config_name "${CONFIG}" \
  --expt_name "${expt}" \
  --data_path "${DATA_PATH}" \
  --data_order "${DATA_ORDER}" \
  --"${MODE}" \
  --lr "${lr}" \
  --output_dir "${OUTPUT_DIR}" \
  "${device_args[@]}" ${EXTRA_ARGS}
