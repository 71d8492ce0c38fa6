#!/usr/bin/env bash
# The robustness study of docs/SECURITY.md §3: SmolLM2-135M-Instruct / SST-2 seq-cls, 5 devices that all take part in
# every round, zgr at the study's validated settings (bench/experiments.sh: η 1e-2, η_zo 3e-4; ETA and ETA_ZO override
# them), ROUNDS rounds, the full test set at the end. Four arms that differ only in device 0: honest (none), every
# scalar sent as 1e6 (scalar), 100× its quota of reports (flood), drawn but silent with rounds closed on the other
# four (absent: the reference without the attacker). The simulation's seed key follows the seed, so the
# arms draw the same seeds and batches. CLIP_K sets the robust clip, TEST the evaluation file, ARMS the arms run.
#
#   bench/robustness.sh                     # the four runs (resumable), then the comparison
#   python bench/robustness.py runs/robust  # the comparison alone
#   for s in 0 1 2; do ETA=3e-3 SEED=$s OUT=runs/robust-3e-3/seed$s bench/robustness.sh; done
#   python bench/robustness.py runs/robust-3e-3/seed*   # the seeds together: mean paired difference, t-interval
set -euo pipefail
cd "$(dirname "$0")/.."

COOPERLLM=${COOPERLLM:-cooperllm}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/robust}
ART=${ART:-artifacts/exp/seq-cls}
DATA=${DATA:-runs/exp/data/devices.tsv}   # bench/split_validation.py: the devices' data without the validation split
ROUNDS=${ROUNDS:-10}
SEED=${SEED:-0}
ETA=${ETA:-1e-2}
ETA_ZO=${ETA_ZO:-3e-4}
CLIP_K=${CLIP_K:-10}                       # RunConfig.clip_k, the robust clip (docs/SECURITY.md §3)
TEST=${TEST:-../shared/data/sst2/test.tsv} # scored on the full file; runs/exp/data/val.tsv to choose settings
ARMS=${ARMS:-none absent scalar flood}

if [ ! -f "$ART/manifest.json" ]; then
    nice -n 10 $COOPERLLM export --model smollm2 --task seq-cls --out "$ART" --no-progress
fi
[ -f "$DATA" ] || $PYTHON bench/split_validation.py --out "$(dirname "$DATA")"
for attack in $ARMS; do
    nice -n 10 $COOPERLLM simulate --artifacts "$ART" --out "$OUT/$attack" --no-progress --attack "$attack" \
        --strategy zgr --clients 5 --per-round 5 --rounds "$ROUNDS" --seed "$SEED" --partition dirichlet:0.5 \
        --local-steps 1 --blocks all --eta "$ETA" --eta-zo "$ETA_ZO" --clip-k "$CLIP_K" --link 100mbit:20ms \
        --train-data "$DATA" --test-data "$TEST" --eval-every "$ROUNDS"
done
$PYTHON bench/robustness.py "$OUT"
