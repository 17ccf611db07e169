// A hand-written CPU attention kernel for PTv3's head dim 16, to measure how far torch's SDPA is from
// what one core can do at that shape (benchmarks/attention_kernel.py). Not used by the project.
//
// Per (patch, head): K transposed and V copied once; then per block of R queries the scores are R x 16
// register tiles (one FMA per score), a Cephes-style exp on 16 lanes, and the weighted sum of V rows
// (one FMA per score, two accumulators per query). GCC/Clang vector extensions, no intrinsics.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));
constexpr int D = 16;  // head dim
constexpr int R = 8;   // queries per block

static inline v16 splat(float x) { return x - (v16){}; }

static inline v16 exp16(v16 x) {  // Cephes expf: 2^n * p(r), |r| <= ln2 / 2
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  v16 n = x * splat(1.44269504088896341f) + splat(12582912.f);  // round to nearest via the magic constant
  n = n - splat(12582912.f);
  v16 r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  v16 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.f);
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  return p * (v16)bits;
}

static inline float lane_max(v16 x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, x[i]);
  return m;
}

static inline float lane_sum(v16 x) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// q, k, v: (P, H, L, 16) float32 views (last dim contiguous), L a multiple of 16 -> (P, L, H, 16).
torch::Tensor attend16(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat && q.size(3) == D && q.stride(3) == 1, "q: (P, H, L, 16) float32");
  const int64_t P = q.size(0), H = q.size(1), L = q.size(2), blocks = L / 16;
  TORCH_CHECK(L % 16 == 0, "L must be a multiple of 16");
  auto out = torch::empty({P, L, H, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const auto qs = q.strides(), ks = k.strides(), vs = v.strides();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, P * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<v16> kt(D * blocks), vv(L), s(R * blocks);
    for (int64_t ph = begin; ph < end; ++ph) {
      const int64_t p = ph / H, h = ph % H;
      const float* kb = kp + p * ks[0] + h * ks[1];
      const float* vb = vp + p * vs[0] + h * vs[1];
      const float* qb = qp + p * qs[0] + h * qs[1];
      for (int64_t j = 0; j < L; ++j)
        for (int d = 0; d < D; ++d) {
          kt[d * blocks + j / 16][j % 16] = kb[j * ks[2] + d];
          vv[j][d] = vb[j * vs[2] + d];
        }
      for (int64_t i0 = 0; i0 < L; i0 += R) {
        const int rows = static_cast<int>(std::min<int64_t>(R, L - i0));
        float qr[R][D];
        for (int r = 0; r < R; ++r)
          for (int d = 0; d < D; ++d) qr[r][d] = r < rows ? qb[(i0 + r) * qs[2] + d] * sc : 0.f;
        v16 top[R];
        for (int r = 0; r < R; ++r) top[r] = splat(-INFINITY);
        for (int64_t b = 0; b < blocks; ++b) {
          v16 a[R] = {};
#pragma GCC unroll 16
          for (int d = 0; d < D; ++d) {
            const v16 kd = kt[d * blocks + b];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) a[r] += qr[r][d] * kd;
          }
          for (int r = 0; r < R; ++r) {
            s[r * blocks + b] = a[r];
            top[r] = a[r] > top[r] ? a[r] : top[r];
          }
        }
        v16 total[R];
        for (int r = 0; r < R; ++r) {
          const v16 m = splat(lane_max(top[r]));
          v16 t = {};
          for (int64_t b = 0; b < blocks; ++b) {
            const v16 e = exp16(s[r * blocks + b] - m);
            s[r * blocks + b] = e;
            t += e;
          }
          total[r] = t;
        }
        v16 acc[2][R] = {};
        const float* weights = reinterpret_cast<const float*>(s.data());
        for (int64_t j = 0; j < L; j += 2) {
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            acc[0][r] += weights[r * L + j] * vv[j];
            acc[1][r] += weights[r * L + j + 1] * vv[j + 1];
          }
        }
        for (int r = 0; r < rows; ++r) {
          const v16 result = (acc[0][r] + acc[1][r]) / splat(lane_sum(total[r]));
          float* o = op + ((p * L + i0 + r) * H + h) * D;
          for (int d = 0; d < D; ++d) o[d] = result[d];
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("attend16", &attend16); }
