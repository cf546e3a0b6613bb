"""The LGG set on a GPU machine that takes 64 MiB a call: lossless WebP in parts.

    uv run python -m benchmarks.lgg_carry pack [--data-dir DIR] [--out gpu_lgg] [--parts 2]   # here
    python3 -m benchmarks.lgg_carry unpack gpu_lgg_1 [gpu_lgg_2 ...] --out DIR               # there

The 50 shared patients' TIFFs are 171 MB; the device tool carries 64 MiB a call. ``pack``
sets each volume's voxels below 10% of its maximum to 0 (the LGG preprocessing's first step
does exactly that, before anything else reads them, so the model's input is bit-identical:
``tests/test_lgg_carry.py``), codes every slice as lossless WebP (checked by decoding it
again; 0.39x the TIFFs' bytes, where lossless JPEG 2000 and PNG give 0.49x) and deals the
patients into `--parts` folders ``<out>_1``, ``<out>_2``, ... of about equal size; masks are
copied as they are, and the first part also gets the wheels of `--wheels`
(``benchmarks/prepare_gpu_carry.sh`` downloads them). Each part's ``manifest.json`` lists
its patients, files and the SHA-256 of every slice's pixels.

``unpack`` decodes the parts back into the Kaggle layout (``<out>/<patient>/<patient>_<n>.tif``
and ``_mask.tif``), checks every slice against its hash (a decoder that differs stops it,
naming the file) and refuses a part whose files are missing. What differs from the
original: the zeroed voxels, seen only in the overlays and GIFs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from unet_jax.data.imageio import read_image
from unet_jax.data.lgg import brain_threshold, list_patients, resolve_lgg_dir, scan_patient

MANIFEST = "manifest.json"
EXT = ".webp"


def zero_below_threshold(volume: np.ndarray) -> np.ndarray:
    """A copy of `volume` (N, H, W, 3) with the voxels below ``LggDataset``'s crop threshold
    (:func:`brain_threshold`, unchanged by this since the maximum stays) set to 0."""
    out = volume.copy()
    out[out < brain_threshold(volume)] = 0
    return out


def pixel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def _encode_patient(folder: Path, dst: Path) -> dict[str, Any]:
    """Codes one patient folder into dst/<patient>/; returns its manifest entry."""
    slices = scan_patient(folder)
    volume = zero_below_threshold(np.stack([read_image(image) for _, image, _ in slices]))
    out = dst / folder.name
    out.mkdir(parents=True)
    files = []
    for (number, _, mask), image in zip(slices, volume):
        name = f"{folder.name}_{number}"
        # OpenCV codes BGR; a quality above 100 is WebP's lossless mode.
        ok, buf = cv2.imencode(".webp", image[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is None or not np.array_equal(decoded[..., ::-1], image):
            raise RuntimeError(f"this OpenCV's WebP coding is not lossless for {folder / name}.tif: cannot pack")
        (out / f"{name}{EXT}").write_bytes(buf.tobytes())
        shutil.copyfile(mask, out / mask.name)
        files.append({"number": number, "sha256": pixel_hash(image), "mask": mask.name})
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"patient": folder.name, "slices": files, "bytes": size}


def pack(data_dir: Path, out: str, parts: int, wheels: Path | None, workers: int) -> list[Path]:
    """Writes `parts` folders ``<out>_1`` ... and returns them."""
    patients = list_patients(data_dir)
    staging = Path(f"{out}_staging")
    shutil.rmtree(staging, ignore_errors=True)
    # Threads, not processes: OpenCV's coding releases the GIL, and forking a process whose
    # JAX threads run can deadlock (pytest warned of it where other tests had started JAX).
    with ThreadPoolExecutor(workers) as pool:
        entries = list(tqdm(pool.map(_encode_patient, [data_dir / p for p in patients], [staging] * len(patients)),
                            total=len(patients), desc="packing", unit="patient"))
    every = {e["patient"]: len(e["slices"]) for e in entries}
    # Largest first into the smallest part: parts of about equal size.
    bins: list[list[dict]] = [[] for _ in range(parts)]
    for e in sorted(entries, key=lambda e: -e["bytes"]):
        min(bins, key=lambda b: sum(x["bytes"] for x in b)).append(e)
    folders = []
    for i, b in enumerate(bins, 1):
        folder = Path(f"{out}_{i}")
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "data").mkdir(parents=True)
        for e in sorted(b, key=lambda e: e["patient"]):
            shutil.move(staging / e["patient"], folder / "data" / e["patient"])
        manifest = {"part": i, "parts": parts, "source": str(data_dir), "all_patients": every,
                    "patients": sorted(b, key=lambda e: e["patient"])}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if i == 1 and wheels is not None:
            shutil.copytree(wheels, folder / "wheels")
        folders.append(folder)
    staging.rmdir()
    return folders


def _decode_patient(part: Path, entry: dict[str, Any], out: Path) -> int:
    src, dst = part / "data" / entry["patient"], out / entry["patient"]
    dst.mkdir(parents=True, exist_ok=True)
    for s in entry["slices"]:
        name = f"{entry['patient']}_{s['number']}"
        bgr = cv2.imread(str(src / f"{name}{EXT}"), cv2.IMREAD_UNCHANGED)
        if bgr is None:
            raise RuntimeError(f"cannot decode {src / name}{EXT} (missing or corrupt: pack again)")
        if pixel_hash(bgr[..., ::-1]) != s["sha256"]:
            raise RuntimeError(f"{src / name}{EXT} decodes to other pixels than were packed: this OpenCV's "
                               "WebP decoder differs; unpack elsewhere")
        if not cv2.imwrite(str(dst / f"{name}.tif"), bgr):
            raise RuntimeError(f"cannot write {dst / name}.tif")
        shutil.copyfile(src / s["mask"], dst / s["mask"])
    return len(entry["slices"])


def unpack(parts: list[Path], out: Path, workers: int, *, complete: bool = False) -> dict[str, int]:
    """Decodes the parts into `out` in the Kaggle layout; patient -> slices. `complete`:
    then require that `out` holds every packed patient's files (parts unpacked earlier count)."""
    manifests = []
    for part in parts:
        try:
            manifests.append(json.loads((part / MANIFEST).read_text()))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{part} is not a packed LGG part ({e}): run `python -m benchmarks.lgg_carry pack`") \
                from e
    jobs = [(part, e) for part, m in zip(parts, manifests) for e in m["patients"]]
    with ThreadPoolExecutor(workers) as pool:
        counts = tqdm(pool.map(_decode_patient, [p for p, _ in jobs], [e for _, e in jobs], [out] * len(jobs)),
                      total=len(jobs), desc="unpacking", unit="patient")
        done = {e["patient"]: n for (_, e), n in zip(jobs, counts)}
    if complete:
        every = manifests[0]["all_patients"]
        short = sorted(p for p, n in every.items()
                       if not (out / p).is_dir() or sum(1 for _ in (out / p).iterdir()) != 2 * n)
        if short:
            raise RuntimeError(f"{out} lacks the files of {len(short)} packed patient(s) ({', '.join(short[:3])}"
                               f"{' ...' if len(short) > 3 else ''}): unpack every part into it")
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="here: code the kaggle_3m folder into parts")
    a.add_argument("--data-dir", help="kaggle_3m folder (default: $UNET_JAX_LGG_DIR, else ./data/kaggle_3m)")
    a.add_argument("--out", default="gpu_lgg", help="parts are written to <out>_1, <out>_2, ...")
    a.add_argument("--parts", type=int, default=2)
    a.add_argument("--wheels", default="gpu_carry/wheels", help="copied into the first part ('' for none)")
    b = sub.add_parser("unpack", help="there: decode parts into the Kaggle layout")
    b.add_argument("parts", nargs="+", type=Path)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--complete", action="store_true", help="fail unless the parts hold every packed patient")
    for s in (a, b):
        s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.command == "pack":
        wheels = Path(args.wheels) if args.wheels else None
        if wheels is not None and not wheels.is_dir():
            p.error(f"--wheels {wheels} does not exist: run `bash benchmarks/prepare_gpu_carry.sh` first, or "
                    "give --wheels ''")
        for folder in pack(resolve_lgg_dir(args.data_dir), args.out, args.parts, wheels, args.workers):
            mib = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
            print(f"{folder}: {mib:.1f} MiB")
    else:
        counts = unpack(args.parts, args.out, args.workers, complete=args.complete)
        print(f"{args.out}: {len(counts)} patients, {sum(counts.values())} slices")


if __name__ == "__main__":
    main()
