"""Training-loader throughput: scenes/s at 256x256 from 360x640 JPEG chunks (RealEstate10K's frame size).

The chunks are written in a fixture with our chunk writer: smooth random images, 48 frames per scene,
RE10K's training sampler at step 0 (context gap 25, 2 context + 4 target views, so 6 JPEG decodes and
6 LANCZOS resizes + crops per scene), flip augmentation on. Workers: 0 (in-process) and 2.
`frame_decode_and_crop` times one frame's decode and crop shim alone, the loader's unit of work.
"""

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from fabric_mvsplat.data import StepTracker, cameras_to_vector, encode_image, TrainStream, write_chunks
from fabric_mvsplat.data.chunks import decode_frame
from fabric_mvsplat.data.config import MAX_IMAGE_PIXELS, DataLoaderStageCfg, DatasetCfg, ViewSamplerBoundedCfg
from fabric_mvsplat.data.shims import rescale_and_crop

HEIGHT, WIDTH, FRAMES, SCENES, DISTINCT_FRAMES = 360, 640, 48, 8, 6
BATCH = 4


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """Bilinearly upsampled 6x10 random colours plus mild noise: compresses like a real photo."""
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 10))).float()
    image = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    image = image[0].permute(1, 2, 0).numpy() + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("re10k_like")
    rng = np.random.default_rng(0)
    k = torch.tensor([[0.9, 0, 0.5], [0, 1.6, 0.5], [0, 0, 1]]).repeat(FRAMES, 1, 1)
    w2c = torch.eye(4).repeat(FRAMES, 1, 1)
    w2c[:, 0, 3] = -torch.arange(FRAMES) * 0.02
    scenes = []
    for s in range(SCENES):
        distinct = [encode_image(smooth_image(rng), "jpeg", quality=95) for _ in range(DISTINCT_FRAMES)]
        scenes.append({"url": "", "timestamps": torch.arange(FRAMES), "cameras": cameras_to_vector(w2c, k),
                       "images": [distinct[i % DISTINCT_FRAMES] for i in range(FRAMES)], "key": f"bench{s}"})
    write_chunks(scenes, root / "train", target_bytes=sum(x.numel() for x in scenes[0]["images"]) * 3)
    return root


def dataset_cfg(root: Path) -> DatasetCfg:
    sampler = ViewSamplerBoundedCfg(num_target_views=4, min_distance_between_context_views=45,
                                    max_distance_between_context_views=192, warm_up_steps=150_000,
                                    initial_min_distance_between_context_views=25,
                                    initial_max_distance_between_context_views=45)
    return DatasetCfg(view_sampler=sampler, roots=[str(root)], image_shape=[256, 256], near=1.0, far=100.0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_scenes_per_second(benchmark, jpeg_root, num_workers):
    # benchmark.pedantic, not the `bench` fixture: its 2 ms RSS-sampling thread competes for the GIL
    # with the in-process loader and halved the num_workers=0 figure.
    loader = DataLoaderStageCfg(num_workers=num_workers, batch_size=BATCH)
    batches = iter(TrainStream(dataset_cfg(jpeg_root), loader, StepTracker(), 0, 1, seed=0))
    next(batches)  # worker start-up is not throughput
    count = 1 if benchmark.disabled else 8
    out: list[list[dict]] = []
    benchmark.pedantic(lambda: out.append(list(islice(batches, count))), rounds=3, iterations=1,
                       warmup_rounds=0 if benchmark.disabled else 1)
    benchmark.extra_info.update(device="cpu", precision="32-true", items=count * BATCH, unit="scenes",
                                num_workers=num_workers, image=256, source=f"{HEIGHT}x{WIDTH} jpeg")
    assert out[-1][-1]["context"]["image"].shape == (BATCH, 2, 3, 256, 256)
    assert out[-1][-1]["target"]["image"].shape == (BATCH, 4, 3, 256, 256)
    batches.close()


def test_frame_decode_and_crop(bench, jpeg_root):
    data = torch.load(next((jpeg_root / "train").glob("*.torch")), weights_only=True)[0]["images"][0]

    def decode_and_crop() -> np.ndarray:
        return rescale_and_crop(decode_frame(data, MAX_IMAGE_PIXELS), (256, 256))

    out = bench(decode_and_crop, device="cpu", rounds=10, items=1, unit="frames")
    assert out.shape == (256, 256, 3)
