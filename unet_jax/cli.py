"""What every training entry point shares: the model/training/output flags and running a job.

An entry point (``experiments/<dataset>.py``) adds its data flags, builds a
:class:`~unet_jax.config.RunConfig` and a dataset from them, and hands both to
:func:`run_main`, which maps every expected failure to a one-line error and an exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from unet_jax import losses, models
from unet_jax.config import (POOL_MODES, SELECT_METRICS, UPSAMPLE_MODES, AugmentConfig, ConfigError, DataConfig,
                             ModelConfig, RunConfig, TrainConfig)
from unet_jax.data.base import DataError, Dataset

Build = Callable[[argparse.Namespace], tuple[RunConfig, Dataset]]


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The model, training, throughput, checkpoint and output flags (defaults: the configs')."""
    m, t = ModelConfig(), TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=models.available(), default=m.arch)
    g.add_argument("--features", type=int, default=m.features, help="base width (channels of the first level)")
    g.add_argument("--depth", type=int, default=m.depth, help="number of poolings")
    g.add_argument("--norm", choices=["batch", "group", "none"], default=m.norm)
    g.add_argument("--upsample", choices=UPSAMPLE_MODES, default=m.upsample,
                   help="depth_to_space: the transposed convolution's layer and parameters computed as a matmul; "
                        "auto: depth_to_space (measured faster on CPU and on an H100)")
    g.add_argument("--pool", choices=POOL_MODES, default=m.pool,
                   help="2x2 max pooling as reduce_window (window) or as a maximum over reshaped 2x2 blocks "
                        "(reshape: same output, a gradient without select_and_scatter)")
    g.add_argument("--aux-heads", type=int, default=m.aux_heads, metavar="K",
                   help="unet/attention_unet deep supervision: 1x1 heads on the K decoder levels below the last "
                        "(1/2, 1/4, ... size, resized to the input), trained with the main head (the loss is "
                        "averaged over the K+1 heads); evaluation and inference use the main head only")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=t.steps)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--lr", type=float, default=t.lr, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    g.add_argument("--optimizer", choices=["adam", "adamw"], default=t.optimizer)
    g.add_argument("--weight-decay", type=float, default=t.weight_decay)
    g.add_argument("--loss", choices=sorted(losses.LOSSES), default=t.loss)
    g.add_argument("--tversky-alpha", type=float, default=t.tversky_alpha, metavar="A",
                   help="--loss tversky: weight of false positives (0.5 with --tversky-beta 0.5 is Dice)")
    g.add_argument("--tversky-beta", type=float, default=t.tversky_beta, metavar="B",
                   help="--loss tversky: weight of false negatives (above --tversky-alpha favours recall)")
    g.add_argument("--loss-per-image", action="store_true",
                   help="the loss's overlap term (Dice, IoU, Tversky) per image, then averaged, instead of pooled "
                        "over the batch (small lesions weigh as much as large ones); keep a BCE term (bce_dice) where "
                        "images can be empty: per image, Dice alone hardly penalises false positives on them")
    g.add_argument("--ema-decay", type=float, default=t.ema_decay, metavar="DECAY",
                   help="keep an exponential moving average of the weights and validate, test and save predictors "
                        "with it; the decay at step t is min(DECAY, (1+t)/(10+t)), so a run of a few thousand steps "
                        "averages over fewer than 1/(1-DECAY) steps; 0 (default): the live weights")
    g.add_argument("--seed", type=int, default=t.seed)
    g.add_argument("--eval-every", type=int, default=t.eval_every)
    g.add_argument("--log-every", type=int, default=t.log_every)
    g.add_argument("--threshold", type=float, default=t.threshold, help="binary tasks: probability threshold of the masks")
    g.add_argument("--ignore-empty", action=argparse.BooleanOptionalAction, default=t.ignore_empty,
                   help="per-case Dice/IoU/sensitivity leave out cases whose label is empty (MONAI's convention); "
                        "--no-ignore-empty scores them 1 when nothing is predicted, else 0")
    g.add_argument("--select", choices=list(SELECT_METRICS), default=t.select,
                   help="validation figure that chooses the best checkpoint: pooled Dice, or the mean of the "
                        "per-case (per-patient, per-volume) Dice")
    g = p.add_argument_group("throughput")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=t.precision,
                   help="bf16: activations and convolutions in bfloat16; parameters, optimizer state and the "
                        "loss stay float32 (pays off on GPUs/TPUs, not on most CPUs)")
    g.add_argument("--bn-sync", action=argparse.BooleanOptionalAction, default=t.bn_sync,
                   help="batch-norm statistics over the whole global batch across devices (same math as one "
                        "device); --no-bn-sync keeps them per device")
    g.add_argument("--workers", type=int, default=0,
                   help="grain worker processes producing patches (0: a background thread of this process)")
    g.add_argument("--data-on-device", choices=["auto", "yes", "no"], default=DataConfig().on_device,
                   help="upload the training set to the device once and sample patches inside the jitted step "
                        "(auto: on a GPU/TPU when it takes at most a quarter of its memory; never on CPU)")
    g.add_argument("--steps-per-call", type=int, default=t.steps_per_call,
                   help="optimizer steps per dispatch (device-resident data; must divide --steps, --log-every, "
                        "--eval-every and --checkpoint-every; 0: 1 with the host pipeline, else the largest such "
                        "divisor up to 25)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-process run: call jax.distributed.initialize (coordinator from "
                        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID, else cluster "
                        "auto-detection: SLURM, Open MPI, ...); implied when $JAX_COORDINATOR_ADDRESS is set")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every,
                   help="save the latest checkpoint every N steps (and always at the last step)")
    g.add_argument("--keep", type=int, default=t.keep,
                   help="latest checkpoints to keep (the best-by-validation one is kept separately)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --workdir from its latest checkpoint (same flags "
                        "required, except --checkpoint-every/--keep/--log-every/--eval-every)")
    g = p.add_argument_group("output")
    g.add_argument("--workdir", default=None, help="run folder (default: runs/<dataset>-<arch>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="reuse a --workdir that already holds a run")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_patch_args(g: argparse._ArgumentGroup, *, foreground_bias: float = 0.0) -> None:
    """--patch-size and --foreground-bias: training on square crops of the preprocessed images
    (read back with :func:`patch_size`); inference always sees whole images."""
    g.add_argument("--patch-size", type=int, default=None,
                   help="training patch side (default: --image-size, else 64); inference sees whole images")
    g.add_argument("--foreground-bias", type=float, default=foreground_bias,
                   help="probability that a patch is centred on a foreground pixel instead of anywhere")


def patch_size(a: argparse.Namespace) -> int:
    """The training patch side: --patch-size, else --image-size, else 64."""
    return a.patch_size or a.image_size or 64


def add_augment_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="disable flips, rotations and intensity jitter")


