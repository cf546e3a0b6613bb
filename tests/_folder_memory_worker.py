"""Peak memory of the folder dataset's training path, in a process of its own.

    python tests/_folder_memory_worker.py ROOT BATCHES CACHE_MB

Builds the folder dataset at ROOT, takes the training source exactly as a run does
(`training_source`: held in memory only if it fits in CACHE_MB), iterates BATCHES batches
of the grain patch pipeline and prints the process's peak resident set size in bytes
(ru_maxrss), which a fresh process measures for this work alone.
"""

from __future__ import annotations

import resource
import sys


def main(root: str, batches: int, cache_mb: int) -> None:
    from unet_jax import data
    from unet_jax.config import DataConfig, PreprocessConfig, RunConfig
    from unet_jax.data.pipeline import make_train_dataset
    from unet_jax.training.run import training_source

    pre = PreprocessConfig(channels="gray", clahe=False, normalize="unit")
    cfg = RunConfig(data=DataConfig(dataset="folder", preprocess=pre, cache_mb=cache_mb))
    dataset = data.get("folder", root=root, progress=False).with_preprocess(pre)
    source = training_source(cfg, dataset, dataset.train(), progress=False)
    train = make_train_dataset(source, patch_size=64, batch_size=4, seed=0)
    checksum = 0.0
    for i in range(batches):
        checksum += float(train[i]["image"].sum())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, type(source).__name__, checksum)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
