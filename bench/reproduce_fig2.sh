#!/usr/bin/env bash
# CPU-scale reproduction of Diao et al. (2023) Fig. 2 (docs/reproduction.md): 5 methods × 2 models × 3 seeds on
# one small data set, then the report whose summary table goes into docs/reproduction.md.
#
#   bash bench/reproduce_fig2.sh [DATA] [ROUNDS] [EPOCHS] [WORKERS]      (defaults: mnist1d 15 20 2)
#
# Finished runs are reused, so the script can be interrupted and rerun. Results: runs/repro.db, report in
# runs/repro-report/ (index.html, summary.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-mnist1d}
ROUNDS=${2:-15}
EPOCHS=${3:-20}
WORKERS=${4:-2}
PQ=${PQ:-.venv/bin/pqprune}
DB=runs/repro.db
COMMON=(--data "$DATA" --scope global --seed 0,1,2 --rounds "$ROUNDS" --epochs "$EPOCHS" --workers "$WORKERS"
        --db "$DB" --runs-dir runs/repro --quiet)

for model_args in "--model mlp" "--config bench/configs/repro_cnn.yaml"; do
    # shellcheck disable=SC2086  # model_args is two words on purpose
    "$PQ" sweep $model_args --method lt,os,random "${COMMON[@]}"
    # SAP's two (p, q) pairs are separate sweeps: a grid over p and q would also make the invalid pair (1, 1).
    "$PQ" sweep $model_args --method sap --p 0.5 --q 1 "${COMMON[@]}"
    "$PQ" sweep $model_args --method sap --p 1 --q 2 "${COMMON[@]}"
done
"$PQ" report --db "$DB" --where data="$DATA" --where rounds="$ROUNDS" --where epochs="$EPOCHS" --out runs/repro-report
