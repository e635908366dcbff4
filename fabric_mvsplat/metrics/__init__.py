"""Image scores shared by the training loss, validation and the test mode: PSNR, SSIM, LPIPS and depth errors.

They live outside `model/` and `evaluation/` so that both can import them (imports run one way:
entry -> loop/evaluation -> model/data -> metrics/types).
"""

from .lpips import LPIPS, load_lpips
from .depth import compute_depth_errors, nearest_context_images
from .psnr_ssim import compute_psnr, compute_ssim
