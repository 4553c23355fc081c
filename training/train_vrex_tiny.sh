#!/usr/bin/env bash
# Retrain the embedded vrex-tiny model (models/sources/vrex-tiny) from scratch.
# The shipped checkpoint was trained in four chained stages on one H100 (1452 s of training in all,
# 4447 steps of ~64K tokens); each stage starts from the previous checkpoint. Stage 1 ran before the
# training-only frame probes existed (--aux-weight 0). Batches are generated on the fly by
# --workers processes, so give it as many CPU cores as you have. The learning rate follows a cosine
# over each stage's wall-clock budget (--minutes), so slower hardware sees fewer steps.
set -euo pipefail
OUT=${OUT:-out/vrex-tiny}
W=${WORKERS:-15}
python -m vrex_edge.world.train --out "$OUT/s1" --seed 0 --minutes 7.6 --lr 1.5e-3 --aux-weight 0 --workers "$W"
python -m vrex_edge.world.train --out "$OUT/s2" --seed 1 --init "$OUT/s1" --minutes 7.7 --lr 1.5e-3 --warmup 60 --aux-weight 0.5 --workers "$W"
python -m vrex_edge.world.train --out "$OUT/s3" --seed 2 --init "$OUT/s2" --minutes 6.6 --lr 1e-3 --warmup 40 --aux-weight 0.3 --workers "$W"
python -m vrex_edge.world.train --out "$OUT/s4" --seed 3 --init "$OUT/s3" --minutes 2.3 --lr 6e-4 --warmup 20 --aux-weight 0.3 --workers "$W"
python -m vrex_edge.world.evaluate --ckpt "$OUT/s4" --n 50 --min-s 120 --max-s 600 --device cuda --procs 15 --out "$OUT/eval.json"
