#!/usr/bin/env bash
# One-shot GPU check (issue 13), prepared to run first time on a borrowed GPU machine: no network,
# no apt, no torch install; the machine's own python3 (torch, triton, numba there) and this
# checkout's src/ on PYTHONPATH. Finishes within 8 minutes on one H200: every stage has its own
# time limit, so one that fails or hangs does not stop the others.
#
#   bash benchmarks/gpu_wheels.sh                 # once, on a machine with network: fills .whl/
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (carry .whl along)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   # plumbing test on a CPU
#
# Stages (limits in seconds): env (30), the CUDA tests (90: tests/test_scan_gpu.py, every scan
# backend against the reference, values and gradients; tests/test_training_gpu.py, fused AdamW
# and bf16/fp16 training on CUDA), the scan kernel throughput (120:
# benchmarks/bench_scan_gpu.py), `ssamba bench --device cuda` (150: SSAMBA-tiny vs SSAST-tiny
# with sdpa/flash and with explicit attention, 512..32k tokens, time and max_memory_allocated),
# pretraining throughput (90: bf16, batch 64, 10-s clips, SSAMBA-tiny vs SSAST-tiny), summary.
#
# Output: $OUT if set, else gpu_check_out/ (flat, at most 8 files): summary.md, summary.json,
# log.txt (every stage's output), scan.csv, bench.csv, bench.json, bench.png, pretrain.json.
# The summary table is printed at the end. Settings: PYTHON (default python3), GPU_CHECK_DEVICE
# (cuda), GPU_CHECK_QUICK (1: tiny sizes), GPU_CHECK_COMMIT (recorded; default: git's, if any),
# GPU_CHECK_TOTAL_S (470: the whole run's limit; stages are shortened to fit it). On a CPU
# (GPU_CHECK_DEVICE=cpu) the CUDA tests skip themselves and the scan benchmark does its smoke run.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
TOTAL=${GPU_CHECK_TOTAL_S:-470}
OUT_DIR=${OUT:-$ROOT/gpu_check_out}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STATUS=$WORK/status.tsv
START=$(date +%s)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
for f in summary.md summary.json log.txt scan.csv bench.csv bench.json bench.png pretrain.json; do
  rm -f "$OUT_DIR/$f"  # only the files this script writes: nothing stale is mistaken for new
done
: >"$STATUS"
if [ -z "${GPU_CHECK_COMMIT:-}" ]; then
  GPU_CHECK_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || true)
fi
export GPU_CHECK_COMMIT

record() { # stage status seconds rc note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$STATUS"
  echo "== $1: $2 (${3}s)${5:+ $5}"
}

# stage NAME LIMIT_S CMD...: run CMD under its own time limit (never past the whole run's), its
# output in $WORK/NAME.log; records ok / timeout / failed.
stage() {
  local name=$1 limit=$2 t0 rc left status
  shift 2
  left=$((TOTAL - ($(date +%s) - START)))
  if [ "$left" -lt 10 ]; then
    record "$name" "skipped: no time left" 0 "" ""
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  # timeout signals the command's whole process group (ssamba bench's workers too).
  timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout (${limit}s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $(($(date +%s) - t0)) "$rc" ""
  tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'
}

# ---------------------------------------------------------------------------- (a) environment
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -c "import soundfile, soxr" >/dev/null 2>&1; then
    record wheels "skipped: soundfile and soxr already import" 0 0 ""
  elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$WORK/wheels.log" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    record wheels ok 0 0 "$(ls .whl | tr '\n' ' ')"
  else
    record wheels "failed (see log.txt)" 0 1 ""
  fi
else
  record wheels "skipped: no .whl/ (run benchmarks/gpu_wheels.sh where there is network)" 0 "" ""
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}

stage env 30 "$PY" benchmarks/gpu_summary.py env "$WORK/env.json"
HAVE_CUDA=0
if "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$WORK/env.json')).get('cuda_available') else 1)" 2>/dev/null; then
  HAVE_CUDA=1
fi
if [ "$DEVICE" = cuda ] && [ "$HAVE_CUDA" = 0 ]; then
  echo "== no CUDA device: the CUDA stages are skipped"
