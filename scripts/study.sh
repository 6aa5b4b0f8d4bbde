#!/usr/bin/env bash
# The evidence study (docs/evidence/README.md): a bank per seed, 20 seeds, and the sensitivity runs.
#   bash scripts/study.sh OUT main          20 seeds, each its own bank; every measure on seeds 0-4,
#                                           clean, background sets and PGD-20 on seeds 5-19 (test split)
#   bash scripts/study.sh OUT sensitivity   k = 24, 96, 192, random directions at k = 96, guidance 1.5:
#                                           one bank each, 5 student seeds (10 for k = 96 and random
#                                           directions), scored on the validation split
#   bash scripts/study.sh OUT dit           the main study's three students on the embedded DiT
#                                           (--teacher default-dit): 10 seeds, each its own bank; a second
#                                           process may search later seeds' banks ahead of it (the demo
#                                           takes a finished bank as done): .venv/bin/clarep-fast search
#                                           OUT/dit10/bank-s<S> --teacher default-dit --seed <S>
# Every demo resumes: rerun the same line after a kill. One thread per process (two can run side by
# side on two cores). Then: python scripts/sensitivity_report.py OUT/sensitivity
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/study.sh OUT main|sensitivity|dit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cli=${CLAREP_FAST:-.venv/bin/clarep-fast}
case ${2:?usage: bash scripts/study.sh OUT main|sensitivity|dit} in
  main)
    "$cli" demo "$out/seeds20" --seeds 20 --bank-per-seed --full-evaluation-seeds 5 ;;
  dit)
    "$cli" demo "$out/dit10" --teacher default-dit --seeds 10 --bank-per-seed --full-evaluation-seeds 5 ;;
  sensitivity)
    common=(--seeds 5 --split validation --attacks pgd --corruption-samples 0)
    for setting in "k96:-k 96" "k24:-k 24" "k192:-k 192" "random96:-k 96 --directions random" "guidance1.5:-k 96 --guidance 1.5"; do
      name=${setting%%:*}
      # shellcheck disable=SC2086
      "$cli" demo "$out/sensitivity/$name" ${setting#*:} "${common[@]}"
    done
    # the direction control with 10 seeds: more students on the same two banks
    common[1]=10
    "$cli" demo "$out/sensitivity/k96" -k 96 "${common[@]}"
    "$cli" demo "$out/sensitivity/random96" -k 96 --directions random "${common[@]}" ;;
  *) echo "unknown part $2 (main, sensitivity, dit)"; exit 2 ;;
esac
