"""Train stream sharding and exact resume, the validation source, the sharded test loader."""

import json
import multiprocessing
from collections import Counter
from itertools import islice

import pytest
import torch

from fabric_mvsplat.errors import UnusableDataError
from fabric_mvsplat.data import StepTracker, ValidationSource, TestLoader, TrainStream
from fabric_mvsplat.data.config import DataLoaderStageCfg, ViewSamplerBoundedCfg, ViewSamplerEvaluationCfg
from data_fixtures import dataset_cfg, make_split


def take_with_positions(stream, count: int) -> list[tuple[list[str], list[int]]]:
    return [(batch["scene"], list(stream.last_positions)) for batch in islice(stream, count)]


@pytest.mark.parametrize("num_scenes", [8, 3])
def test_two_ranks_two_workers_see_every_scene_exactly_once_per_pass(tmp_path, num_scenes):
    keys = make_split(tmp_path / "train", num_scenes, scenes_per_chunk=2, num_frames=8, height=8, width=8)
    cfg = dataset_cfg(tmp_path, height=8, width=8, image_shape=(8, 8))
    loader = DataLoaderStageCfg(num_workers=2, batch_size=1)
    seen = []  # (pass, scene) over both ranks
    for rank in range(2):
        stream = TrainStream(cfg, loader, StepTracker(), rank, 2, seed=7)
        # 3 passes need at most 3 * ceil(N / 4) + 1 batches per worker when N < 4 shards
        for scenes, positions in take_with_positions(stream, 4 * 3 + 2):
            seen += [(position // num_scenes, scene) for scene, position in zip(scenes, positions)]
    for pass_index in range(2):
        assert Counter(scene for p, scene in seen if p == pass_index) == Counter(keys), pass_index
    orders = [[scene for p, scene in seen if p == q] for q in range(2)]
    if num_scenes == 8:
        assert orders[0] != orders[1]  # reshuffled per pass


def test_stream_is_deterministic_and_resumes_exactly(tmp_path):
    make_split(tmp_path / "train", 7, scenes_per_chunk=2)
    cfg = dataset_cfg(tmp_path, view_sampler=ViewSamplerBoundedCfg(
        num_target_views=2, min_distance_between_context_views=2, max_distance_between_context_views=6,
        warm_up_steps=6, initial_min_distance_between_context_views=2, initial_max_distance_between_context_views=3,
        keep_min_gap_bug=False))
    for num_workers in (0, 2):
        loader = DataLoaderStageCfg(num_workers=num_workers, batch_size=2)
        reference = list(islice(TrainStream(cfg, loader, StepTracker(), 0, 1, seed=3), 9))
        interrupted = TrainStream(cfg, loader, StepTracker(), 0, 1, seed=3)
        first = list(islice(interrupted, 5))
        state = interrupted.state_dict()
        torch.save(state, tmp_path / "state.pt")
        resumed = TrainStream(cfg, loader, StepTracker(5), 0, 1, seed=3)
        resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        rest = list(islice(resumed, 4))
        for expected, got in zip(reference, first + rest):
            assert expected["scene"] == got["scene"]
            for side in ("context", "target"):
                for key, value in expected[side].items():
                    torch.testing.assert_close(got[side][key], value, rtol=0, atol=0)
        assert reference[0]["scene"] != reference[4]["scene"] or reference[1]["scene"] != reference[5]["scene"]
    other_seed = next(iter(TrainStream(cfg, loader, StepTracker(), 0, 1, seed=4)))
    assert not torch.equal(other_seed["context"]["index"], reference[0]["context"]["index"]) or \
        other_seed["scene"] != reference[0]["scene"]


def test_changed_layout_restarts_at_the_next_pass(tmp_path):
    make_split(tmp_path / "train", 4)
    cfg = dataset_cfg(tmp_path)
    stream = TrainStream(cfg, DataLoaderStageCfg(), StepTracker(), 0, 1, seed=0)
    list(islice(stream, 2))
    other = TrainStream(cfg, DataLoaderStageCfg(), StepTracker(), 0, 2, seed=0)
    with pytest.warns(RuntimeWarning, match="layout changed"):
        other.load_state_dict(stream.state_dict())
    next(iter(other))
    assert other.last_positions[0] // 4 == 1


def test_validation_source_never_exhausts_on_one_scene_and_resumes(tmp_path):
    make_split(tmp_path / "train", 2)
    make_split(tmp_path / "test", 1, prefix="val")
    cfg = dataset_cfg(tmp_path)
    tracker = StepTracker()
    source = ValidationSource(cfg, DataLoaderStageCfg(batch_size=1), tracker, seed=1)
    batches = []
    for interval in range(10):
        tracker.set_step(interval * 100)
        batches.append(next(source))
    assert all(batch["scene"] == ["val000"] for batch in batches)
    assert len({tuple(b["context"]["index"][0].tolist()) for b in batches}) > 1  # fresh views each time
    state = source.state_dict()
    expected = next(source)
    again = ValidationSource(cfg, DataLoaderStageCfg(batch_size=1), tracker, seed=1)
    again.load_state_dict(state)
    got = next(again)
    torch.testing.assert_close(got["target"]["image"], expected["target"]["image"], rtol=0, atol=0)


def test_test_loader_shards_ranks_without_duplicates(tmp_path):
    keys = make_split(tmp_path / "test", 5, scenes_per_chunk=2)
    cfg = dataset_cfg(tmp_path)
    seen = []
    for rank in range(2):
        loader = TestLoader(cfg, DataLoaderStageCfg(num_workers=2 if rank else 0), rank, 2)
        scenes = [batch["scene"][0] for batch in loader]
        assert len(loader) == len(scenes)
        assert scenes == [batch["scene"][0] for batch in loader]  # deterministic order
        seen += scenes
    assert seen == keys  # every scene exactly once, in chunk order, rank 0 first
    batch = next(iter(TestLoader(cfg, DataLoaderStageCfg(), 0, 1)))
    assert batch["context"]["index"][0].tolist() == [0, 5]  # test stage: gap = max distance, left = 0
    assert batch["target"]["index"][0].tolist() == list(range(6))


def test_test_loader_interval_repeats_and_length(tmp_path):
    make_split(tmp_path / "test", 6, scenes_per_chunk=2)
    cfg = dataset_cfg(tmp_path, test_chunk_interval=2, test_times_per_scene=2, test_len=7)
    scenes = [batch["scene"][0] for batch in TestLoader(cfg, DataLoaderStageCfg(), 0, 1)]
    assert scenes == ["scene000_00", "scene000_01", "scene001_00", "scene001_01",
                      "scene004_00", "scene004_01", "scene005_00"]


def test_test_loader_with_evaluation_index_counts_null_and_missing_scenes(tmp_path):
    keys = make_split(tmp_path / "test", 4)
    index = {keys[0]: {"context": [1, 7], "target": [2, 3, 4]}, keys[1]: None,
             keys[2]: {"context": [0, 4, 9], "target": [5]}}  # keys[3] is missing
    (tmp_path / "index.json").write_text(json.dumps(index))
    cfg = dataset_cfg(tmp_path, view_sampler=ViewSamplerEvaluationCfg(index_path=str(tmp_path / "index.json")))
    loader = TestLoader(cfg, DataLoaderStageCfg(), 0, 1)
    batches = list(loader)
    assert [b["scene"][0] for b in batches] == [keys[0], keys[2]]
    assert batches[0]["context"]["index"][0].tolist() == [1, 7]
    assert batches[1]["context"]["index"][0].tolist() == [0, 4, 9]  # three context views
    assert batches[1]["context"]["near"].shape == (1, 3)  # make_baseline_1 only applies to two views
    assert loader.index_skip_counts == {"null_in_index": 1, "not_in_index": 1}  # dropped before any read
    assert loader.skip_counts == {}


def test_overfit_to_scene_repeats_one_scene(tmp_path):
    make_split(tmp_path / "train", 3)
    make_split(tmp_path / "test", 2, prefix="t")
    cfg = dataset_cfg(tmp_path, overfit_to_scene="t001")
    batches = list(islice(TrainStream(cfg, DataLoaderStageCfg(batch_size=2), StepTracker(), 0, 1, 0), 3))
    assert all(b["scene"] == ["t001", "t001"] for b in batches)
    # overfit: contexts 0 and max_gap, which the kept bug has set to the minimum gap (3)
    assert all(b["context"]["index"][0].tolist() == [0, 3] for b in batches)


def test_accumulated_micro_batches_sample_at_the_step_they_train_at(tmp_path, monkeypatch):
    """With trainer.accumulate_grad_batches=2 the loop trains batches 2k and 2k+1 at step k: the view
    sampler's curriculum must see k for both (also for batches a worker prefetches)."""
    from fabric_mvsplat.data import stream as stream_module

    make_split(tmp_path / "train", 4)
    steps = []
    real_build = stream_module.ExampleBuilder.build

    def recording_build(self, scene, chunk, generator, step):
        steps.append(step)
        return real_build(self, scene, chunk, generator, step)

    monkeypatch.setattr(stream_module.ExampleBuilder, "build", recording_build)
    loader = DataLoaderStageCfg(num_workers=0, batch_size=1)
    stream = TrainStream(dataset_cfg(tmp_path), loader, StepTracker(5), 0, 1, seed=0, batches_per_step=2)
    list(islice(stream, 6))
    assert steps == [5, 5, 6, 6, 7, 7]


def dataloader_workers() -> set[int]:
    return {process.pid for process in multiprocessing.active_children()}


def test_workers_end_when_a_worker_raises(tmp_path):
    make_split(tmp_path / "train", 3, num_frames=3)  # too short for the sampler: every worker raises
    before = dataloader_workers()
    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=2), StepTracker(), 0, 1, 0)
    with pytest.raises(UnusableDataError, match="view_sampler"):
        next(iter(stream))
    assert dataloader_workers() - before == set()


