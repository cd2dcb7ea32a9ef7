#!/usr/bin/env bash
# The GPU measurements, as one script for a lent GPU machine that has PyTorch but no network and none of
# prn's data dependencies (see scripts/device_wheels.sh, which fetches their wheels into .whl/ here).
#
#   bash scripts/device_wheels.sh                       # here, once: ~38 MB of wheels in .whl/ (ignored by git)
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)   # the device tool
#
# Writes one log per step under $OUT (the device tool brings them back): env, postprocess (PPGBF + merge
# at 640×800 and 1024×2048, then at 1 and 2 CPU threads idle and under a busy load: prn evaluate's thread
# default), loader (the COCO-size store read by 0..8 DataLoader workers, samples/s and per worker), model (forward + backward, fp32 batch 1 and bf16 batch 16 at 640×800),
# demo (the whole `prn demo` with training and evaluation on the GPU, 8 loader workers) and predict
# (prn evaluate's loop, reader thread against none). A step that fails is logged and the next one runs.
# A dry run on the CPU with small sizes: `DEVICE=cpu QUICK=1 OUT=/tmp/dc bash benchmarks/device_check.sh`.
set -u
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
DEMO_DIR=${DEMO_DIR:-/tmp/prn_demo}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$PWD

{
  date
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prn_site .whl/*.whl \
      || echo "wheel install FAILED"
  fi
  export PYTHONPATH=$ROOT
  [ -d /tmp/prn_site ] && export PYTHONPATH=/tmp/prn_site:$ROOT
  $PY -c "import sys, torch, numpy, zarr, dask, numcodecs; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'zarr', zarr.__version__, 'dask', dask.__version__)"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

step() {  # step NAME COMMAND...: time it, log it, show its tail, go on whatever happens
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}

prn() { $PY -c "from prn_model.cli import main; main()" "$@"; }

if [ "$QUICK" = 1 ]; then
  step postprocess $PY benchmarks/postprocess.py --device "$DEVICE" --no-reference --repeat 2 --size 160 192 --centers 10
  step loader $PY benchmarks/loader.py --batches 2 --fly-batches 1 --repeats 1 --workers 1 --integrity-repeats 0 --heap-rounds 1
  step model $PY benchmarks/model.py --device "$DEVICE" --depths 18 --iters 1 --warmup 1 --no-compile --size 128 160 --bf16-batch 0
  DEMO_ARGS=(--train-images 16 --val-images 8 --test-images 8 --iters 20 --coco-limit 1)
else
  step postprocess $PY benchmarks/postprocess.py --device "$DEVICE" --no-reference --repeat 50
  step postprocess $PY benchmarks/postprocess.py --device "$DEVICE" --no-reference --repeat 20 --size 1024 2048 --centers 200 --classes 19 --no-oversubscription
  step postprocess $PY benchmarks/postprocess.py --device cpu --no-reference --repeat 10 --busy 8
  step loader $PY benchmarks/loader.py --batches 20 --workers 0 1 2 8 --integrity-repeats 0
  step model $PY benchmarks/model.py --device "$DEVICE" --depths 50 --iters 5 --warmup 2 --no-compile --bf16-batch 16
  DEMO_ARGS=()
fi

# The demo as the README runs it, but training and evaluation on the device and 8 loader workers.
sed 's/^\(  num_workers:\).*/\1 8/' workflows/demo.yaml > "$DEMO_DIR.yaml"
step demo prn demo --out "$DEMO_DIR" --device "$DEVICE" --config "$DEMO_DIR.yaml" "${DEMO_ARGS[@]}"
cp "$DEMO_DIR"/results.json "$OUT/demo_results.json" 2>/dev/null
grep -h "samples_per_s\|data_wait" "$DEMO_DIR"/run/metrics.jsonl 2>/dev/null | tail -n 3 > "$OUT/train_tail.jsonl"

step predict $PY benchmarks/predict.py --store "$DEMO_DIR"/val.zarr --checkpoint "$DEMO_DIR"/run/model.pt --device "$DEVICE" --batch 1 8 --rounds 2
ls -la "$OUT"
