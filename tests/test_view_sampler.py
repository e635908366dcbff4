"""View samplers: the original's bounded gaps and warm-up, evaluation index, arbitrary, all, step tracker."""


import pytest
from conftest import SHARED
import torch
from torch.utils.data import DataLoader, Dataset

from fabric_mvsplat.data import StepTracker
from fabric_mvsplat.data.config import (ViewSamplerArbitraryCfg, ViewSamplerBoundedCfg, ViewSamplerEvaluationCfg)
from fabric_mvsplat.data.view_sampler import (AllSampler, ArbitrarySampler, BoundedSampler, EvaluationSampler,
                                              SceneRejected, schedule)

ASSETS = SHARED / "assets"
# fabric_mvsplat/configs/dataset/view_sampler_dataset_specific_config/bounded_re10k.yaml
RE10K = dict(min_distance_between_context_views=45, max_distance_between_context_views=192,
             warm_up_steps=150_000, initial_min_distance_between_context_views=25,
             initial_max_distance_between_context_views=45, num_target_views=4)


def draws(sampler, num_views: int, step: int, count: int = 50):
    return [sampler.sample("s", num_views, torch.Generator().manual_seed(i), step) for i in range(count)]


@pytest.mark.parametrize("step, gap", [(0, 25), (7_499, 25), (7_500, 26), (75_000, 35), (149_999, 44),
                                       (150_000, 45), (400_000, 45)])
def test_bounded_kept_bug_gap_is_the_scheduled_minimum(step, gap):
    sampler = BoundedSampler(ViewSamplerBoundedCfg(**RE10K), "train", False, False)
    for context, target in draws(sampler, 300, step):
        left, right = context.tolist()
        assert right - left == gap and 0 <= left < 300 - gap
        assert len(target) == 4 and target.min() >= left and target.max() <= right


def test_bounded_fixed_gap_samples_between_min_and_max():
    cfg = ViewSamplerBoundedCfg(**RE10K, keep_min_gap_bug=False)
    sampler = BoundedSampler(cfg, "train", False, False)
    gaps = {int(c[1] - c[0]) for c, _ in draws(sampler, 300, 150_000, 200)}
    assert min(gaps) >= 45 and max(gaps) <= 192 and len(gaps) > 20
    # warm-up applies to both ends: at step 0 gaps lie in [25, 45]
    gaps = {int(c[1] - c[0]) for c, _ in draws(sampler, 300, 0, 200)}
    assert min(gaps) >= 25 and max(gaps) <= 45 and len(gaps) > 5
    # and max is capped by the scene length
    assert {int(c[1] - c[0]) for c, _ in draws(sampler, 60, 150_000)} <= set(range(45, 60))


def test_bounded_test_stage_and_short_scenes():
    sampler = BoundedSampler(ViewSamplerBoundedCfg(**RE10K), "test", False, False)
    context, target = sampler.sample("s", 300, torch.Generator().manual_seed(0), 0)
    assert context.tolist() == [0, 192] and target.tolist() == list(range(193))
    train = BoundedSampler(ViewSamplerBoundedCfg(**RE10K), "train", False, False)
    with pytest.raises(SceneRejected, match="view_sampler.*25 frames") as error:
        train.sample("s", 25, torch.Generator(), 0)
    assert error.value.reason == "view_sampler"
    context, _ = train.sample("s", 26, torch.Generator(), 0)  # exactly long enough for gap 25
    assert context.tolist() == [0, 25]


def test_bounded_min_distance_to_context_and_more_context_views():
    cfg = ViewSamplerBoundedCfg(num_context_views=3, num_target_views=3, min_distance_between_context_views=6,
                                max_distance_between_context_views=10, min_distance_to_context_views=2)
    sampler = BoundedSampler(cfg, "train", False, False)
    for context, target in draws(sampler, 20, 0):
        left, middle, right = context.tolist()
        assert right - left == 6 and left < middle < right
        assert target.min() >= left + 2 and target.max() <= right - 2


def test_schedule_is_integer_truncated_linear():
    assert [schedule(25, 45, s, 150_000) for s in (0, 1, 7_499, 7_500, 10**6)] == [25, 25, 25, 26, 45]


def test_evaluation_sampler_on_the_original_re10k_index():
    path = ASSETS / "evaluation_index_re10k.json"
    if not path.is_file():
        pytest.skip(f"{path} absent (the original's evaluation index is shipped in ../shared/assets)")
    sampler = EvaluationSampler(ViewSamplerEvaluationCfg(index_path=str(path)))
    entries = sampler.index
    assert len(entries) == 7194 and sum(entry is None for entry in entries.values()) == 720
    key, (context, target) = next((k, e) for k, e in entries.items() if e is not None)
    sampled_context, sampled_target = sampler.sample(key, 400, torch.Generator(), 0)
    assert sampled_context.tolist() == context and sampled_target.tolist() == target
    assert len(context) == 2 and len(target) == 3
    null_key = next(k for k, e in entries.items() if e is None)
    with pytest.raises(SceneRejected, match="null") as error:
        sampler.sample(null_key, 400, torch.Generator(), 0)
    assert error.value.reason == "null_in_index"
    with pytest.raises(SceneRejected, match="missing") as error:
        sampler.sample("not-a-scene", 400, torch.Generator(), 0)
    assert error.value.reason == "not_in_index"


def test_evaluation_sampler_three_context_views_dtu():
    path = ASSETS / "evaluation_index_dtu_nctx3.json"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    sampler = EvaluationSampler(ViewSamplerEvaluationCfg(index_path=str(path), num_context_views=3))
    context, target = sampler.sample("scan1_train_00", 49, torch.Generator(), 0)
    assert context.tolist() == [33, 31, 43] and len(target) == 1


def test_evaluation_sampler_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="index_path"):
        EvaluationSampler(ViewSamplerEvaluationCfg(index_path=str(tmp_path / "none.json")))


def test_arbitrary_and_all():
    sampler = ArbitrarySampler(ViewSamplerArbitraryCfg(num_context_views=3, num_target_views=2))
    context, target = sampler.sample("s", 5, torch.Generator().manual_seed(0), 0)
    assert len(context) == 3 and len(target) == 2 and context.max() < 5
    fixed = ArbitrarySampler(ViewSamplerArbitraryCfg(context_views=[0, 4], target_views=[2]))
    assert [t.tolist() for t in fixed.sample("s", 5, torch.Generator(), 0)] == [[0, 4], [2]]
    with pytest.raises(SceneRejected):
        fixed.sample("s", 4, torch.Generator(), 0)
    context, target = AllSampler().sample("s", 4, torch.Generator(), 0)
    assert context.tolist() == target.tolist() == [0, 1, 2, 3]


class StepReader(Dataset):
    def __init__(self, tracker: StepTracker) -> None:
        self.tracker = tracker

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return self.tracker.get_step()


def test_step_tracker_is_shared_with_worker_processes():
    tracker = StepTracker()
    loader = DataLoader(StepReader(tracker), batch_size=None, num_workers=2, persistent_workers=True)
    assert list(loader) == [0, 0]
    tracker.set_step(1234)  # the workers are already running: they must see the new value
    assert list(loader) == [1234, 1234]
    assert tracker.get_step() == 1234
