#!/usr/bin/env bash
# The ZGR v2 study: SmolLM2-135M-Instruct on SST-2, 20 devices on Dirichlet(0.5) label-skewed shards, 5 per round;
# strategies zgr / zo / bp / cloud; S1 (the cloud's public data in-domain: SST-2 dev) and S2 (shifted: the cloud sees
# positive reviews only); both task modes; several seeds. Hyper-parameters are chosen on a validation split carved
# from the devices' training data (bench/split_validation.py), never on test, with the same grid size per strategy.
#
#   bench/experiments.sh                        # split → tune → main → report; re-run to continue: every step resumes
#   ONLY=tune bench/experiments.sh              # split | tune | main | report
#   TASKS=seq-cls SEEDS="0 1 2" SETTINGS="S1 S2" STRATEGIES="zgr zo cloud bp" bench/experiments.sh
#
# Equal device work: every strategy gets FWD forward passes per device per round. A zgr step measures the subspace
# and the complement (4 forwards), a zo step one direction (2 forwards), a bp step one forward + backward: with FWD=4,
# zgr takes 1 local step, zo 2, bp 2. The cloud's public-data backprop (GRAD_BATCHES × batch 8 per round) is the same
# for zgr and cloud; cloud sends no device.
#
# Tuning grid (3 values each, the same budget for every strategy; TUNE_ROUNDS rounds, scored on VAL_N validation
# examples): zgr and cloud η ∈ {1e-2, 3e-2, 1e-1} (the normalised subspace step), zo η_zo ∈ {3e-5, 1e-4, 3e-4}, bp
# device AdamW lr ∈ {3e-4, 1e-3, 3e-3}. zgr's complement step is zo's step (the same estimator on the same devices'
# batches), so it takes zo's validated η_zo rather than a grid of its own: zo is tuned first, and zgr's η grid runs
# with that η_zo. The chosen values are written to $OUT/tuned.env and used for every setting and seed.
#
# Sizing (2 CPU cores, measured): a round of 5 devices × 4 forwards of batch 8 × 64 through the int8 .pte is ~20–25 s
# with the cloud's rectifier beside it; scoring 200 examples ~20 s, the full 872-example test ~85 s.
set -euo pipefail
cd "$(dirname "$0")/.."

COOPERLLM=${COOPERLLM:-cooperllm}       # e.g. COOPERLLM=.venv/bin/cooperllm from a checkout
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/exp}
ART=${ART:-artifacts/exp}
DATA=$OUT/data
TASKS=${TASKS:-seq-cls causal-lm-cls}
SETTINGS=${SETTINGS:-S1 S2}
# also: zgraxis (zgr with --rectifier axis, the rule tested along ĉ), zgrfollow (the same with --budget follow: three
# rounds in four after a turned-down cloud measure ISO directions twice, zo's estimator)
STRATEGIES=${STRATEGIES:-zgr zo cloud bp}
SEEDS=${SEEDS:-0 1 2}
CLIENTS=${CLIENTS:-20}
K=${K:-5}
PARTITION=${PARTITION:-dirichlet:0.5}
ROUNDS=${ROUNDS:-30}
TUNE_ROUNDS=${TUNE_ROUNDS:-8}
TUNE_TASK=${TUNE_TASK:-seq-cls}
VAL_N=${VAL_N:-400}
EVAL_LIMIT=${EVAL_LIMIT:-200}           # curves: every EVAL_EVERY rounds on the first EVAL_LIMIT test examples
EVAL_EVERY=${EVAL_EVERY:-10}
LINK=${LINK:-10mbit:50ms}
WORKERS=${WORKERS:-}
ONLY=${ONLY:-all}
S2_OPTIONS=${S2_OPTIONS:---public-classes 1}
GRID_ZGR=${GRID_ZGR:-1e-2 3e-2 1e-1}
GRID_CLOUD=${GRID_CLOUD:-1e-2 3e-2 1e-1}
GRID_ZO=${GRID_ZO:-3e-5 1e-4 3e-4}
GRID_BP=${GRID_BP:-3e-4 1e-3 3e-3}

declare -A STEPS=([zgr]=1 [zgraxis]=1 [zgrfollow]=1 [zo]=2 [bp]=2 [cloud]=1)   # equal forward passes per device per round (above)
declare -A KNOB=([zgr]=--eta [zgraxis]=--eta [zgrfollow]=--eta [cloud]=--eta [zo]=--eta-zo [bp]=--local-lr)
declare -A GRID=([zgr]=$GRID_ZGR [zgraxis]=$GRID_ZGR [zgrfollow]=$GRID_ZGR [cloud]=$GRID_CLOUD [zo]=$GRID_ZO [bp]=$GRID_BP)
# a study name → the simulate options it stands for
declare -A AS=([zgraxis]="zgr --rectifier axis" [zgrfollow]="zgr --rectifier axis --budget follow")
declare -A GUIDED=([zgr]=1 [zgraxis]=1 [zgrfollow]=1)   # strategies with a ZO complement step: they take zo's η_zo

