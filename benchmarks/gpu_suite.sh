#!/usr/bin/env bash
# Every measurement of issue 10 that needs a GPU, in device runs of under 10 minutes each.
# Prepare first, here: `bash benchmarks/prepare_gpu_carry.sh` (wheels the device image
# lacks + a copy of DRIVE in the git-ignored gpu_carry/), then call the device tool `run`
# with command `bash benchmarks/gpu_suite.sh` (part 1), carry ["gpu_carry"], timeout_s 600;
# where device time is left, a second call with `bash benchmarks/gpu_suite.sh 2` (then 3).
# Results (JSON, markdown, PNG, HLO, log; at most 8 files a call) are written to $OUT,
# which the tool brings back; commit them under benchmarks/results/ (step_time files
# measured before benchmarks/flops.py existed: `python -m benchmarks.step_time
# --recount-flops FILE`).
#
# Stages, most important first, each under `timeout` so one that overruns cannot take
# the others down (budgets add up to 555 s in part 1, 490 s in part 2, 385 s in part 3;
# sized from the H200 run and the H100 run of 2026-11-26, where a stage's budget held
# about 2 points with torch.compile or 3 without). Since that H100 run the up-convolution
# is depth_to_space on every backend (1.5-1.8x the train step with the transposed
# convolution there), so the parts re-measure what was measured with the latter:
# part 1
#   1. step_time, unet, batch 32 256x256 and batch 8 512x512, fp32, with torch.compile
#   2. step_time, attention_unet and unetpp at batch 32 256x256, bf16, eager only
#   3. time_to_accuracy, unet, 60 s of training per framework (DRIVE)
# part 2
#   1. step_time, unet, batch 8 512x512, bf16, with torch.compile
#   2. step_time, the other three architectures at batch 32 256x256, bf16, with torch.compile
#   3. loop.py: the real loop vs the step alone, host pipeline vs device-resident data (DRIVE)
# part 3
#   1. step_time, the other three architectures at batch 8 512x512, fp32 and bf16, eager only
#   2. profile_step, unet, batch 32 256x256, fp32: the dearest kernels of JAX and PyTorch
#   3. upsample x pooling at the DRIVE recipe (32x64) and 8x512, fp32 and bf16
set -uo pipefail
cd "$(dirname "$0")/.."
PART="${1:-1}"
case "$PART" in 1|2|3) ;; *) echo "usage: bash benchmarks/gpu_suite.sh [1|2|3]" >&2; exit 2 ;; esac
OUT="${OUT:-/tmp/gpu_suite_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_suite.log") 2>&1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    gpu_carry/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
export UNET_JAX_DRIVE_DIR="$PWD/gpu_carry/data/DRIVE" UNET_JAX_TFDS_DIR=/tmp/tfds
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, torch, flax, grain; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 secs=$2; shift 2
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=10 "$secs" "$@"
    echo "== stage $name: exit $? after $((SECONDS - t0)) s (budget $secs s)"
}

if [ "$PART" = 1 ]; then
    stage step_time_unet_fp32 200 python3 -m benchmarks.step_time --all --archs unet --points 32x256,8x512 \
        --precision fp32 --steps 30 --warmup 5 --out "$OUT/step_time-unet-fp32.json"
    stage step_time_others_bf16 170 python3 -m benchmarks.step_time --all --archs attention_unet,unetpp \
        --points 32x256 --precision bf16 --steps 20 --warmup 3 --no-compile --out "$OUT/step_time-others-bf16.json"
    stage time_to_accuracy 185 python3 -m benchmarks.time_to_accuracy --arch unet --max-seconds 60 \
        --eval-every 100 --out "$OUT/time_to_accuracy-unet.json"
elif [ "$PART" = 2 ]; then
    stage step_time_unet_512_compile 100 python3 -m benchmarks.step_time --arch unet --batch-size 8 \
        --image-size 512 --precision bf16 --steps 20 --warmup 3 --out "$OUT/step_time-unet-bf16-512.json"
    stage step_time_others_compile 270 python3 -m benchmarks.step_time --all \
        --archs attention_unet,unetpp,resunet34 --points 32x256 --precision bf16 --steps 20 --warmup 3 \
        --out "$OUT/step_time-others-compile.json"
    stage loop 120 python3 -m benchmarks.loop --steps 300 --rounds 1 --out "$OUT/loop.json"
else
    stage step_time_512 150 python3 -m benchmarks.step_time --all --archs attention_unet,unetpp,resunet34 \
        --points 8x512 --precision fp32 bf16 --steps 20 --warmup 3 --no-compile --out "$OUT/step_time-512.json"
    stage profile 80 python3 -m benchmarks.profile_step --arch unet --batch-size 32 --image-size 256 \
        --precision fp32 --steps 10 --out "$OUT/profile-unet-fp32.json"
    stage upsample_more 155 python3 -m benchmarks.upsample --arch unet --points 32x64,8x512 --precision fp32 bf16 \
        --upsample transpose depth_to_space --pool window reshape --steps 30 --rounds 5 --out "$OUT/upsample-more.json"
fi
ls -la "$OUT"