def test_workers_end_when_the_caller_stops_reading(tmp_path):
    make_split(tmp_path / "train", 4, scenes_per_chunk=2)
    before = dataloader_workers()
    batches = iter(TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=2), StepTracker(),
                                     0, 1, 0))
    next(batches)
    assert len(dataloader_workers() - before) == 2
    batches.close()
    assert dataloader_workers() - before == set()


def test_torch_still_has_the_private_worker_shutdown_the_stream_calls():
    """data.stream.iterate ends the workers at once through the DataLoader iterator's private _shutdown_workers();
    without it they end only in the iterator's __del__ (5 s per worker after a worker raised). A torch that drops
    or renames it fails here rather than slowing every stop."""
    from torch.utils.data import DataLoader

    batches = iter(DataLoader(list(range(4)), num_workers=1))
    shutdown = getattr(batches, "_shutdown_workers", None)
    assert callable(shutdown), f"torch {torch.__version__}: DataLoader's iterator has no _shutdown_workers()"
    shutdown()


def test_loader_seed_null_derives_the_order_from_the_root_seed(tmp_path):
    """data_loader.*.seed=null, as the original accepts it: the stream is still deterministic, from `seed` alone."""
    make_split(tmp_path / "train", 8, scenes_per_chunk=2)
    cfg = dataset_cfg(tmp_path)
    loader = DataLoaderStageCfg(batch_size=2, seed=None)

    def first_batches(root_seed: int) -> list[list[str]]:
        return [batch["scene"] for batch in islice(TrainStream(cfg, loader, StepTracker(), 0, 1, root_seed), 4)]

    assert first_batches(111123) == first_batches(111123)
    assert first_batches(111123) != first_batches(5)
    assert sorted(sum(first_batches(111123), [])) == sorted(json.loads((tmp_path / "train" / "index.json").read_text()))
