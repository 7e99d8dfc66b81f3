#!/usr/bin/env bash
# Stream ImageNet with REMIND (the paper's settings). Every variable below can be
# set from the environment, e.g.
#   IMAGE_DIR=/data/ImageNet2012 BASE_INIT_CKPT=resnet_imagenet_ckpts/best_ResNet18ClassifyAfterLayer4_1_100.pth \
#     ./image_classification_experiments/run_imagenet_experiment.sh
# Running it again resumes after the last completed increment (results/<EXPT_NAME>/remind_model/).
# Relative paths are relative to the repository root (the script cd's there).
set -euo pipefail

IMAGE_DIR=${IMAGE_DIR:-./data/ImageNet2012}             # holds train/ and val/ class folders
EXPT_NAME=${EXPT_NAME:-remind_imagenet}
SAVE_DIR=${SAVE_DIR:-./results/${EXPT_NAME}}
DEVICE=${DEVICE:-}                                      # cuda or cpu; empty = cuda when available

REPLAY_SAMPLES=${REPLAY_SAMPLES:-50}
MAX_BUFFER_SIZE=${MAX_BUFFER_SIZE:-959665}
CODEBOOK_SIZE=${CODEBOOK_SIZE:-256}
NUM_CODEBOOKS=${NUM_CODEBOOKS:-32}
BASE_INIT_CLASSES=${BASE_INIT_CLASSES:-100}
CLASS_INCREMENT=${CLASS_INCREMENT:-100}
NUM_CLASSES=${NUM_CLASSES:-1000}
IMAGE_SIZE=${IMAGE_SIZE:-224}
LR_EXAMPLES_PER_CLASS=${LR_EXAMPLES_PER_CLASS:-1300}    # the original's constant; 'auto' counts per class
BASE_INIT_CKPT=${BASE_INIT_CKPT:-./resnet_imagenet_ckpts/best_ResNet18ClassifyAfterLayer4_1_100.pth}
LABEL_ORDER_DIR=${LABEL_ORDER_DIR:-./imagenet_files/}  # holds imagenet_indices/imagenet_{train,val}_labels.npy (made when missing)
CLASS_ORDER=${CLASS_ORDER:-./image_classification_experiments/imagenet_files/imagenet_class_order.txt}  # the paper's order
EXTRA_ARGS=${EXTRA_ARGS:-}                              # more flags, split on spaces (e.g. "--num_workers 16")
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-logs}                                # a copy of the output goes to LOG_DIR/<name>.log

# torch's spinning OpenMP threads fight faiss and the loaders for the cores (see docs/performance.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONUNBUFFERED=1

# Numbers are checked here, before any use (a value such as 'PATH[$(cmd)]' must never reach arithmetic).
for name in REPLAY_SAMPLES MAX_BUFFER_SIZE CODEBOOK_SIZE NUM_CODEBOOKS BASE_INIT_CLASSES CLASS_INCREMENT NUM_CLASSES IMAGE_SIZE; do
  if [[ ! "${!name}" =~ ^[0-9]+$ ]]; then
    echo "error: ${name}=${!name} must be a non-negative integer" >&2
    exit 2
  fi
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The label files (each image's position in CLASS_ORDER) are written from the images when missing.
labels_dir="${LABEL_ORDER_DIR%/}/imagenet_indices"
if [[ ! -f "${labels_dir}/imagenet_train_labels.npy" && ! -f "${LABEL_ORDER_DIR%/}/imagenet_train_labels.npy" ]] ||
   [[ ! -f "${labels_dir}/imagenet_val_labels.npy" && ! -f "${LABEL_ORDER_DIR%/}/imagenet_val_labels.npy" ]]; then
  echo "label files missing under ${LABEL_ORDER_DIR}: writing them from ${IMAGE_DIR} and ${CLASS_ORDER}"
  "${PYTHON}" -m image_classification_experiments.make_numpy_imagenet_label_files \
    --data "${IMAGE_DIR}" --class_order_text_file "${CLASS_ORDER}" --labels_dir "${labels_dir}"
fi

args=(
  --images_dir "${IMAGE_DIR}"
  --label_dir "${LABEL_ORDER_DIR}"
  --expt_name "${EXPT_NAME}"
  --save_dir "${SAVE_DIR}"
  --max_buffer_size "${MAX_BUFFER_SIZE}"
  --num_classes "${NUM_CLASSES}"
  --streaming_min_class "${BASE_INIT_CLASSES}"
  --streaming_max_class "${NUM_CLASSES}"
  --base_init_classes "${BASE_INIT_CLASSES}"
  --class_increment "${CLASS_INCREMENT}"
  --classifier ResNet18_StartAt_Layer4_1
  --classifier_ckpt "${BASE_INIT_CKPT}"
  --rehearsal_samples "${REPLAY_SAMPLES}"
  --start_lr 0.1
  --end_lr 0.001
  --lr_step_size 100
  --lr_mode step_lr_per_class
  --lr_examples_per_class "${LR_EXAMPLES_PER_CLASS}"
  --weight_decay 1e-5
  --use_random_resized_crops
  --use_mixup
  --mixup_alpha 0.1
  --num_codebooks "${NUM_CODEBOOKS}"
  --codebook_size "${CODEBOOK_SIZE}"
  --image_size "${IMAGE_SIZE}"
)
if [[ -n "${DEVICE}" ]]; then
  args+=(--device "${DEVICE}")
fi
read -r -a extra_args <<< "${EXTRA_ARGS}"

mkdir -p "${LOG_DIR}"
"${PYTHON}" -m image_classification_experiments.imagenet_experiment \
  "${args[@]}" ${extra_args[@]+"${extra_args[@]}"} \
  2>&1 | tee "${LOG_DIR}/${EXPT_NAME}.log"
