"""Image scores shared by the training loss, validation and the test mode: PSNR, SSIM, LPIPS and depth errors.

They live outside `model/` and `evaluation/` so that both can import them (imports run one way:
entry -> loop/evaluation -> model/data -> metrics/types).
"""

from .lpips import LPIPS, load_lpips
from .depth import (compute_depth_errors, depth_error_sums_by_true_depth, depth_errors_by_true_depth,
                    nearest_context_images, true_depth_edges)
from .psnr_ssim import compute_psnr, compute_ssim
