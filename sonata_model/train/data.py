"""The pretraining dataset over frame sources, and a sampler that makes runs exactly resumable.

Epoch e is a permutation of its L sample slots drawn from (seed, e); process r of W takes slots
r, r + W, ... of that sequence, endlessly. Slot i of epoch e picks its source by the source weights and
a frame uniformly within it, and builds its views, with a generator seeded from (seed, e, i): what a
batch holds depends only on the seed and its position, not on the number of loader workers or on
restarts. Resuming at step k starts the sampler k * batch_size slots in. A corrupt frame, or one with
(almost) no point inside the domain's range, is replaced by another draw of the same slot and counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..io.sources import FrameSource
from .views import MIN_VIEW_POINTS, NothingToViewError, PretrainBatch, ViewBatch, ViewConfig, make_views

MAX_REDRAWS = 20


class PretrainDataset(Dataset):
    def __init__(
        self,
        sources: Sequence[FrameSource],
        config: ViewConfig,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        if not sources or any(len(s) == 0 for s in sources):
            raise ValueError("every pretraining source needs at least one frame")
        self.sources, self.config, self.seed = list(sources), config, seed
        weights = np.ones(len(sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(sources) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"source weights {weights.tolist()} do not fit {len(sources)} sources")
        self.probabilities = weights / weights.sum()
        self.samples_per_epoch = samples_per_epoch or sum(len(s) for s in sources)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, slot = key
        rng = np.random.default_rng([self.seed, epoch, slot])
        for redraw in range(MAX_REDRAWS):
            source = self.sources[rng.choice(len(self.sources), p=self.probabilities)]
            index = int(rng.integers(len(source)))
            frame = source[index]
            if frame is None or frame.num_points < MIN_VIEW_POINTS:
                continue
            try:
                global_views, local_views = make_views(frame, self.config, rng)
            except NothingToViewError:  # e.g. a covered sensor's frame: nothing in the domain's range
                continue
            return {
                "global": global_views,
                "local": local_views,
                "name": f"{source.name}[{index}]",
                "skipped": redraw,
            }
        raise RuntimeError(
            f"{MAX_REDRAWS} frames in a row were unreadable or had no point in range; check the sources {self.names()}"
        )

    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def skipped_total(self) -> int:
        """Corrupt frames skipped in this process (loader workers report theirs through the batches)."""
        return sum(sum(getattr(s, "skipped", {}).values()) for s in self.sources)


class ResumableSampler(Sampler):
    """Endless (epoch, slot) keys for one process, starting `start` keys in."""

    def __init__(self, samples_per_epoch: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        self.length, self.seed, self.rank, self.world, self.start = samples_per_epoch, seed, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        def keys():
            for epoch in itertools.count():
                order = np.random.default_rng([self.seed, epoch, 7]).permutation(self.length)
                yield from ((epoch, int(slot)) for slot in order)

        mine = itertools.islice(keys(), self.rank, None, self.world)
        return itertools.islice(mine, self.start, None)


def collate(items: list[dict]) -> PretrainBatch:
    return PretrainBatch(
        global_views=ViewBatch.stack([v for item in items for v in item["global"]]),
        local_views=ViewBatch.stack([v for item in items for v in item["local"]]),
        num_samples=len(items),
        names=[item["name"] for item in items],
        skipped=sum(item["skipped"] for item in items),
    )


def make_loader(
    dataset: PretrainDataset,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> DataLoader:
    """Batches of `batch_size` scenes for this process, from batch `start_step` of the endless stream."""
    sampler = ResumableSampler(len(dataset), seed, rank, world_size, start=start_step * batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=2 if workers else None,
    )
