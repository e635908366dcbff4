// The tiled rasterizer's compositing as compiled CPU code (forward and backward), for
// fabric_mvsplat/model/decoder/rasterize_cpu.py. Same rules as rasterize_torch.py (spec 7.2):
// per pixel, the tile's Gaussians in depth order; alpha = min(0.99, opacity exp(-power)) is skipped
// below 1/255 (or for a negative power); the pixel stops before the Gaussian that would take its
// transmittance below 1e-4. Binning (which Gaussians meet which tile, in depth order) is done in
// torch beforehand and arrives as `ids` grouped by tile with `starts`/`counts` per tile.
//
// packed [R, 6 + D] rows: (u, v, conic a, b, c, opacity, features[D]); pixel centres at (x + 0.5, y + 0.5).
// Tiles are independent, so they are split over threads. The backward writes one gradient row per
// (tile, Gaussian) intersection (no two threads write the same row); the caller sums them per Gaussian,
// which keeps the result independent of the thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kAlphaMax = 0.99;
constexpr double kTransmittanceMin = 1e-4;

struct Grid {
  int64_t height, width, tile, tiles_x, tiles_y, channels, row;
};

// One tile's position: image index, first pixel, pixels inside the image.
struct TileBox {
  int64_t image, x0, y0, w, h;
};

TileBox tile_box(int64_t t, const Grid& g) {
  const int64_t per_image = g.tiles_x * g.tiles_y;
  const int64_t image = t / per_image, ty = (t % per_image) / g.tiles_x, tx = t % g.tiles_x;
  const int64_t x0 = tx * g.tile, y0 = ty * g.tile;
  return {image, x0, y0, std::min(g.tile, g.width - x0), std::min(g.tile, g.height - y0)};
}

template <typename T>
struct Splat {  // one Gaussian evaluated at one pixel
  T dx, dy, power, falloff, raw, alpha;  // falloff = exp(-power), raw = opacity falloff
  bool used;
};

// Power above which alpha = opacity exp(-power) is surely below 1/255 (the exact test decides below it):
// most pairs in a footprint's corners are rejected without an exp.
template <typename T>
inline T power_cutoff(const T* r) {
  return r[5] * T(255) >= T(1) ? std::log(r[5] * T(255)) * T(1 + 1e-4) + T(1e-3) : T(-1);
}

// The tile's pixels [x_begin, x_end) x [y_begin, y_end) whose centres can pass the exact test: the box around the
// ellipse power <= cutoff (half-widths sqrt(2 cutoff Sigma_xx), sqrt(2 cutoff Sigma_yy), Sigma the inverse conic),
// widened so that rounding never drops a pixel the test would keep. Pixels outside it are skipped without
// evaluation, which changes no result; a conic that is not positive definite keeps the whole tile.
struct PixelSpan {
  int64_t x_begin, x_end, y_begin, y_end;
};

template <typename T>
inline PixelSpan pixel_span(const T* r, T cutoff, const TileBox& box) {
  PixelSpan span{0, box.w, 0, box.h};
  const double a = r[2], b = r[3], c = r[4], det = a * c - b * b;
  if (!(a > 0 && c > 0 && det > 0 && std::isfinite(det) && std::isfinite(double(r[0])) &&
        std::isfinite(double(r[1])))) {
    return span;
  }
  const double reach_x = std::sqrt(2.0 * double(cutoff) * c / det) * (1 + 1e-3) + 0.05;
  const double reach_y = std::sqrt(2.0 * double(cutoff) * a / det) * (1 + 1e-3) + 0.05;
  // Pixel x's centre is box.x0 + x + 0.5: keep |centre - u| <= reach. Bounds are clamped to [-1, w] before the
  // integer conversion, so a Gaussian far off the tile (finite but huge u) still gives an empty span.
  const double u = double(r[0]) - 0.5 - double(box.x0), v = double(r[1]) - 0.5 - double(box.y0);
  const auto first = [](double low, int64_t size) {
    return std::max<int64_t>(0, static_cast<int64_t>(std::ceil(std::clamp(low, -1.0, double(size)))));
  };
  const auto end = [](double high, int64_t size) {
    return std::min<int64_t>(size, static_cast<int64_t>(std::floor(std::clamp(high, -1.0, double(size)))) + 1);
  };
  span.x_begin = first(u - reach_x, box.w);
  span.x_end = end(u + reach_x, box.w);
  span.y_begin = first(v - reach_y, box.h);
  span.y_end = end(v + reach_y, box.h);
  return span;
}