def augment_config(a: argparse.Namespace) -> AugmentConfig:
    return AugmentConfig() if a.augment else AugmentConfig.none()


def model_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(arch=a.arch, features=a.features, depth=a.depth, norm=a.norm, upsample=a.upsample, pool=a.pool,
                       aux_heads=a.aux_heads)


def train_config(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps, optimizer=a.optimizer,
        weight_decay=a.weight_decay, loss=a.loss, loss_per_image=a.loss_per_image, tversky_alpha=a.tversky_alpha,
        tversky_beta=a.tversky_beta, seed=a.seed,
        eval_every=a.eval_every, log_every=a.log_every, threshold=a.threshold, ignore_empty=a.ignore_empty,
        select=a.select, precision=a.precision, bn_sync=a.bn_sync, checkpoint_every=a.checkpoint_every, keep=a.keep,
        steps_per_call=a.steps_per_call, ema_decay=a.ema_decay,
    )


def _flag_error(parser: argparse.ArgumentParser, e: ConfigError) -> str:
    """A config error phrased with the entry point's flag for the field, when it has one."""
    dest = e.field.rsplit(".", 1)[-1]
    # Augmentation flags are named --aug-X (data.augment.X), beside preprocessing's own --gamma.
    dests = [f"aug_{dest}", dest] if e.field.startswith("data.augment.") else [dest]
    for name in dests:
        for action in parser._actions:
            if action.dest == name and action.option_strings:
                return f"invalid value for {action.option_strings[0]}: {e.value!r} ({e.requirement})"
    return str(e)


def run_main(parser: argparse.ArgumentParser, build: Build, argv: list[str] | None = None) -> int:
    """Parses `argv`, builds the run with `build`, trains and evaluates; returns the exit code.

    0: done; 2: bad flags, data or work directory (nothing half-written); 1: the loss
    became NaN; 130: interrupted (continue with --resume).
    """
    args = parser.parse_args(argv)
    from unet_jax.training.checkpoint import CheckpointError
    from unet_jax.training.loop import NonFiniteLossError
    from unet_jax.training.parallel import initialize_distributed
    from unet_jax.training.run import train_and_evaluate
    from unet_jax.workdir import WorkdirError

    workdir = None
    try:
        initialize_distributed(args.distributed)  # first: before anything else touches JAX
        if args.resume and not args.workdir:
            raise ValueError("--resume needs the --workdir of the run to continue")
        cfg, dataset = build(args)
        workdir = Path(args.workdir or f"runs/{cfg.data.dataset}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
        train_and_evaluate(cfg, dataset, workdir, overwrite=args.overwrite, progress=args.progress,
                           resume=args.resume)
    except ConfigError as e:
        print(f"error: {_flag_error(parser, e)}", file=sys.stderr)
        return 2
    except (DataError, WorkdirError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: results.json was not written; metrics.jsonl holds what was logged"
              + (f"; continue with the same flags plus --resume --workdir {workdir}" if workdir else ""),
              file=sys.stderr)
        return 130
    return 0
