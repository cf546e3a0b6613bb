#!/usr/bin/env bash
# Prepares what benchmarks/gpu_suite.sh needs on the GPU device machine, which has no
# network: wheels of the packages its image lacks (for its Python 3.12, x86-64) and a
# copy of DRIVE, both under the git-ignored folder gpu_carry/ (kept under the 64 MiB the
# device tool carries). Run here, in the repository root:
#
#     bash benchmarks/prepare_gpu_carry.sh [/path/to/DRIVE]
#
# then the `run` command it prints at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DRIVE_SRC="${1:-${UNET_JAX_DRIVE_DIR:-/work/shared/data/DRIVE}}"
CARRY=gpu_carry
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data"

# The device image has jax/jaxlib (CUDA), flax, optax, orbax, chex, torch, numpy, scipy,
# matplotlib, opencv, pillow, tqdm, absl-py, etils, protobuf, pyarrow, psutil, requests,
# wrapt, attrs, cloudpickle, fsspec (see /work/.library/device/KINDS.md). Missing: the
# input pipeline (grain, array-record), the DRIVE builder (tensorflow-datasets and its
# pure-Python needs), TensorBoard logging (tensorboardx) and nibabel. Versions: uv.lock's.
BINARY=(grain==0.2.18 array-record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10 tensorboardx==2.6.5
        nibabel==5.4.2 portpicker==1.6.0 immutabledict==4.3.1 simple-parsing==0.1.9 tensorflow-metadata==1.21.0
        termcolor==3.3.0 toml==0.10.2 docstring-parser==0.18.0 googleapis-common-protos==1.76.0
        importlib-resources==7.1.0)
SOURCE_ONLY=(promise==2.3)  # pure Python, published as an sdist only: built into a wheel here
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$CARRY/wheels" "${BINARY[@]}"
python3 -m pip wheel -q --no-deps -w "$CARRY/wheels" "${SOURCE_ONLY[@]}"

# DRIVE in its original layout (read-only on the device; the tfds dataset is built there).
cp -r "$DRIVE_SRC" "$CARRY/data/DRIVE"
du -sh "$CARRY/wheels" "$CARRY/data"
echo
echo "Device run (one call, under 10 minutes), with the tool 'run':"
echo "  command: bash benchmarks/gpu_suite.sh"
echo "  carry:   [\"$CARRY\"]"
echo "  timeout_s: 600"
echo "Results come back as the files under \$OUT (gpu_suite.sh writes them there)."
echo "The LGG run (issue 8) needs these wheels too: see benchmarks/gpu_lgg.sh's header."
