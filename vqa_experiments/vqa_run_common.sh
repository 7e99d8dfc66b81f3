# The part of run_clevr_experiment.sh and run_tdiuc_experiment.sh they share; they set the variables
# and source this file from the repository root.
export PYTHONUNBUFFERED=1

device_args=()
if [ -n "${DEVICE}" ]; then device_args=(--device "${DEVICE}"); fi
glove_args=()
if [ -n "${GLOVE}" ]; then glove_args=(--glove "${GLOVE}"); fi
# EXTRA_ARGS is split on spaces into separate flags; nothing in it is glob-expanded.
read -r -a extra_args <<< "${EXTRA_ARGS}"

if [ "${PREPARE}" = "1" ]; then
  if [ -z "${WEIGHTS}" ]; then
    echo "error: PREPARE=1 needs WEIGHTS=/path/to/${WEIGHTS_FILE} (torchvision's ImageNet ${TRUNK}; nothing is downloaded)" >&2
    exit 2
  fi
  if [ ! -f "${DATA_PATH}/train_${DATASET}.npz" ]; then
    "${PYTHON}" -m vqa_experiments.${DATASET}.preprocess_${DATASET} --path "${RAW_PATH}" --out "${DATA_PATH}"
  fi
  if [ ! -f "${DATA_PATH}/all_${DATASET}_${FEATURE_NAME}pq_${DATA_ORDER}_codes.npy" ]; then
    # Straight from the images: the trunk runs twice (base-init images, then all), no float feature file.
    "${PYTHON}" -m vqa_experiments.${DATASET}.pq_encoding_${DATASET} --data_path "${DATA_PATH}" \
      --data_order "${DATA_ORDER}" --images "${RAW_PATH}" --weights "${WEIGHTS}" ${device_args[@]+"${device_args[@]}"}
  fi
fi

"${PYTHON}" -u -m vqa_experiments.vqa_trainer \
  --config_name "${CONFIG}" \
  --expt_name "${expt}" \
  --data_path "${DATA_PATH}" \
  --data_order "${DATA_ORDER}" \
  --"${MODE}" \
  --lr "${lr}" \
  --output_dir "${OUTPUT_DIR}" \
  ${device_args[@]+"${device_args[@]}"} ${glove_args[@]+"${glove_args[@]}"} \
  ${extra_args[@]+"${extra_args[@]}"}
