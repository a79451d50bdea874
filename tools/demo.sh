#!/usr/bin/env bash
# `make demo`: SAMSOP-Net stage 1 then stage 2 on the synthetic dataset, then evaluate.py on the
# held-out user. Random backbone (no ImageNet weights here), small frames, few epochs.
# Rerunning resumes: finished stages are skipped.
set -euo pipefail
PY=${1:-.venv/bin/python}
DATA=${2:-data/synthetic_gtea61}
OUT=${DEMO_OUT:-experiments/demo_ms_op}
start=$(date +%s)
$PY main_ms_op.py --datasetDir "$DATA" --outDir "$OUT" --pretrained none \
    --frameSize 112 --seqLen 8 --trainBatchSize 8 --valBatchSize 16 \
    --numEpochs ${DEMO_EPOCHS:-8} --stepSize 6 --numWorkers 2 --resume
$PY evaluate.py --model ms_op --datasetDir "$DATA" --modelStateDict "$OUT/stage2/best_model.pth" \
    --outDir "$OUT/eval_S2" --batchSize 16 --numWorkers 2 --overwrite
end=$(date +%s)
echo
echo "demo finished in $((end - start)) s (synthetic data: these are not GTEA-61 numbers)"
echo "  logs:    $OUT/stage1/log.csv  $OUT/stage2/log.csv"
echo "  curves:  $OUT/stage1/curves.png  $OUT/stage2/curves.png"
echo "  CAMs:    $OUT/stage2/cam/"
echo "  test:    $OUT/eval_S2/summary.json  $OUT/eval_S2/confusion_matrix.png  $OUT/eval_S2/per_class.png"
echo "  watch:   $(dirname "$PY")/tensorboard --logdir $(dirname "$OUT")   (event files in $OUT/stage*/tb/)"
echo "  disk:    $(du -sh "$OUT" | cut -f1) in $OUT, $(du -sh "$DATA" | cut -f1) in $DATA (make clean-demo removes both)"