template <typename T>
inline Splat<T> evaluate(const T* r, T px, T py, T cutoff) {
  Splat<T> s;
  s.dx = r[0] - px;
  s.dy = r[1] - py;
  s.power = T(0.5) * (r[2] * s.dx * s.dx + r[4] * s.dy * s.dy) + r[3] * s.dx * s.dy;
  if (!(s.power >= T(0) && s.power <= cutoff)) {  // also rejects a NaN power, as the exact test would
    s.used = false;
    return s;
  }
  s.falloff = std::exp(-s.power);
  s.raw = r[5] * s.falloff;
  s.alpha = std::min(s.raw, T(kAlphaMax));
  s.used = s.alpha >= T(kAlphaMin);
  return s;
}

template <typename T>
void forward_tiles(const T* packed, const int64_t* ids, const int64_t* starts, const int64_t* counts, const Grid g,
                   T* features, T* transmittance, int32_t* last, int64_t begin, int64_t end) {
  const int64_t P = g.tile * g.tile, D = g.channels;
  std::vector<T> t_run(P), acc(P * D);
  std::vector<int32_t> last_used(P);
  std::vector<char> done(P);
  for (int64_t t = begin; t < end; ++t) {
    const TileBox box = tile_box(t, g);
    std::fill(t_run.begin(), t_run.end(), T(1));
    std::fill(acc.begin(), acc.end(), T(0));
    std::fill(last_used.begin(), last_used.end(), 0);
    std::fill(done.begin(), done.end(), 0);
    int64_t remaining = box.w * box.h;
    const int64_t* list = ids + starts[t];
    for (int64_t j = 0; j < counts[t] && remaining > 0; ++j) {
      const T* r = packed + list[j] * g.row;
      const T cutoff = power_cutoff(r);
      if (cutoff < T(0)) continue;
      const PixelSpan span = pixel_span(r, cutoff, box);
      for (int64_t y = span.y_begin; y < span.y_end; ++y) {
        const T py = T(box.y0 + y) + T(0.5);
        for (int64_t x = span.x_begin; x < span.x_end; ++x) {
          const int64_t p = y * g.tile + x;
          if (done[p]) continue;
          const Splat<T> s = evaluate(r, T(box.x0 + x) + T(0.5), py, cutoff);
          if (!s.used) continue;
          const T next = t_run[p] * (T(1) - s.alpha);
          if (next < T(kTransmittanceMin)) {  // stops before this Gaussian, and for good
            done[p] = 1;
            --remaining;
            continue;
          }
          const T weight = s.alpha * t_run[p];
          for (int64_t d = 0; d < D; ++d) acc[p * D + d] += weight * r[6 + d];
          t_run[p] = next;
          last_used[p] = static_cast<int32_t>(j + 1);
        }
      }
    }
    for (int64_t y = 0; y < box.h; ++y) {
      for (int64_t x = 0; x < box.w; ++x) {
        const int64_t p = y * g.tile + x;
        const int64_t pixel = (box.image * g.height + box.y0 + y) * g.width + box.x0 + x;
        transmittance[pixel] = t_run[p];
        last[pixel] = last_used[p];
        for (int64_t d = 0; d < D; ++d) features[pixel * D + d] = acc[p * D + d];
      }
    }
  }
}

