#!/usr/bin/env bash
# Train the base-initialization network (ResNet-18 on the first BASE_MAX_CLASS
# classes of the class order) from scratch. Every variable below can be set
# from the environment, e.g.
#   IMAGENET_DIR=/data/ImageNet2012 NPROC=4 ./image_classification_experiments/train_base_init_network.sh
# Relative paths are relative to the repository root (the script cd's there).
# Small local try-out on the bundled digits (no download):
#   python -m image_classification_experiments.make_digits_imagefolder --out data/digits
#   IMAGENET_DIR=data/digits LABEL_ORDER_DIR=data/digits BASE_MAX_CLASS=4 NUM_CLASSES=10 \
#   IMAGE_SIZE=32 EPOCHS=2 BATCH_SIZE=32 ./image_classification_experiments/train_base_init_network.sh
set -euo pipefail

IMAGENET_DIR=${IMAGENET_DIR:-./data/ImageNet2012}       # holds train/ and val/ class folders
BASE_MAX_CLASS=${BASE_MAX_CLASS:-100}                   # train on classes [0, BASE_MAX_CLASS)
MODEL=${MODEL:-ResNet18ClassifyAfterLayer4_1}
LABEL_ORDER_DIR=${LABEL_ORDER_DIR:-./imagenet_files/}  # holds imagenet_indices/imagenet_{train,val}_labels.npy (made when missing)
CLASS_ORDER=${CLASS_ORDER:-./image_classification_experiments/imagenet_files/imagenet_class_order.txt}  # the paper's order
NUM_CLASSES=${NUM_CLASSES:-1000}                        # outputs of fc
EPOCHS=${EPOCHS:-40}
BATCH_SIZE=${BATCH_SIZE:-256}                           # total over all processes
IMAGE_SIZE=${IMAGE_SIZE:-224}
DEVICE=${DEVICE:-}                                      # cuda or cpu; empty = cuda when available
NPROC=${NPROC:-1}                                       # >1: one process per GPU through torchrun
SAVE_DIR=${SAVE_DIR:-resnet_imagenet_ckpts}
EXTRA_ARGS=${EXTRA_ARGS:-}                              # more flags, split on spaces (e.g. "--workers 16")
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-logs}                                # a copy of the output goes to LOG_DIR/<name>.log

# torch's spinning OpenMP threads fight other processes for the cores (see docs/performance.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONUNBUFFERED=1

# Numbers are checked here, before any use (a value such as 'PATH[$(cmd)]' must never reach arithmetic).
for name in BASE_MAX_CLASS NUM_CLASSES EPOCHS BATCH_SIZE IMAGE_SIZE NPROC; do
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
  echo "label files missing under ${LABEL_ORDER_DIR}: writing them from ${IMAGENET_DIR} and ${CLASS_ORDER}"
  "${PYTHON}" -m image_classification_experiments.make_numpy_imagenet_label_files \
    --data "${IMAGENET_DIR}" --class_order_text_file "${CLASS_ORDER}" --labels_dir "${labels_dir}"
fi

args=(
  --arch "${MODEL}"
  --data "${IMAGENET_DIR}"
  --base_max_class "${BASE_MAX_CLASS}"
  --labels_dir "${LABEL_ORDER_DIR}"
  --num_classes "${NUM_CLASSES}"
  --epochs "${EPOCHS}"
  --batch_size "${BATCH_SIZE}"
  --image_size "${IMAGE_SIZE}"
  --save_dir "${SAVE_DIR}"
  --ckpt_file "${MODEL}_${BASE_MAX_CLASS}.pth"
)
if [[ -n "${DEVICE}" ]]; then
  args+=(--device "${DEVICE}")
fi
read -r -a extra_args <<< "${EXTRA_ARGS}"

if (( NPROC > 1 )); then
  # torchrun, run by the same interpreter as a single-process run would use.
  launcher=("${PYTHON}" -m torch.distributed.run --standalone --nproc_per_node "${NPROC}" -m)
else
  launcher=("${PYTHON}" -m)
fi

mkdir -p "${LOG_DIR}"
"${launcher[@]}" image_classification_experiments.train_base_init_network_from_scratch \
  "${args[@]}" ${extra_args[@]+"${extra_args[@]}"} \
  2>&1 | tee "${LOG_DIR}/${MODEL}_${BASE_MAX_CLASS}_from_scratch.log"
