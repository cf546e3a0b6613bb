#!/usr/bin/env bash
# Issue 8's full LGG recipe (32 features, 256x256, per-image Dice loss, --uniform-share 0.5 as on
# the CPU) on one GPU: two device calls on one warm machine, since the 50 patients (66 MB as
# lossless WebP) and the wheels exceed the 64 MiB a call carries. On an H200 (2026-11-27) call
# 1 ran 74 s and call 2 303 s (10000 steps): about 7 of a session's 15 minutes of device time,
# the machine's start included (benchmarks/results/gpu_lgg-nvidia_h200-2026-11-27.log).
#
# Prepare here (git-ignored outputs):
#     bash benchmarks/prepare_gpu_carry.sh          # wheels, in gpu_carry/wheels
#     uv run python -m benchmarks.lgg_carry pack --data-dir ../shared/data/lgg_mri/kaggle_3m
#     # -> gpu_lgg_1 (wheels + 25 patients, 45 MiB), gpu_lgg_2 (25 patients, 31 MiB)
# Call 1: command `bash benchmarks/gpu_lgg.sh 1`, carry ["gpu_lgg_1"], timeout_s 240.
#     Installs the wheels and unpacks part 1 into gpu_lgg/ (git-ignored and not carried, so
#     it stays on the machine), then trains the recipe 200 steps on those 25 patients (a
#     seeded split) to measure training images/s, which sizes call 2's run; then the same
#     200 steps with COMPARE_WORKERS (8) grain worker processes, timed only (about a minute
#     more; checked end to end on a CPU with tiny settings, not yet on a GPU).
# Call 2, AT ONCE (the machine stays warm 30 s): `bash benchmarks/gpu_lgg.sh 2`,
#     carry ["gpu_lgg_2"], timeout_s 600. Unpacks part 2 beside part 1 (checks that all 50
#     patients are there, else exit 3: the machine was a fresh one, start again at call 1),
#     trains on the committed split (experiments/splits/lgg_50.json) for as many steps as fit
#     TRAIN_S seconds at call 1's rate (a multiple of 1000, at most 10000: the full recipe),
#     evaluates the 10 test patients and writes lgg_run.tar.gz (results.json, per-volume and
#     per-slice CSVs, dsc.png, curves, GIFs; no checkpoints) and the log to $OUT.
# Instead of call 2, AT ONCE after call 1: `bash benchmarks/gpu_lgg.sh cv`, carry ["gpu_lgg_2"],
#     timeout_s 600: the 5-fold cross-validation by patient (`--folds 5 --fold i`, i = 0..4),
#     the five folds trained side by side on the one GPU (each process limited to
#     XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.15, of its memory) for CV_STEPS steps each
#     (default: as many as fit TRAIN_S seconds if the five together made call 1's rate, a
#     multiple of 500, 1000 to 10000), then `unet_jax.crossval` over them; writes
#     lgg_cv.tar.gz (each fold's results, per-volume CSV and dsc.png, and crossval/: the
#     figure over the 50 patients) and the log to $OUT. On an H200 (2026-11-27, after a call 1
#     of 669 images/s: 2,500 steps by default) the call ran 255 s; with CV_STEPS=6000, 413 s
#     (the five processes trained 2,470-2,590 images/s together, 3.7x one alone, so the
#     default is cautious; 8000 steps should still fit the fold timeout, untried).
#     benchmarks/results/gpu_lgg_cv-nvidia_h200-2026-11-27.log, lgg_gpu_crossval-nvidia_h200.json.
# Another network: the same ARCH for call 1 and call 2 / cv (call 1's rate sizes the steps
#     of that network only: call 2 / cv exit 4 at once when the two differ and neither STEPS
#     nor CV_STEPS is given), e.g. `ARCH=attention_unet bash benchmarks/gpu_lgg.sh 1`, then
#     `ARCH=attention_unet bash benchmarks/gpu_lgg.sh cv`.
# Environment: EXTRA (more brain_mri flags for every run, e.g. EXTRA="--sequences flair"; give
# call 1 the same), PRECISION (bf16), TRAIN_S (330), ARCH (unet), FEATURES (32), CALIBRATION_STEPS
# (200), STEPS (call 2's steps instead of the calibrated number), WORKERS (0: the host
# pipeline in one thread of the process; N: grain worker processes), COMPARE_WORKERS (8: call
# 1 also times the calibration with that many workers, about a minute more; empty: skip). The
# host pipeline (one thread) made 1,240 augmented 256x256 training slices/s on a 2-vCPU EPYC,
# yet one process trained only 669-961 images/s on an H200 where five side by side made 2,500
# together: COMPARE_WORKERS says whether the pipeline or the step holds one process back.
# Sized from CPU timings (reading the 50 volumes at 256x256 took 18 s there, caching the
# training slices 4 s):
# call 2 = about 30 s before training + TRAIN_S + validation, checkpoints and the test
# pictures (about 2 minutes) under its 560 s limit.
set -uo pipefail
cd "$(dirname "$0")/.."
PART="${1:-}"
case "$PART" in 1|2|cv) ;; *) echo "usage: bash benchmarks/gpu_lgg.sh 1|2|cv (see the header)" >&2; exit 2 ;; esac
OUT="${OUT:-/tmp/gpu_lgg_out}"
mkdir -p "$OUT" gpu_lgg
exec > >(tee "$OUT/gpu_lgg_$PART.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/gpu_lgg/site:$PWD"
PRECISION="${PRECISION:-bf16}" TRAIN_S="${TRAIN_S:-330}" ARCH="${ARCH:-unet}" FEATURES="${FEATURES:-32}"
CALIBRATION_STEPS="${CALIBRATION_STEPS:-200}" WORKERS="${WORKERS:-0}" COMPARE_WORKERS="${COMPARE_WORKERS-8}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
RECIPE=(--arch "$ARCH" --features "$FEATURES" --image-size 256 --batch-size 16 --loss-per-image --uniform-share 0.5
        --precision "$PRECISION" --cache-mb 8192 --workers "$WORKERS" --no-progress ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
echo "== part $PART, $(date -u +%T), $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1)"

if [ "$PART" = 1 ]; then
    if [ -d gpu_lgg_1/wheels ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target gpu_lgg/site gpu_lgg_1/wheels/*.whl || exit 1
    else
        echo "no wheels carried (packed with --wheels ''): the installed packages are used"
    fi
    touch gpu_lgg/part1
    rm -rf gpu_lgg/kaggle_3m
    python3 -m benchmarks.lgg_carry unpack gpu_lgg_1 --out gpu_lgg/kaggle_3m || exit 1
    # calibrate NAME SECONDS [FLAG...]: the recipe for CALIBRATION_STEPS on part 1, in /tmp/NAME.
    calibrate() {
        local name="$1" limit="$2"; shift 2
        timeout "$limit" python3 -m experiments.brain_mri "${RECIPE[@]}" "$@" --data-dir gpu_lgg/kaggle_3m \
            --steps "$CALIBRATION_STEPS" --eval-every "$CALIBRATION_STEPS" --log-every 50 \
            --checkpoint-every "$CALIBRATION_STEPS" --workdir "/tmp/$name" --overwrite
        echo "== $name exit $? at $(date -u +%T)"
    }
    calibrate lgg_calibration 180
    python3 - "$TRAIN_S" <<'EOF' || exit 1
import json, sys
r = json.load(open("/tmp/lgg_calibration/results.json"))
rate = r["train_images_per_s"]
steps = max(1000, min(10000, int(float(sys.argv[1]) * rate / 16) // 1000 * 1000))
print(f"calibration: {rate:.0f} training images/s, first step {r['first_step_s']:.1f} s -> {steps} steps")
open("gpu_lgg/steps", "w").write(str(steps))
open("gpu_lgg/rate", "w").write(str(rate))
open("gpu_lgg/arch", "w").write(r["arch"])
EOF
    cp /tmp/lgg_calibration/results.json "$OUT/lgg_calibration.json"
    for w in $COMPARE_WORKERS; do
        calibrate "lgg_calibration_w$w" 120 --workers "$w"
        cp "/tmp/lgg_calibration_w$w/results.json" "$OUT/lgg_calibration_w$w.json"
    done
else
    if [ ! -s gpu_lgg/rate ] || [ ! -e gpu_lgg/part1 ]; then
        echo "gpu_lgg/ holds no part 1: this is a fresh machine; run call 1 again, then call $PART at once" >&2
        exit 3
    fi
    # call 1's rate sizes this call's steps (unless given) only for the architecture it timed
    if [ "$PART" = cv ]; then GIVEN="${CV_STEPS:-}"; else GIVEN="${STEPS:-}"; fi
    if [ "$(cat gpu_lgg/arch 2>/dev/null)" != "$ARCH" ] && [ -z "$GIVEN" ]; then
        echo "call 1 timed ARCH=$(cat gpu_lgg/arch 2>/dev/null || echo '?'), this call trains ARCH=$ARCH:" \
             "run call 1 again with ARCH=$ARCH, or give STEPS (call 2) / CV_STEPS (cv)" >&2
        exit 4
    fi
    python3 -m benchmarks.lgg_carry unpack gpu_lgg_2 --out gpu_lgg/kaggle_3m --complete || exit 3
fi
if [ "$PART" = cv ]; then
    # TRAIN_S at call 1's rate, shared by five runs: a fifth each (a multiple of 500),
    # unless the side-by-side rate is known better (CV_STEPS).
    CV_STEPS="${CV_STEPS:-$(python3 -c "import sys; s = float(sys.argv[1]) * float(sys.argv[2]) / 16 / 5
print(max(1000, min(10000, int(s) // 500 * 500)))" "$TRAIN_S" "$(cat gpu_lgg/rate)")}"
    export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.15}"
    echo "== 5 folds side by side, $CV_STEPS steps each, from $(date -u +%T)"
    rm -rf gpu_lgg/cv && mkdir -p gpu_lgg/cv
    for i in 0 1 2 3 4; do
        timeout 540 python3 -m experiments.brain_mri "${RECIPE[@]}" --data-dir gpu_lgg/kaggle_3m --folds 5 \
            --fold "$i" --steps "$CV_STEPS" --eval-every 500 --log-every 100 --checkpoint-every 500 \
            --workdir "gpu_lgg/cv/fold$i" --overwrite > "gpu_lgg/cv/fold$i.log" 2>&1 &
    done
    for i in 0 1 2 3 4; do
        wait -n; echo "== a fold ended (exit $?) at $(date -u +%T)"
    done
    for i in 0 1 2 3 4; do echo "== fold $i:"; tail -n 3 "gpu_lgg/cv/fold$i.log"; done
    python3 -m unet_jax.crossval gpu_lgg/cv/fold{0,1,2,3,4} --output gpu_lgg/cv/crossval
    echo "== crossval exit $? at $(date -u +%T)"
    tar czf "$OUT/lgg_cv.tar.gz" -C gpu_lgg --exclude '*/checkpoints' --exclude '*/predictions' \
        --exclude '*/overlays' --exclude '*/tb' --exclude '*/gifs' cv
elif [ "$PART" = 2 ]; then
    STEPS="${STEPS:-$(cat gpu_lgg/steps)}"
    echo "== training $STEPS steps from $(date -u +%T)"
    timeout 560 python3 -m experiments.brain_mri "${RECIPE[@]}" --data-dir gpu_lgg/kaggle_3m \
        --split experiments/splits/lgg_50.json --steps "$STEPS" --eval-every 1000 --log-every 100 \
        --checkpoint-every 1000 --workdir gpu_lgg/run --overwrite
    echo "== run exit $? at $(date -u +%T)"
    tar czf "$OUT/lgg_run.tar.gz" -C gpu_lgg --exclude run/checkpoints --exclude run/predictions \
        --exclude run/overlays --exclude run/tb run
fi
ls -la "$OUT"