// Front to back again, with the forward's final colour C and transmittance T_N per pixel:
// dL/dalpha_k = gC . (T_k f_k - (C - C_<=k) / (1 - alpha_k)) - gT T_N / (1 - alpha_k),
// where C_<=k is the colour composited up to and including k (so C - C_<=k comes from behind k).
template <typename T>
void backward_tiles(const T* packed, const int64_t* ids, const int64_t* starts, const int64_t* counts, const Grid g,
                    const T* features, const T* transmittance, const int32_t* last, const T* grad_features,
                    const T* grad_transmittance, T* grad_rows, int64_t begin, int64_t end) {
  const int64_t P = g.tile * g.tile, D = g.channels;
  std::vector<T> t_run(P), acc(P * D);
  std::vector<int64_t> pixel_of(P);
  std::vector<T> grad_feature(D);
  for (int64_t t = begin; t < end; ++t) {
    const TileBox box = tile_box(t, g);
    std::fill(t_run.begin(), t_run.end(), T(1));
    std::fill(acc.begin(), acc.end(), T(0));
    int32_t longest = 0;
    for (int64_t y = 0; y < box.h; ++y) {
      for (int64_t x = 0; x < box.w; ++x) {
        const int64_t pixel = (box.image * g.height + box.y0 + y) * g.width + box.x0 + x;
        pixel_of[y * g.tile + x] = pixel;
        longest = std::max(longest, last[pixel]);
      }
    }
    const int64_t* list = ids + starts[t];
    T* grads = grad_rows + starts[t] * g.row;
    for (int64_t j = 0; j < longest; ++j) {
      const T* r = packed + list[j] * g.row;
      const T cutoff = power_cutoff(r);
      if (cutoff < T(0)) continue;
      // This intersection's gradient, summed over the tile's pixels in registers and stored once (the row starts
      // at zero, so the sums are the same as adding into it pixel by pixel).
      T grad_u = 0, grad_v = 0, grad_a = 0, grad_b = 0, grad_c = 0, grad_opacity = 0;
      std::fill(grad_feature.begin(), grad_feature.end(), T(0));
      T* __restrict__ grad_f = grad_feature.data();
      const PixelSpan span = pixel_span(r, cutoff, box);
      for (int64_t y = span.y_begin; y < span.y_end; ++y) {
        const T py = T(box.y0 + y) + T(0.5);
        for (int64_t x = span.x_begin; x < span.x_end; ++x) {
          const int64_t p = y * g.tile + x, pixel = pixel_of[p];
          if (j >= last[pixel]) continue;
          const Splat<T> s = evaluate(r, T(box.x0 + x) + T(0.5), py, cutoff);
          if (!s.used) continue;
          const T t_before = t_run[p], weight = s.alpha * t_before, keep = T(1) - s.alpha;
          const T* grad_colour = grad_features + pixel * D;
          const T* colour = features + pixel * D;
          T grad_alpha = -grad_transmittance[pixel] * transmittance[pixel] / keep;
          for (int64_t d = 0; d < D; ++d) {
            acc[p * D + d] += weight * r[6 + d];
            grad_alpha += grad_colour[d] * (t_before * r[6 + d] - (colour[d] - acc[p * D + d]) / keep);
            grad_f[d] += weight * grad_colour[d];
          }
          t_run[p] = t_before * keep;
          if (s.raw > T(kAlphaMax)) continue;  // clamped: alpha does not depend on opacity or position
          grad_opacity += grad_alpha * s.falloff;
          const T grad_power = -grad_alpha * s.raw;
          grad_u += grad_power * (r[2] * s.dx + r[3] * s.dy);
          grad_v += grad_power * (r[4] * s.dy + r[3] * s.dx);
          grad_a += grad_power * T(0.5) * s.dx * s.dx;
          grad_b += grad_power * s.dx * s.dy;
          grad_c += grad_power * T(0.5) * s.dy * s.dy;
        }
      }
      T* out = grads + j * g.row;
      out[0] = grad_u, out[1] = grad_v, out[2] = grad_a, out[3] = grad_b, out[4] = grad_c, out[5] = grad_opacity;
      for (int64_t d = 0; d < D; ++d) out[6 + d] = grad_f[d];
    }
  }
}