want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

export_once() {  # export_once TASK FOLDER: int8 .pte with the exporter's default backend, skipped when present
    if [ ! -f "$2/manifest.json" ]; then
        nice -n 10 $COOPERLLM export --model smollm2 --task "$1" --out "$2" --no-progress
    fi
}

sim() {  # sim NAME TASK STRATEGY SEED ROUNDS [extra simulate options]: one resumable run in $OUT/NAME
    local name=$1 task=$2 strategy=$3 seed=$4 rounds=$5
    shift 5
    nice -n 10 $COOPERLLM simulate --artifacts "$ART/$task" --out "$OUT/$name" --no-progress \
        --clients "$CLIENTS" --per-round "$K" --rounds "$rounds" --partition "$PARTITION" --seed "$seed" \
        --strategy ${AS[$strategy]:-$strategy} --local-steps "${STEPS[$strategy]}" --blocks all --link "$LINK" \
        --train-data "$DATA/devices.tsv" ${WORKERS:+--workers "$WORKERS"} "$@"
}

if want split || want tune || want main; then
    $PYTHON bench/split_validation.py --out "$DATA"
    for task in $TASKS; do export_once "$task" "$ART/$task"; done
fi

complement_step() {  # complement_step STRATEGY: zo's validated η_zo for a guided strategy (GUIDED), else nothing
    if [ -n "${GUIDED[$1]:-}" ]; then
        [ -n "${TUNED_zo:-}" ] || { echo "tune zo first: $1's complement step takes its η_zo" >&2; exit 1; }
        echo "--eta-zo $TUNED_zo"
    fi
}

pick_tuned() {  # write $OUT/tuned.env from every finished tuning run and load it
    $PYTHON bench/pick_tuned.py "$OUT/tune" > "$OUT/tuned.env"
    # shellcheck disable=SC1091
    source "$OUT/tuned.env"   # TUNED_zgr=..., TUNED_zo=..., ...
}

if want tune; then
    mkdir -p "$OUT/tune"
    order=""   # zo first: the guided strategies' complement step takes its η_zo (above)
    for strategy in $STRATEGIES; do
        if [ "$strategy" = zo ]; then order="zo $order"; else order="$order $strategy"; fi
    done
    for strategy in $order; do
        if [ -n "${GUIDED[$strategy]:-}" ]; then pick_tuned; fi
        for value in ${GRID[$strategy]}; do
            # shellcheck disable=SC2046
            sim "tune/$strategy@$value" "$TUNE_TASK" "$strategy" 0 "$TUNE_ROUNDS" \
                "${KNOB[$strategy]}" "$value" $(complement_step "$strategy") --test-data "$DATA/val.tsv" \
                --eval-limit "$VAL_N" --eval-every "$TUNE_ROUNDS" --final-eval-limit "$VAL_N"
        done
    done
    pick_tuned
    cat "$OUT/tuned.env"
fi

if want main; then
    # shellcheck disable=SC1091
    source "$OUT/tuned.env"
    for task in $TASKS; do  # seed by seed, so that a stopped study holds whole seeds
        for seed in $SEEDS; do
            for setting in $SETTINGS; do
                extra=""
                [ "$setting" = S2 ] && extra=$S2_OPTIONS
                for strategy in $STRATEGIES; do
                    # zo and bp never see the public data: their S1 run stands for S2 too (cooperllm report --json)
                    if [ "$setting" = S2 ] && { [ "$strategy" = zo ] || [ "$strategy" = bp ]; }; then continue; fi
                    tuned=TUNED_$strategy
                    # shellcheck disable=SC2086,SC2046
                    sim "$task-$setting-$strategy-s$seed" "$task" "$strategy" "$seed" "$ROUNDS" \
                        "${KNOB[$strategy]}" "${!tuned}" $(complement_step "$strategy") --eval-limit "$EVAL_LIMIT" \
                        --eval-every "$EVAL_EVERY" $extra
                done
            done
        done
    done
fi

if want report; then
    mapfile -t runs < <(find "$OUT" -mindepth 1 -maxdepth 1 -type d -name '*-S[12]-*' | sort)
    $COOPERLLM report "${runs[@]}" --out docs/RESULTS.md --json docs/results/headline.json \
        ${NOTES:+--notes "$NOTES"} --title "ZGR v2 on SmolLM2-135M-Instruct / SST-2: zgr vs zo, cloud and bp"
fi
