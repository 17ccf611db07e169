"""The pretraining stream: sources drawn by their weights, ranks taking interleaved slots of one sequence,
and batches that do not depend on the number of loader workers or on a restart."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sonata_model.configs import get_config
from sonata_model.io.datasets import FrameFolderWriter
from sonata_model.io.frame import Frame
from sonata_model.io.sources import open_source
from sonata_model.train.data import PretrainDataset, ResumableSampler, make_loader
from sonata_model.train.views import NothingToViewError, ViewConfig, make_views


def small_frames(root, count: int, seed: int) -> str:
    writer = FrameFolderWriter(root)
    rng = np.random.default_rng(seed)
    for k in range(count):
        coord = rng.uniform((-10, -10, -1.5), (10, 10, 1.5), (400, 3)).astype(np.float32)
        writer.write(Frame(coord, rng.random(400, dtype=np.float32), name=f"f{k}"))
    writer.finish()
    return f"frames:{root}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return [open_source(small_frames(root / name, 4, seed)) for seed, name in enumerate(("a", "b"))]


def dataset(sources, weights=None) -> PretrainDataset:
    transform = get_config("tiny", domain="outdoor").transform()
    config = ViewConfig.lidar(transform=transform, feature_keys=("coord", "strength"), max_size=400)
    return PretrainDataset(sources, config, weights, seed=3, samples_per_epoch=16)


def test_sources_are_drawn_by_their_weights(sources):
    data = dataset(sources, weights=[1.0, 3.0])
    picks = [data[(0, slot)]["name"].startswith(sources[1].name) for slot in range(240)]
    assert 0.67 < np.mean(picks) < 0.83  # 3 / 4, within ~3 standard deviations of 240 draws


def test_ranks_take_interleaved_slots_of_one_sequence_and_a_restart_continues_it():
    single = list(itertools.islice(ResumableSampler(16, seed=5), 40))  # over two epochs
    ranks = [list(itertools.islice(ResumableSampler(16, seed=5, rank=r, world_size=2), 20)) for r in (0, 1)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert sorted(single[:16]) == [(0, slot) for slot in range(16)]  # an epoch is a permutation of its slots
    assert list(itertools.islice(ResumableSampler(16, seed=5, start=7), 10)) == single[7:17]


def test_batches_do_not_depend_on_the_number_of_loader_workers(sources):
    data = dataset(sources)
    batches = {}
    for workers in (0, 2):
        loader = iter(make_loader(data, batch_size=2, workers=workers, seed=3))
        batches[workers] = [next(loader) for _ in range(3)]
    for alone, pooled in zip(batches[0], batches[2], strict=True):
        assert alone.names == pooled.names
        assert np.array_equal(alone.global_views.coord.numpy(), pooled.global_views.coord.numpy())


def test_a_frame_with_nothing_in_range_is_drawn_again_and_counted(tmp_path):
    root = tmp_path / "frames"
    small_frames(root, 2, seed=5)
    below = Frame(np.full((400, 3), [1.0, 1.0, -30.0], np.float32), np.zeros(400, np.float32), name="covered")
    writer = FrameFolderWriter(root)  # a covered sensor's frame: every point out of the outdoor range
    writer.write(below)
    writer.finish()
    data = dataset([open_source(f"frames:{root}")])
    with pytest.raises(NothingToViewError, match="frame covered: 0 points inside the outdoor domain's range"):
        make_views(below, data.config, np.random.default_rng(0))
    items = [data[(0, slot)] for slot in range(12)]
    assert not any(item["name"].endswith("[0]") for item in items)  # "covered" sorts first
    assert sum(item["skipped"] for item in items) > 0