Grid make_grid(const torch::Tensor& packed, int64_t height, int64_t width, int64_t tile, int64_t tiles_x,
               int64_t tiles_y) {
  return {height, width, tile, tiles_x, tiles_y, packed.size(1) - 6, packed.size(1)};
}

void check_inputs(const torch::Tensor& packed, const torch::Tensor& ids, const torch::Tensor& starts,
                  const torch::Tensor& counts) {
  TORCH_CHECK(packed.device().is_cpu() && packed.dim() == 2 && packed.size(1) > 6 && packed.is_contiguous(),
              "packed must be a contiguous CPU tensor [R, 6 + D]");
  for (const auto* index : {&ids, &starts, &counts}) {
    TORCH_CHECK(index->scalar_type() == torch::kLong && index->is_contiguous() && index->device().is_cpu(),
                "ids/starts/counts must be contiguous int64 CPU tensors");
  }
}

}  // namespace

std::vector<torch::Tensor> composite_forward(torch::Tensor packed, torch::Tensor ids, torch::Tensor starts,
                                             torch::Tensor counts, int64_t images, int64_t height, int64_t width,
                                             int64_t tile, int64_t tiles_x, int64_t tiles_y) {
  check_inputs(packed, ids, starts, counts);
  const Grid g = make_grid(packed, height, width, tile, tiles_x, tiles_y);
  auto features = torch::zeros({images, height, width, g.channels}, packed.options());
  auto transmittance = torch::ones({images, height, width}, packed.options());
  auto last = torch::zeros({images, height, width}, packed.options().dtype(torch::kInt));
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), "composite_forward", [&] {
    const auto* p = packed.data_ptr<scalar_t>();
    auto* f = features.data_ptr<scalar_t>();
    auto* tr = transmittance.data_ptr<scalar_t>();
    auto* l = last.data_ptr<int32_t>();
    const auto *i = ids.data_ptr<int64_t>(), *s = starts.data_ptr<int64_t>(), *c = counts.data_ptr<int64_t>();
    at::parallel_for(0, counts.size(0), 1, [&](int64_t begin, int64_t end) {
      forward_tiles<scalar_t>(p, i, s, c, g, f, tr, l, begin, end);
    });
  });
  return {features, transmittance, last};
}

torch::Tensor composite_backward(torch::Tensor packed, torch::Tensor ids, torch::Tensor starts, torch::Tensor counts,
                                 torch::Tensor features, torch::Tensor transmittance, torch::Tensor last,
                                 torch::Tensor grad_features, torch::Tensor grad_transmittance, int64_t height,
                                 int64_t width, int64_t tile, int64_t tiles_x, int64_t tiles_y) {
  check_inputs(packed, ids, starts, counts);
  const Grid g = make_grid(packed, height, width, tile, tiles_x, tiles_y);
  grad_features = grad_features.contiguous();
  grad_transmittance = grad_transmittance.contiguous();
  auto grad_rows = torch::zeros({ids.size(0), g.row}, packed.options());
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), "composite_backward", [&] {
    const auto* p = packed.data_ptr<scalar_t>();
    const auto *i = ids.data_ptr<int64_t>(), *s = starts.data_ptr<int64_t>(), *c = counts.data_ptr<int64_t>();
    const auto* f = features.data_ptr<scalar_t>();
    const auto* tr = transmittance.data_ptr<scalar_t>();
    const auto* l = last.data_ptr<int32_t>();
    const auto* gf = grad_features.data_ptr<scalar_t>();
    const auto* gt = grad_transmittance.data_ptr<scalar_t>();
    auto* out = grad_rows.data_ptr<scalar_t>();
    at::parallel_for(0, counts.size(0), 1, [&](int64_t begin, int64_t end) {
      backward_tiles<scalar_t>(p, i, s, c, g, f, tr, l, gf, gt, out, begin, end);
    });
  });
  return grad_rows;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("composite_forward", &composite_forward, "tiled compositing, forward");
  m.def("composite_backward", &composite_backward, "tiled compositing, backward (one row per intersection)");
}
