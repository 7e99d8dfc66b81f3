#!/usr/bin/env bash
# Streaming VQA on CLEVR with REMIND (the paper's settings). Every variable below can be set from
# the environment, e.g.
#   DATA_PATH=/data/CLEVR DATA_ORDER=iid ./vqa_experiments/run_clevr_experiment.sh
# DATA_PATH must hold the preprocessed questions and the PQ codes of DATA_ORDER (README: "Streaming VQA").
# With PREPARE=1 (and WEIGHTS=.../resnet101-63fe2227.pth) the script first preprocesses RAW_PATH and then writes
# the PQ codes straight from the images through the ResNet-101 trunk (no float feature file); each step is
# skipped when its output exists. Running it again resumes after the last evaluated boundary.
set -euo pipefail

lr=${lr:-${LR:-3e-4}}
CONFIG=${CONFIG:-CLEVR_streaming}
DATA_ORDER=${DATA_ORDER:-qtype}                    # qtype or iid
MODE=${MODE:-stream_with_rehearsal}                 # stream_with_rehearsal (REMIND), stream (fine-tune) or full (offline)
DATA_PATH=${DATA_PATH:-./data/CLEVR_v1.0}                # work folder: questions tables, codes, codebooks
RAW_PATH=${RAW_PATH:-./data/CLEVR_v1.0}                 # the dataset as downloaded (only for PREPARE=1)
WEIGHTS=${WEIGHTS:-}                                # torchvision ResNet-101 .pth (only for PREPARE=1)
PREPARE=${PREPARE:-0}
expt=${expt:-${CONFIG}_${DATA_ORDER}_${lr}_${MODE}}
OUTPUT_DIR=${OUTPUT_DIR:-./snapshots/${expt}}
GLOVE=${GLOVE:-}                                    # glove.6B.300d.txt (or an aligned .npy); empty: random embeddings
DEVICE=${DEVICE:-}                                  # cuda or cpu; empty = cuda when available
EXTRA_ARGS=${EXTRA_ARGS:-}                          # e.g. "--rehearsal_mode limited_buffer --max_buffer_size 10000"
PYTHON=${PYTHON:-python}

DATASET=clevr
FEATURE_NAME=resnet_largestage3
WEIGHTS_FILE=resnet101-63fe2227.pth
TRUNK=ResNet-101
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=vqa_run_common.sh
source vqa_experiments/vqa_run_common.sh
