#!/usr/bin/env bash
# The issue's experiments: SmolLM2-135M-Instruct on SST-2, 20 devices, 5 per round, Dirichlet(0.5) label skew, fixed
# seeds; both task modes; strategies zgr / zo / bp; DTC on/off; ablations of α, λ (fixed vs online λ*), m (guidance
# rank) and shifted public data. Then the figures and tables (docs/RESULTS.md, docs/results/ablations.md).
#
#   bench/experiments.sh            # everything (exports first); re-run it to continue: every step is resumable
#   ONLY=main bench/experiments.sh  # main | ablations | report
#
# Sizing (2 shared CPU cores; estimated from the demo's measured rates, not run end to end): each run is ROUNDS=20
# rounds of K=5 devices × LOCAL_STEPS=2 ZO reports over all blocks (BLOCKS=all), i.e. 20 forward passes of batch
# 8 × 64 per round shared by 2 device processes (~4 s per forward per process in the demo, under other jobs' load;
# docs/EXPORT.md's 0.84 s at 2 threads suggests ~1.7 s on an idle machine), scored on the first EVAL_LIMIT=300 test examples every EVAL_EVERY=5 rounds (~40–75 s
# a scoring): about 10 min a run on an idle machine, ~20 min under the load the demo saw; 14 runs plus two exports
# (~6 min each) ≈ 2.5–4.5 h. To scale up: ROUNDS=200 EVAL_EVERY=10 EVAL_LIMIT=872 LOCAL_STEPS=1 BLOCKS=each (one
# report per transformer block: the paper's per-block guidance, 30 reports per device per round, ~15× the forward
# passes of the default); run time grows linearly in ROUNDS × K × LOCAL_STEPS × (blocks per step); with more cores
# raise WORKERS (device processes running at once; default min(K, cores)).
set -euo pipefail
cd "$(dirname "$0")/.."

COOPERLLM=${COOPERLLM:-cooperllm}      # e.g. COOPERLLM="python -m cooperllm.cli" from a checkout
OUT=${OUT:-runs/exp}
ART=${ART:-artifacts/exp}
SEED=${SEED:-0}
CLIENTS=${CLIENTS:-20}
K=${K:-5}
PARTITION=${PARTITION:-dirichlet:0.5}
ROUNDS=${ROUNDS:-20}
LOCAL_STEPS=${LOCAL_STEPS:-2}
BLOCKS=${BLOCKS:-all}
ETA=${ETA:-1e-3}                       # server learning rate of the ZO strategies (bp uses FedAvg, η = 1)
EVAL_LIMIT=${EVAL_LIMIT:-300}
EVAL_EVERY=${EVAL_EVERY:-5}
LINK=${LINK:-10mbit:50ms}
WORKERS=${WORKERS:-}
ONLY=${ONLY:-all}

export_once() {  # export_once TASK FOLDER: int8 .pte with the exporter's default backend, skipped when present
    if [ ! -f "$2/manifest.json" ]; then
        nice -n 10 $COOPERLLM export --model smollm2 --task "$1" --out "$2" --no-progress
    fi
}

sim() {  # sim NAME TASK_FOLDER [extra simulate options]: one resumable run in $OUT/NAME
    local name=$1 art=$2
    shift 2
    nice -n 10 $COOPERLLM simulate --artifacts "$art" --out "$OUT/$name" --no-progress \
        --clients "$CLIENTS" --per-round "$K" --rounds "$ROUNDS" --partition "$PARTITION" --seed "$SEED" \
        --local-steps "$LOCAL_STEPS" --blocks "$BLOCKS" --eval-limit "$EVAL_LIMIT" --eval-every "$EVAL_EVERY" \
        --link "$LINK" ${WORKERS:+--workers "$WORKERS"} "$@"
}

CAUSAL=$ART/causal-lm-cls
SEQCLS=$ART/seq-cls

if [ "$ONLY" = all ] || [ "$ONLY" = main ] || [ "$ONLY" = ablations ]; then
    export_once causal-lm-cls "$CAUSAL"
    export_once seq-cls "$SEQCLS"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = main ]; then
    for task in causal-lm-cls seq-cls; do
        art=$ART/$task
        sim "$task-zgr" "$art" --strategy zgr --eta "$ETA"
        sim "$task-zo" "$art" --strategy zo --eta "$ETA"
        sim "$task-bp" "$art" --strategy bp
    done
fi

if [ "$ONLY" = all ] || [ "$ONLY" = ablations ]; then
    # on seq-cls (the paper's setting: a new head, ~38 pp of headroom); the main zgr run is the reference
    # (α 0.5, λ 0.5 fixed, m 4, DTC on, public data = dev.tsv)
    sim seq-cls-zgr-dtc-off "$SEQCLS" --strategy zgr --eta "$ETA" --guidance-codec plain
    sim seq-cls-zgr-alpha0.25 "$SEQCLS" --strategy zgr --eta "$ETA" --alpha 0.25
    sim seq-cls-zgr-alpha0.75 "$SEQCLS" --strategy zgr --eta "$ETA" --alpha 0.75
    sim seq-cls-zgr-lam-auto "$SEQCLS" --strategy zgr --eta "$ETA" --lam auto
    sim seq-cls-zgr-lam0 "$SEQCLS" --strategy zgr --eta "$ETA" --lam 0
    sim seq-cls-zgr-m1 "$SEQCLS" --strategy zgr --eta "$ETA" --rank 1
    sim seq-cls-zgr-m8 "$SEQCLS" --strategy zgr --eta "$ETA" --rank 8
    sim seq-cls-zgr-public-shift "$SEQCLS" --strategy zgr --eta "$ETA" --public-classes 1  # cloud sees positives only
fi

if [ "$ONLY" = all ] || [ "$ONLY" = main ] || [ "$ONLY" = report ]; then
    $COOPERLLM report "$OUT"/causal-lm-cls-{zgr,zo,bp} "$OUT"/seq-cls-{zgr,zo,bp} --out docs/RESULTS.md \
        --title "SmolLM2-135M-Instruct on SST-2: ZGR vs federated ZO vs FedAvg backprop"
fi
if [ "$ONLY" = all ] || [ "$ONLY" = ablations ] || [ "$ONLY" = report ]; then
    $COOPERLLM report "$OUT"/seq-cls-zgr "$OUT"/seq-cls-zgr-{dtc-off,alpha0.25,alpha0.75,lam-auto,lam0,m1,m8,public-shift} \
        --out docs/results/ablations.md --title "ZGR ablations (seq-cls): DTC, α, λ, m, shifted public data"
fi
