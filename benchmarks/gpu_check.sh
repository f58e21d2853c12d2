#!/usr/bin/env bash
# GPU readiness check (issues 10 and 22): one script, one GPU, about 10 minutes end to end.
#
#   benchmarks/gpu_check.sh [OUTPUT_DIR]        (default: $OUT, else ./gpu_check_out)
#
# 1. pytest -m gpu (deploy form on CUDA, SDPA with a float bias, bf16/AMP logits);
# 2. cmt-gen profile of the family on cuda, deploy form: --protocol swin (batch 64, fp32),
#    --protocol timm (batch 256, AMP, bf16 autocast where the GPU has it), --precision bf16,
#    and the as-released reference (--form as-built --set block.attention=math, fp32);
#    peers Swin-T and EfficientNet-B3 from timm (random weights, nothing downloaded) when timm imports;
# 3. the bundled detectors (CMT-S RetinaNet and Mask R-CNN, Tables 7 and 8) at 1280x800, batch 1 and 2
#    (needs torchvision): detectors.txt and detectors.json;
# 4. the latency model on cuda: cmt-gen calibrate --device cuda (12 blocks a stage, 12 networks), then
#    bench_latency.py on 24 unseen specs against the profiler and a plain script (latency_cuda/);
# 5. benchmarks/gpu_report.py merges the profile JSON files into gpu_check.json and gpu_check.md,
#    with the deploy bf16/AMP speed-up over as-released fp32 (target >= 3x).
# Set GPU_CHECK_COMPILE=1 to add a torch.compile (max-autotune) run of CMT-S (a few minutes more).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
CMT="$PY -c 'from cmt_gen.cli.app import main; main()'"
FAMILY="cmt_ti cmt_xs cmt_s cmt_b cmt_l"
TIMING="--min-time 0.5 --repeats 3"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }

PEERS=""
if $PY -c "import timm" 2>/dev/null; then
  PEERS="--compare timm:swin_tiny_patch4_window7_224 --compare timm:efficientnet_b3"
else
  log "timm not importable: peers skipped"
fi

log "nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.csv" 2>&1
log "pytest -m gpu"
$PY -m pytest -q -m gpu tests > "$OUT_DIR/pytest_gpu.txt" 2>&1; echo "exit $?" >> "$OUT_DIR/pytest_gpu.txt"
tail -3 "$OUT_DIR/pytest_gpu.txt"

run() {  # name, then cmt-gen profile arguments
  local name=$1; shift
  log "profile $name"
  eval "$CMT profile $* $TIMING --json $OUT_DIR/$name.json" > "$OUT_DIR/$name.txt" 2>&1
  echo "exit $?" >> "$OUT_DIR/$name.txt"
}
run released_swin_fp32 $FAMILY --device cuda --protocol swin --form as-built --set block.attention=math
run deploy_swin_fp32 $FAMILY $PEERS --device cuda --protocol swin
run deploy_swin_bf16 $FAMILY --device cuda --protocol swin --precision bf16
run deploy_timm_amp $FAMILY $PEERS --device cuda --protocol timm
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then
  run deploy_timm_amp_compiled cmt_s --device cuda --protocol timm --compile-mode max-autotune
fi

log "profile detectors"
eval "$CMT profile cmt_s_retinanet cmt_s_mask_rcnn --device cuda --json $OUT_DIR/detectors.json" \
  > "$OUT_DIR/detectors.txt" 2>&1
echo "exit $?" >> "$OUT_DIR/detectors.txt"
cat "$OUT_DIR/detectors.txt"

log "latency calibration on cuda"
eval "$CMT calibrate --device cuda --blocks 12 --networks 12 -o $OUT_DIR/calibration_cuda.json" \
  > "$OUT_DIR/calibrate_cuda.txt" 2>&1
echo "exit $?" >> "$OUT_DIR/calibrate_cuda.txt"
tail -4 "$OUT_DIR/calibrate_cuda.txt"
if [ -f "$OUT_DIR/calibration_cuda.json" ]; then
  log "latency predictions on cuda (24 unseen specs, profiler and plain script)"
  $PY benchmarks/bench_latency.py --device cuda --n 24 --passes 1 --no-repeat \
    --calibration "$OUT_DIR/calibration_cuda.json" --out "$OUT_DIR/latency_cuda" > "$OUT_DIR/latency_cuda.txt" 2>&1
  echo "exit $?" >> "$OUT_DIR/latency_cuda.txt"
  tail -12 "$OUT_DIR/latency_cuda.txt"
fi

log "report"
$PY benchmarks/gpu_report.py "$OUT_DIR" && cat "$OUT_DIR/gpu_check.md"
log "done in $(( $(date +%s) - start )) s"
