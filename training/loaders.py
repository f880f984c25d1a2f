"""The training and validation data of a run: datasets read from the preparation cache (or
the files), and the loaders that deal every epoch out to the processes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from torch.utils.data import DataLoader, Subset

from data.cache import DEFAULT_CACHE_ROOT, PreparedCache, prepare_splits
from data.dataset import (
    EpochSampler,
    FileSource,
    ISICDataset,
    JoinedSource,
    ReplaySampler,
    eval_transforms,
    train_transforms,
)
from data.layouts import DatasetError, Pair, find_pairs
from data.splits import data_root
from data.workers import DataStallError, batch_timeout, init_loader_worker, worker_context
from training.distributed import Cluster, StopRequest


def replay_pairs(args: argparse.Namespace) -> list[Pair]:
    """The training images of the ``--replay`` folder (none without it).

    Raises:
        DatasetError: the folder holds no training pairs in a known layout.
    """
    if not args.replay:
        return []
    return find_pairs(data_root(args.replay, generate=False), "train",
                      skip_unpaired=args.skip_unpaired)


def build_datasets(args: argparse.Namespace, root: Path, train_pairs: list[Pair],
                   val_pairs: list[Pair], cluster: Cluster, replay: Sequence[Pair] = ()
                   ) -> tuple[ISICDataset, ISICDataset]:
    """Training and validation datasets, read from the preparation cache unless --no-cache;
    rank 0 builds what is missing while the others wait. With ``replay`` (the
    :func:`replay_pairs` of ``--replay``) the training dataset is a
    :class:`data.dataset.JoinedSource` of ``train_pairs`` and ``replay``, in that order."""
    splits = ("train", "val") if args.official_val else ("train",)
    train_source = FileSource(train_pairs, args.img_size)
    val_source = FileSource(val_pairs, args.img_size)
    replay_source = FileSource(replay, args.img_size)
    if args.cache:
        caches = prepared(args, root, splits, cluster)
        train_source = caches["train"].source(train_pairs)
        val_source = caches["val" if args.official_val else "train"].source(val_pairs)
        if replay:
            replay_caches = prepared(args, data_root(args.replay, generate=False), ("train",),
                                     cluster)
            replay_source = replay_caches["train"].source(replay)
    if replay:
        train_source = JoinedSource(train_source, replay_source)
    return (ISICDataset(train_source, train_transforms(args.img_size, policy=args.augment)),
            ISICDataset(val_source, eval_transforms(args.img_size)))


def prepared(args: argparse.Namespace, root: Path, splits: tuple[str, ...],
             cluster: Cluster) -> dict[str, PreparedCache]:
    """The preparation caches of ``splits`` of ``root``: built (and reported) by rank 0, then
    opened by the others."""
    caches = None
    if cluster.is_main:
        caches = open_caches(args, root, splits, log=print)
    cluster.wait_for_main()
    return caches if caches is not None else open_caches(args, root, splits, log=None)


def open_caches(args: argparse.Namespace, root: Path, splits: tuple[str, ...],
                log: Callable[[str], None] | None) -> dict[str, PreparedCache]:
    return prepare_splits(root, splits, args.img_size, skip_unpaired=args.skip_unpaired,
                          cache_root=args.cache_dir or DEFAULT_CACHE_ROOT,
                          progress=log is not None, log=log)


def build_loaders(args: argparse.Namespace, train_ds: ISICDataset, val_ds: ISICDataset,
                  cluster: Cluster) -> tuple[DataLoader, DataLoader]:
    """Each process trains on its share of every epoch (:class:`EpochSampler`) and validates
    a disjoint slice of the validation set (no padding, no duplicates), so that the reduced
    mean is the number a single process computes. Validation items from the preparation cache
    cost microseconds, so they are read in the process itself: worker processes would take
    longer to start than the items to read. Workers are spawned (:mod:`data.workers`), and a
    batch they do not deliver in time (``--data-timeout``) ends the run (:func:`batches`).

    Raises:
        DatasetError: fewer training images than processes.
    """
    source = train_ds.source
    if isinstance(source, JoinedSource):
        sampler = ReplaySampler(len(source.first), len(source.second), args.replay_share,
                                args.batch_size, args.seed, cluster.rank, cluster.world)
    else:
        sampler = EpochSampler(len(train_ds), args.seed, cluster.rank, cluster.world)
    if len(sampler) < 1:
        raise DatasetError(f"{len(train_ds)} training images are too few for {cluster.world} "
                           "processes")
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    common = dict(num_workers=workers, pin_memory=cluster.device.type == "cuda",
                  persistent_workers=workers > 0, worker_init_fn=init_loader_worker,
                  multiprocessing_context=worker_context() if workers > 0 else None,
                  timeout=(args.data_timeout or batch_timeout(args.batch_size)) if workers else 0)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler,
                              drop_last=len(sampler) >= args.batch_size, **common)
    val_shard = Subset(val_ds, range(cluster.rank, len(val_ds), cluster.world))
    if args.cache:
        common.update(num_workers=0, persistent_workers=False, multiprocessing_context=None,
                      timeout=0)
    return train_loader, DataLoader(val_shard, batch_size=args.batch_size, **common)


def epoch_images(loader: DataLoader, cluster: Cluster) -> int:
    """Images one whole epoch trains on, all processes together."""
    batches, size = len(loader), loader.batch_size
    per_process = batches * size if loader.drop_last else len(loader.sampler)
    return per_process * cluster.world


def batches(loader: DataLoader, stop: StopRequest) -> Iterator[dict]:
    """The loader's batches. A stop signal ends the wait for one at once
    (:class:`training.distributed.StopDuringWait`), and a batch its workers do not deliver
    within the loader's timeout ends the run.

    Raises:
        DataStallError: no batch within ``loader.timeout`` seconds, naming what to try.
    """
    with stop.waiting():  # starting the workers is part of the wait
        iterator = iter(loader)
    while True:
        try:
            with stop.waiting():
                batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            if not loader.timeout or "timed out" not in str(exc):
                raise
            raise DataStallError(
                f"no batch came from the {loader.num_workers} data-loading worker processes in "
                f"{loader.timeout:.0f} s: a worker is stuck or the file system stopped "
                "answering; check that the data folder can be read, try --workers 0, or raise "
                "--data-timeout if batches are really that slow") from None
        yield batch
