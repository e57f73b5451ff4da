#!/usr/bin/env bash
# Reproduction of Diao et al. (2023) on real MNIST digits (docs/reproduction.md): the five methods at global
# scope, SAP(0.5,1) at layer and neuron scope, for the paper's MLP and the small CNN, 3 seeds each; then the
# adaptive per-neuron l_q study of Yang et al. (2022) on the MLP: the bound rule (input bounds measured on the
# data), the index rule, and random pruning matched to the bound rule's per-neuron counts.
#
#   bash bench/reproduce_mnist5k.sh [ROUNDS] [MLP_EPOCHS] [CNN_EPOCHS] [WORKERS]     (defaults: 15 20 10 2)
#   PARTS=cnn bash bench/reproduce_mnist5k.sh      # one part only: mlp (with the l_q study) or cnn (default: both)
#
# Finished runs are reused, so the script can be interrupted and rerun. Results: runs/repro-mnist5k.db, report
# in runs/repro-mnist5k-report/ (index.html, summary.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-15}
MLP_EPOCHS=${2:-20}
CNN_EPOCHS=${3:-10}
WORKERS=${4:-2}
PARTS=${PARTS:-mlp cnn}
PQ=${PQ:-.venv/bin/pqprune}
DB=runs/repro-mnist5k.db
RUNS=runs/repro-mnist5k
COMMON=(--data mnist5k --rounds "$ROUNDS" --workers "$WORKERS" --db "$DB" --runs-dir "$RUNS" --quiet)

study() {  # the Fig. 2 comparison, then the scope comparison, for one model; seed by seed so that an
           # interrupted study has every method for the seeds it finished
    for seed in 0 1 2; do
        "$PQ" sweep "$@" --method lt,os,random --scope global --seed "$seed" "${COMMON[@]}"
        # SAP's two (p, q) pairs are separate sweeps: a grid over p and q would also make the invalid pair (1, 1).
        "$PQ" sweep "$@" --method sap --p 0.5 --q 1 --scope global --seed "$seed" "${COMMON[@]}"
        "$PQ" sweep "$@" --method sap --p 1 --q 2 --scope global --seed "$seed" "${COMMON[@]}"
    done
    "$PQ" sweep "$@" --method sap --p 0.5 --q 1 --scope layer,neuron --seed 0,1,2 "${COMMON[@]}"
}
mlp_part() {  # the study on the MLP, then the l_q study on the MLP
    study --model mlp --epochs "$MLP_EPOCHS"

    # l_q per-neuron pruning: eps relative to B·‖w_i‖₁; 1.5 keeps about 60% of each neuron per round here.
    LQ=(--model mlp --epochs "$MLP_EPOCHS" --method lq --scope neuron)
    "$PQ" sweep "${LQ[@]}" --rule bound --eps 1.5 --relative --seed 0,1,2 "${COMMON[@]}"
    "$PQ" sweep "${LQ[@]}" --rule index --q 0.5 --seed 0,1,2 "${COMMON[@]}"
    for seed in 0 1 2; do
        # Same per-neuron counts as the bound rule, chosen at random: separates "how many" from "which ones".
        ref=$("$PQ" run "${LQ[@]}" --rule bound --eps 1.5 --relative --data mnist5k --seed "$seed" --rounds "$ROUNDS" \
            --db "$DB" --runs-dir "$RUNS" --quiet --json | "${PYTHON:-.venv/bin/python}" -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
        "$PQ" run --model mlp --epochs "$MLP_EPOCHS" --method random_matched --reference "$ref" --scope neuron \
            --data mnist5k --seed "$seed" --rounds "$ROUNDS" --db "$DB" --runs-dir "$RUNS" --quiet
    done
}
for part in $PARTS; do
    case $part in
        mlp) mlp_part ;;
        cnn) study --config bench/configs/repro_cnn.yaml --epochs "$CNN_EPOCHS" ;;
        *) echo "PARTS: unknown part '$part' (mlp, cnn)" >&2; exit 2 ;;
    esac
done
"$PQ" report --db "$DB" --where rounds="$ROUNDS" --out runs/repro-mnist5k-report
