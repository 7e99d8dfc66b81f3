#!/usr/bin/env bash
# Stream CORe50 with REMIND in the four orderings, several permutations each. Every variable below can be
# set from the environment, e.g.
#   CORE50_DIR=/data/core50_128x128 BASE_INIT_CKPT=/data/resnet18-f37072fd.pth \
#     ./image_classification_experiments/run_core50_experiment.sh
# Smoke test on a generated tree (CORe50's naming, not its images):
#   python -m image_classification_experiments.make_core50_tree --out data/core50_generated
#   CORE50_DIR=data/core50_generated ORDERS=iid SEEDS=0 FRAME_STRIDE=1 IMAGE_SIZE=64 CODEBOOK_SIZE=16 \
#     REPLAY_SAMPLES=5 ./image_classification_experiments/run_core50_experiment.sh
# Running it again resumes each run after its last evaluation (results/<EXPT_NAME>_<order>_seed<k>/).
# Relative paths are relative to the repository root (the script cd's there). See docs/core50.md.
set -euo pipefail

CORE50_DIR=${CORE50_DIR:-./data/core50_128x128}        # holds s1/ ... s11/ from core50_128x128.zip
ORDERS=${ORDERS:-"iid class_iid instance class_instance"}
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}                   # one permutation of each ordering per seed
EXPT_NAME=${EXPT_NAME:-remind_core50}
RESULTS_DIR=${RESULTS_DIR:-./results}
BASE_INIT_CKPT=${BASE_INIT_CKPT:-}                      # torchvision ResNet-18 .pth; empty = random init
DEVICE=${DEVICE:-}                                      # cuda or cpu; empty = cuda when available

FRAME_STRIDE=${FRAME_STRIDE:-20}                        # 20 = 1 frame per second of the 20 fps videos
BASE_INIT_FRACTION=${BASE_INIT_FRACTION:-0.1}
BASE_INIT_EPOCHS=${BASE_INIT_EPOCHS:-10}                # epochs of F on the base-init codes (0 = head as loaded)
EVAL_FRACTION=${EVAL_FRACTION:-0.1}
REPLAY_SAMPLES=${REPLAY_SAMPLES:-50}
MAX_BUFFER_SIZE=${MAX_BUFFER_SIZE:-}                    # empty = keep every streamed frame
CODEBOOK_SIZE=${CODEBOOK_SIZE:-256}
NUM_CODEBOOKS=${NUM_CODEBOOKS:-32}
IMAGE_SIZE=${IMAGE_SIZE:-224}
EXTRA_ARGS=${EXTRA_ARGS:-}                              # more flags, split on spaces (e.g. "--num_workers 0")
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-logs}                                # a copy of the output goes to LOG_DIR/<name>.log

# torch's spinning OpenMP threads fight faiss and the loaders for the cores (see docs/performance.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONUNBUFFERED=1

# Numbers are checked here, before any use (a value such as 'PATH[$(cmd)]' must never reach arithmetic).
for name in FRAME_STRIDE BASE_INIT_EPOCHS REPLAY_SAMPLES CODEBOOK_SIZE NUM_CODEBOOKS IMAGE_SIZE; do
  if [[ ! "${!name}" =~ ^[0-9]+$ ]]; then
    echo "error: ${name}=${!name} must be a non-negative integer" >&2
    exit 2
  fi
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

common=(
  --data_dir "${CORE50_DIR}"
  --frame_stride "${FRAME_STRIDE}"
  --base_init_fraction "${BASE_INIT_FRACTION}"
  --base_init_epochs "${BASE_INIT_EPOCHS}"
  --eval_fraction "${EVAL_FRACTION}"
  --rehearsal_samples "${REPLAY_SAMPLES}"
  --num_codebooks "${NUM_CODEBOOKS}"
  --codebook_size "${CODEBOOK_SIZE}"
  --image_size "${IMAGE_SIZE}"
  --start_lr 0.1
  --end_lr 0.001
  --lr_step_size 100
  --lr_mode step_lr_per_class
  --weight_decay 1e-5
  --use_random_resized_crops
  --use_mixup
  --mixup_alpha 0.1
)
if [[ -n "${BASE_INIT_CKPT}" ]]; then common+=(--classifier_ckpt "${BASE_INIT_CKPT}"); fi
if [[ -n "${MAX_BUFFER_SIZE}" ]]; then common+=(--max_buffer_size "${MAX_BUFFER_SIZE}"); fi
if [[ -n "${DEVICE}" ]]; then common+=(--device "${DEVICE}"); fi
# Lists are split on spaces into arrays; nothing in them is glob-expanded.
read -r -a extra_args <<< "${EXTRA_ARGS}"
read -r -a orders <<< "${ORDERS}"
read -r -a seeds <<< "${SEEDS}"
for seed in "${seeds[@]}"; do
  if [[ ! "${seed}" =~ ^[0-9]+$ ]]; then echo "error: SEEDS holds ${seed}, not a non-negative integer" >&2; exit 2; fi
done
if [[ -n "${MAX_BUFFER_SIZE}" && ! "${MAX_BUFFER_SIZE}" =~ ^[0-9]+$ ]]; then
  echo "error: MAX_BUFFER_SIZE=${MAX_BUFFER_SIZE} must be a positive integer or empty" >&2
  exit 2
fi

mkdir -p "${LOG_DIR}"
for order in "${orders[@]}"; do
  for seed in "${seeds[@]}"; do
    name="${EXPT_NAME}_${order}_seed${seed}"
    "${PYTHON}" -m image_classification_experiments.core50_experiment "${common[@]}" \
      --order "${order}" --permutation_seed "${seed}" --expt_name "${name}" \
      --save_dir "${RESULTS_DIR}/${name}" ${extra_args[@]+"${extra_args[@]}"} \
      2>&1 | tee "${LOG_DIR}/${name}.log"
  done
done