fi
needs_cuda() { # NAME: true if the stage can run, else records it as skipped
  if [ "$DEVICE" = cuda ] && [ "$HAVE_CUDA" = 1 ]; then return 0; fi
  record "$1" "skipped: no CUDA" 0 "" ""
  return 1
}

# ---------------------------------------------------------------------------- (b) CUDA tests
if [ ! -f tests/test_scan_gpu.py ]; then
  record tests "missing: tests/test_scan_gpu.py" 0 "" ""
else
  # On a CPU the file's CUDA tests skip themselves: running it still checks that it imports.
  stage tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_scan_gpu.py tests/test_training_gpu.py
fi

# ---------------------------------------------------------------------------- (c) scan kernels
# It writes its CSV at the end: --max-seconds stops it starting new measurements in time.
if [ ! -f benchmarks/bench_scan_gpu.py ]; then
  record scan "missing: benchmarks/bench_scan_gpu.py" 0 "" ""
elif [ "$DEVICE" = cpu ] && [ "$QUICK" = 1 ]; then  # its smoke run: the plumbing, no figures
  stage scan 120 "$PY" benchmarks/bench_scan_gpu.py --device cpu --out "$WORK/scan" \
    --batch 1 --lengths 64 --channels 64 --max-seconds 30
elif needs_cuda scan; then
  SCAN_SIZES=(--max-seconds 90)
  [ "$QUICK" = 1 ] && SCAN_SIZES=(--quick --max-seconds 60)
  stage scan 120 "$PY" benchmarks/bench_scan_gpu.py --device cuda --out "$WORK/scan" \
    "${SCAN_SIZES[@]}"
fi

# ---------------------------------------------------------------------------- (d) ssamba bench
if [ "$QUICK" = 1 ]; then
  BENCH_SIZES=(--tokens 64,128 --batch 1 --depth 2 --repeats 1 --warmup 0 --threads 1)
  BENCH_LIMITS=(--timeout-per-point 60 --max-minutes 1.5)
else
  # 512 (a 10-s clip) .. 32768 tokens; 4096 and 22528 (~22k, the paper's length) are targets.
  BENCH_SIZES=(--tokens 512,4096,8192,22528,32768 --batch 4 --repeats 3 --warmup 1)
  # A point's limit covers the worker's start: torch, the CUDA context, Triton's first compile.
  BENCH_LIMITS=(--timeout-per-point 60 --max-minutes 2.2)
fi
if [ "$DEVICE" = cpu ] || needs_cuda bench; then
  stage bench 150 "$PY" -m ssamba bench --device "$DEVICE" \
    --models ssamba_tiny,ssast_tiny,ssast_tiny_explicit "${BENCH_SIZES[@]}" "${BENCH_LIMITS[@]}" \
    -o "$WORK/bench" --overwrite
fi

# ---------------------------------------------------------------------------- (e) pretraining
if [ "$QUICK" = 1 ]; then
  PRETRAIN_SIZES=(--frames 32 --batch 1 --depth 2 --warmup 0 --repeats 1)
else
  PRETRAIN_SIZES=(--frames 1024 --batch 64 --warmup 2 --repeats 20 --max-seconds 30)
fi
if [ "$DEVICE" = cpu ] || needs_cuda pretrain; then
  stage pretrain 90 "$PY" benchmarks/bench_pretrain.py --device "$DEVICE" --precision bf16 \
    --models ssamba_tiny,ssast_tiny "${PRETRAIN_SIZES[@]}" --json "$WORK/pretrain.json"
fi

# ---------------------------------------------------------------------------- (f) summary
record total "$(($(date +%s) - START)) s" $(($(date +%s) - START)) "" ""
QUICK_FLAG=--device=$DEVICE  # a harmless repeat when not quick (an empty array trips set -u)
[ "$QUICK" = 1 ] && QUICK_FLAG=--quick
timeout -k 5 60 "$PY" benchmarks/gpu_summary.py summary --work "$WORK" --out "$OUT_DIR" \
  --device "$DEVICE" "$QUICK_FLAG" || echo "summary failed: the stage outputs are in $WORK"
echo "results: $OUT_DIR ($(ls "$OUT_DIR" | tr '\n' ' '))"
