#!/usr/bin/env bash
# Every measurement of issue 10 that needs a GPU, in device runs of under 10 minutes each.
# Order of work on a GPU: issue 10's targets were met on 2026-11-26 (README, "One NVIDIA
# H200", and docs/gpu_runs.md), so these parts only fill in the sweep; issue 8's LGG run,
# never measured on a GPU, comes first: `benchmarks/gpu_lgg.sh` (two calls, a session's
# device time), then this suite in a later session.
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
# the others down (budgets add up to 460 s in part 1, 450 s in part 2, 465 s in part 3;
# sized from the GPU runs of 2026-11-26, where one point with torch.compile took 70-120 s
# and one without 40-70 s). unet's fp32 and bf16 points, the DRIVE loop and time to accuracy
# were measured with depth_to_space on an H100 and an H200 (README); what is left:
# part 1
#   1. step_time, attention_unet, unetpp and resunet34 at batch 32 256x256, fp32, with torch.compile
#   2. profile_step, unet, batch 32 256x256, fp32: the dearest kernels of JAX and PyTorch now
# part 2
#   1. step_time, attention_unet and unetpp at batch 32 256x256, bf16, with torch.compile
#   2. step_time, the other three architectures at batch 8 512x512, fp32 and bf16, eager only
# part 3
#   1. the front door on a GPU: `python -m experiments.drive --arch unetpp`, whole command timed
#   2. upsample x pooling at the DRIVE recipe (32x64) and 8x512, fp32 and bf16
#   3. step_time, unet, batch 32 256x256, bf16, with torch.compile (the H100's target point, again)
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
    stage step_time_others_fp32 380 python3 -m benchmarks.step_time --all --archs attention_unet,unetpp,resunet34 \
        --points 32x256 --precision fp32 --steps 20 --warmup 3 --out "$OUT/step_time-others-fp32.json"
    stage profile 80 python3 -m benchmarks.profile_step --arch unet --batch-size 32 --image-size 256 \
        --precision fp32 --steps 10 --out "$OUT/profile-unet-fp32.json"
elif [ "$PART" = 2 ]; then
    stage step_time_others_compile 250 python3 -m benchmarks.step_time --all --archs attention_unet,unetpp \
        --points 32x256 --precision bf16 --steps 20 --warmup 3 --out "$OUT/step_time-others-bf16-compile.json"
    stage step_time_512 200 python3 -m benchmarks.step_time --all --archs attention_unet,unetpp,resunet34 \
        --points 8x512 --precision fp32 bf16 --steps 20 --warmup 3 --no-compile --out "$OUT/step_time-512.json"
else
    stage drive_unetpp 200 python3 -m experiments.drive --arch unetpp --no-progress --workdir /tmp/drive_unetpp
    cp /tmp/drive_unetpp/results.json "$OUT/drive-unetpp-results.json"
    stage upsample_more 155 python3 -m benchmarks.upsample --arch unet --points 32x64,8x512 --precision fp32 bf16 \
        --upsample transpose depth_to_space --pool window reshape --steps 30 --rounds 5 --out "$OUT/upsample-more.json"
    stage step_time_unet_bf16 110 python3 -m benchmarks.step_time --arch unet --batch-size 32 --image-size 256 \
        --precision bf16 --steps 20 --warmup 3 --out "$OUT/step_time-unet-bf16.json"
fi
ls -la "$OUT"
