#!/usr/bin/env bash
# The trigger study of results/attack/README.md: UAT against LUAT at every block on two victims
# of different families fine-tuned on rt, three search seeds each, every trigger scored on every
# other victim (model-to-model transfer) and on three VADER domains (task-to-task transfer).
#
#   bash experiments/attack-study.sh PART      # PART: minilm | gpt | transfer
#
# Run from the repository root. `minilm` and `gpt` are independent (one core each); `transfer`
# needs both. Each attack folder that already holds an attack.json is skipped, so a stopped part
# continues where it stopped. The victims (see results/attack/README.md for their commands):
#   M  MiniLM (BERT) fully fine-tuned on rt, experiments/finetune-minilm.toml, seed 0
#   G  a steadylm GPT pre-trained here and fine-tuned on rt
#   S  SmolLM2-135M (Llama) fine-tuned on rt with LoRA: scored on, never searched (one of its
#      steps costs about 10x MiniLM's)
#   M1, M2  MiniLM seeds 1 and 2 of the same sweep: same initialisation as M, so transfer to them
#      is an upper bound, reported apart
# Search budget, the pilots' (results/attack/pilot, results/attack/transfer-pilot): 3 iterations
# over batches of 32, 10 candidates per position, 5 power iterations, trigger length 3, p = inf,
# q = 5, untargeted; rt scored on its first 300 test texts. The searches the pilots already ran
# with this budget are read back with --reuse (the same options give the same trigger) and only
# scored again.
set -euo pipefail

RUNS=${RUNS:-runs}
M=$RUNS/finetune-minilm/runs/task_rt-method_full-s0
M1=$RUNS/finetune-minilm/runs/task_rt-method_full-s1
M2=$RUNS/finetune-minilm/runs/task_rt-method_full-s2
G=$RUNS/attack-victims/gpt-rt-lr1e-3
S=$RUNS/attack-victims/smollm2-rt
OUT=${OUT:-results/attack/study}
BUDGET=(--iters 3 --batch 32 --candidates 10 --power-iters 5 --no-profile --no-progress)
DOMAINS=(vader-amazon vader-nyt vader-tweets)  # not vader-movies: its texts are rt's

attack() {  # attack DIR ARGS...: one attack into DIR unless it has finished already
  local dir=$1
  shift
  [[ -f $dir/attack.json ]] && return 0
  rm -rf "$dir"
  echo "$(date +%T) $dir" >&2
  steadylm attack "$@" "${BUDGET[@]}" --out "$dir"
}

pilot_of() {  # pilot_of SOURCE NAME SEED: the pilot folder holding that search, if any
  local source=$1 name=$2 seed=$3
  for d in "results/attack/transfer-pilot/$source-source/$name-s$seed" \
           "results/attack/pilot/$name-s$seed"; do
    [[ $source == minilm || $d == *transfer-pilot* ]] || continue
    [[ -f $d/attack.json ]] && { echo "$d"; return 0; }
  done
  return 0
}

source_part() {  # source_part NAME CLASSIFIER: its searches, layer choice and task transfer
  local source=$1 victim=$2 dir reuse layers
  for s in 0 1 2; do
    for name in uat luat1 luat2 luat3 luat4 luat5 luat6; do
      dir=$OUT/$source/$name-s$s
      reuse=$(pilot_of "$source" "$name" "$s")
      if [[ $name == uat ]]; then set -- --method uat; else set -- --method luat --layer "${name#luat}"; fi
      attack "$dir" "$victim" --task rt --max-eval 300 --seed "$s" "$@" ${reuse:+--reuse "$reuse"}
    done
    layers=("$OUT/$source"/luat{1,2,3,4,5,6}-s$s)
    # The layer LUAT would use: the best of the six triggers on 128 rt validation texts.
    attack "$OUT/$source/auto-s$s" "$victim" --task rt --max-eval 300 --seed "$s" \
        --method luat --layer auto --reuse "${layers[@]}"
    for d in "${DOMAINS[@]}"; do  # the layer picked on the target domain, as the paper does
      attack "$OUT/$source-rt-to-$d/auto-s$s" "$victim" --task rt --eval-task "$d" \
          --select-task "$d" --seed "$s" --method luat --layer auto --reuse "${layers[@]}"
      attack "$OUT/$source-rt-to-$d/uat-s$s" "$victim" --task rt --eval-task "$d" --seed "$s" \
          --method uat --reuse "$OUT/$source/uat-s$s"
    done
  done
}

case ${1:-} in
  minilm) source_part minilm "$M" ;;
  gpt) source_part gpt "$G" ;;
  transfer)
    python experiments/attack_transfer.py "$OUT"/minilm/*/ "$OUT"/gpt/*/ \
        --victim "minilm=$M" --victim "minilm-s1=$M1" --victim "minilm-s2=$M2" \
        --victim "gpt=$G" --victim "smollm2=$S" --out "$OUT/transfer.json"
    python experiments/attack_transfer_table.py "$OUT" --out "$OUT/table.md"
    ;;
  *) echo "usage: bash experiments/attack-study.sh minilm|gpt|transfer" >&2; exit 2 ;;
esac
