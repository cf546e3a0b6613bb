"""Training: the state and steps, the loop, checkpoints, and whole runs (:func:`train_and_evaluate`)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: importing a submodule (e.g. training.steps) should not pull in the whole engine.
    if name == "train_and_evaluate":
        from unet_jax.training.run import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
