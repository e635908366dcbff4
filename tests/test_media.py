import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from fabric_mvsplat.evaluation.media import save_image, save_video, to_uint8


def test_save_image_png_round_trip(tmp_path):
    torch.manual_seed(0)
    image = torch.rand(3, 5, 7)
    image[0, 0, 0], image[1, 0, 0] = 1.4, -0.3  # out of range values are clipped
    path = tmp_path / "scene" / "color" / "000003.png"
    save_image(image, path)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG" and loaded.size == (7, 5) and loaded.mode == "RGB"
        pixels = np.asarray(loaded)
    expected = (image.clip(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels, expected)
    assert pixels[0, 0, 0] == 255 and pixels[0, 0, 1] == 0


def _read_video(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return meta, np.stack(frames)


@pytest.mark.parametrize("height, width", [(32, 48), (33, 47)])
def test_save_video_h264_mp4(tmp_path, height, width):
    # smooth moving gradient: compresses well, so decoded frames stay close to the input
    t = torch.linspace(0, 1, 12)[:, None, None, None]
    y = torch.linspace(0, 1, height)[None, None, :, None]
    x = torch.linspace(0, 1, width)[None, None, None, :]
    shape = (12, 1, height, width)
    frames = torch.cat([(x + t).frac().expand(shape), y.expand(shape), torch.full(shape, 0.5)], dim=1)
    path = tmp_path / "video" / "scene_frame_0_10.mp4"
    save_video(frames, path, fps=10)

    meta, decoded = _read_video(path)
    assert meta["codec"].startswith("h264")
    assert "yuv420p" in meta["pix_fmt"]
    assert meta["fps"] == pytest.approx(10)
    assert decoded.shape == (12, height + height % 2, width + width % 2, 3)
    original = to_uint8(frames).astype(np.float64)
    error = np.abs(decoded[:, :height, :width].astype(np.float64) - original)
    assert error.mean() < 8  # lossy (crf 21, chroma subsampling) but recognisably the same frames


def test_save_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        save_video(torch.rand(3, 8, 8), tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="float RGB"):
        save_video(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), tmp_path / "v.mp4")
