#!/usr/bin/env bash
# The accelerator check, in one call (issue 15): on whatever JAX finds (GPU,
# TPU, or CPU), within 9.5 minutes, one JSON summary on stdout.
#
#   bash benchmarks/gpu_check.sh                  # paper settings, bf16
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh  # tiny settings (CPU, ~3 min)
#   PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh  # default: python
#
# Parts, each in its own process under its own time limit (seconds, below), so
# that a slow or failing part cannot eat the others' time:
#   train_<model>   benchmarks/train_throughput.py, one model per process, at
#                   its paper batch and resolution, model.dtype=bfloat16:
#                   compile time, images/s, MFU. The baseline's run also
#                   writes a jax.profiler trace of 3 steps (profile/, open it
#                   in TensorBoard's profile plugin or Perfetto).
#   eval_streaming  benchmarks/eval_streaming.py at MSMT17 test size.
#   pair_distance   benchmarks/pair_distance.py (DuATM's pair distance).
#   rerank          benchmarks/rerank_streaming.py, sparse k-reciprocal
#                   re-ranking at 0.2 x MSMT17 test size (the full size's
#                   host-side bookkeeping alone takes minutes).
# Outputs: $OUT (or a temporary folder) holds each part's JSON / log, the
# trace, and summary.json, the object printed at the end.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT_DIR/parts"
SMOKE="${GPU_CHECK_SMOKE:-0}"
PYTHON="${PYTHON:-python}"
START=$(date +%s)

if [ "$SMOKE" = "1" ]; then
  TRAIN_ARGS=(--preset synthetic --dtype float32 --batch 16 --steps 2 --warmup 1
              --matmul_size 512 --set model.backbone.width=8)
  EVAL_ARGS=(--num_query 300 --num_gallery 3000 --num_ids 100 --dim 64 --check_queries 8)
  PAIR_ARGS=(--num_a 16 --num_b 64 --matmul_size 512 --repeats 1)
  RERANK_ARGS=(--scale 0.01 --dim 64)
  # name:limit_s; smoke: the two cheapest models
  TRAIN_MODELS=(baseline:150 dcanet:150)
  EVAL_LIMIT=60; PAIR_LIMIT=60; RERANK_LIMIT=60
else
  TRAIN_ARGS=(--preset paper --dtype bfloat16 --steps 20 --warmup 3)
  EVAL_ARGS=()
  PAIR_ARGS=()
  RERANK_ARGS=(--scale 0.2)
  # Compile dominates (attdriven, 5 branches, compiled in 183 s on a loaded
  # 2-core CPU); the baseline also writes the trace. Sum: 510 s.
  TRAIN_MODELS=(baseline:85 duatm:60 dcanet:55 cacenet:55 attdriven:90 fgra:60)
  EVAL_LIMIT=40; PAIR_LIMIT=25; RERANK_LIMIT=40
fi

# run_part NAME LIMIT_S CMD...: stdout -> parts/NAME.json, stderr -> parts/NAME.log,
# the exit status (124: over its limit) -> parts/NAME.rc.
run_part() {
  local name=$1 limit=$2; shift 2
  echo "[gpu_check] $name (limit ${limit}s) ..." >&2
  timeout --kill-after=5 "$limit" "$@" >"$OUT_DIR/parts/$name.json" 2>"$OUT_DIR/parts/$name.log"
  echo $? >"$OUT_DIR/parts/$name.rc"
}

for entry in "${TRAIN_MODELS[@]}"; do
  model=${entry%%:*}; limit=${entry##*:}
  extra=()
  if [ "$model" = baseline ]; then
    extra=(--profile_dir "$OUT_DIR/profile" --profile_model baseline --profile_steps 3)
  fi
  run_part "train_$model" "$limit" "$PYTHON" benchmarks/train_throughput.py \
      --models "$model" "${TRAIN_ARGS[@]}" "${extra[@]}"
done
run_part eval_streaming "$EVAL_LIMIT" "$PYTHON" benchmarks/eval_streaming.py "${EVAL_ARGS[@]}"
run_part pair_distance "$PAIR_LIMIT" "$PYTHON" benchmarks/pair_distance.py "${PAIR_ARGS[@]}"
run_part rerank "$RERANK_LIMIT" "$PYTHON" benchmarks/rerank_streaming.py "${RERANK_ARGS[@]}"

"$PYTHON" - "$OUT_DIR" "$START" "$SMOKE" <<'EOF'
import glob, json, os, sys, time

out_dir, start, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
summary = {"smoke": smoke, "out": out_dir, "parts": {}, "train": {}}
for rc_path in sorted(glob.glob(os.path.join(out_dir, "parts", "*.rc"))):
  name = os.path.basename(rc_path)[:-3]
  rc = int(open(rc_path).read().strip() or -1)
  text = open(rc_path[:-3] + ".json").read()
  try:
    result = json.loads(text[text.index("{"):]) if "{" in text else None
  except ValueError:
    result = None
  part = {"rc": rc, "timed_out": rc in (124, 137)}
  if result is None or rc != 0:
    log = open(rc_path[:-3] + ".log").read()
    part["log_tail"] = log[-1500:]
  if name.startswith("train_") and result is not None:
    for key in ("device", "platform", "devices", "jax", "dtype", "compute_dtype",
                "peak_flops", "peak_source"):
      summary.setdefault(key, result.get(key))
    summary["train"].update(result.get("models", {}))
  elif result is not None:
    part["result"] = result
  summary["parts"][name] = part
profile = os.path.join(out_dir, "profile")
summary["profile_files"] = sorted(
    os.path.relpath(p, out_dir) for p in glob.glob(os.path.join(profile, "**", "*"), recursive=True)
    if os.path.isfile(p))
summary["wall_s"] = int(time.time()) - start
baseline = summary["train"].get("baseline", {})
if "images_per_s" in baseline:
  summary["baseline_images_per_s"] = baseline["images_per_s"]
  summary["baseline_goal_4000_met"] = baseline["images_per_s"] >= 4000
with open(os.path.join(out_dir, "summary.json"), "w") as f:
  json.dump(summary, f, indent=1)
print(json.dumps(summary, indent=1))
EOF
