// A bfloat16 dense layer for XLA:CPU with AVX512-BF16, called through JAX's FFI (cascade_jax/dense.py; built and
// registered by cascade_jax/kernels/__init__.py).
//
//   out[m, n] = bf16(act(sum_k x[m, k] w[k, n] + b[n]))      act: identity (0) or GELU with erf (1)
//
// x [..., K] and w [K, N] bfloat16, b [N] bfloat16 or float32, out [..., N] bfloat16 (K = 0: act(b)). Products and
// sums in float32 (VDPBF16PS: pairs of bf16 products added into float32 lanes; it and the conversion to bf16 treat
// subnormals as zero), the bias and the activation in float32, one rounding to bf16 at the end: XLA:CPU instead
// writes the float32 product and reads it again to add the bias, round and apply the activation
// (docs/bench_model.md). The weight is packed per call into panels of 32 columns with the k pairs interleaved (the
// instruction's operand layout); rows of x are read in place (a row of even length is a row of pairs), a partial
// last tile or odd K copied and zero-padded. A 14 x 32 float32 block stays in 28 registers for the whole sum. Tasks
// (blocks of rows) run on XLA's intra-op pool.
// Without AVX512-BF16 (the compiler's -march=native decides) the handler returns an error and
// CascadeDenseUnavailable() says why; the Python side checks that first.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define CASCADE_DENSE_AVAILABLE 1
#else
#define CASCADE_DENSE_AVAILABLE 0
#endif

namespace ffi = xla::ffi;

namespace {

#if CASCADE_DENSE_AVAILABLE

constexpr int MR = 14;         // rows of a register tile
constexpr int NR = 32;         // columns of a register tile and of a weight panel (two vectors of 16 floats)
constexpr int TILES = 8;       // register tiles of rows per task
constexpr int64_t L2_BYTES = 512 * 1024;  // packed weight kept in L2 while a task's rows pass over it

// erf(z) ~ z P(z^2) / Q(z^2) for |z| <= 3.9 (+-1 beyond: erfc(3.9) < 4e-8), a rational fit of our own (weighted
// least squares, Lawson's reweighting towards minimax; scripts in docs/design.md): 1.5e-8 in exact arithmetic,
// within 4e-7 of erf evaluated in float32. 1 / Q by the reciprocal estimate and one Newton step (relative 2^-28).
inline __m512 verf(__m512 z) {
  z = _mm512_max_ps(_mm512_min_ps(z, _mm512_set1_ps(3.9f)), _mm512_set1_ps(-3.9f));
  const __m512 t = _mm512_mul_ps(z, z);
  __m512 p = _mm512_set1_ps(2.050336840e-06f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(2.874531560e-04f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(3.836860634e-03f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(5.296685567e-02f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.919411581e-01f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.128379032e+00f));
  __m512 q = _mm512_set1_ps(3.823000461e-05f);
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.181723724e-03f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.510917552e-02f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.147581882e-01f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(5.034352012e-01f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.0f));
  __m512 r = _mm512_rcp14_ps(q);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  const __m512 erf = _mm512_mul_ps(_mm512_mul_ps(z, p), r);
  // Near the clamp float32 rounding can give |erf| a little above 1, and 1 + erf a wrong sign.
  return _mm512_max_ps(_mm512_min_ps(erf, _mm512_set1_ps(1.0f)), _mm512_set1_ps(-1.0f));
}

// GELU(x) = 0.5 x (1 + erf(x / sqrt 2)), as PyTorch computes it.
inline __m512 vgelu(__m512 x) {
  const __m512 erf = verf(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

typedef uint32_t pairs_t __attribute__((may_alias));  // two bf16 read as one 32-bit word

struct Problem {
  int64_t m, k, n;
  int64_t k2;      // k pairs, ceil(k / 2)
  int64_t panels;  // ceil(n / NR)
  int activation;
};

inline uint32_t pair(const uint16_t* row, int64_t k, int64_t kk) {  // x[kk], x[kk + 1] (0 past the end)
  uint32_t lo = row[kk], hi = kk + 1 < k ? row[kk + 1] : 0;
  return lo | (hi << 16);
}

// Weight panel p: [k2][NR] pairs (w[2j, n], w[2j + 1, n]) for its NR columns, zeros past n.
void pack_panel(const Problem& pr, const uint16_t* w, int64_t p, uint32_t* out) {
  const int64_t n0 = p * NR, cols = std::min<int64_t>(NR, pr.n - n0);
  for (int64_t j = 0; j < pr.k2; ++j) {
    const uint16_t* r0 = w + 2 * j * pr.n + n0;
    const uint16_t* r1 = 2 * j + 1 < pr.k ? r0 + pr.n : nullptr;
    uint32_t* o = out + j * NR;
    for (int64_t c = 0; c < cols; ++c) o[c] = uint32_t(r0[c]) | (r1 ? uint32_t(r1[c]) << 16 : 0u);
    for (int64_t c = cols; c < NR; ++c) o[c] = 0;
  }
}

// Rows m0.. of x as pairs, row stride k2, zeros past m (and past k when k is odd): for the last, partial row tile
// and for odd k; other tiles read x in place.
void pack_rows(const Problem& pr, const uint16_t* x, int64_t m0, uint32_t* out) {
  const int64_t rows = std::min<int64_t>(MR, pr.m - m0);
  for (int64_t i = 0; i < rows; ++i) {
    const uint16_t* row = x + (m0 + i) * pr.k;
    for (int64_t j = 0; j < pr.k2; ++j) out[i * pr.k2 + j] = pair(row, pr.k, 2 * j);
  }
  std::memset(out + rows * pr.k2, 0, (MR - rows) * pr.k2 * sizeof(uint32_t));
}

// One MR x NR tile: sum over k, then bias, activation, rounding, store of its valid rows and columns.
// a: the tile's rows as pairs, row i at a + i * pr.k2.
void tile(const Problem& pr, const pairs_t* a, const uint32_t* b, const float* bias, int64_t m0, int64_t n0,
          uint16_t* out) {
  const int64_t lda = pr.k2;
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t j = 0; j < pr.k2; ++j) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + j * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + j * NR + 16);
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(a[i * lda + j]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  const int64_t rows = std::min<int64_t>(MR, pr.m - m0), cols = std::min<int64_t>(NR, pr.n - n0);
  const __mmask16 mask0 = cols >= 16 ? 0xffff : __mmask16((1u << cols) - 1);
  const __mmask16 mask1 = cols <= 16 ? 0 : cols >= 32 ? 0xffff : __mmask16((1u << (cols - 16)) - 1);
  const __m512 bias0 = _mm512_loadu_ps(bias + n0), bias1 = _mm512_loadu_ps(bias + n0 + 16);
  for (int64_t i = 0; i < rows; ++i) {
    __m512 y0 = _mm512_add_ps(acc[i][0], bias0), y1 = _mm512_add_ps(acc[i][1], bias1);
    if (pr.activation == 1) {
      y0 = vgelu(y0);
      y1 = vgelu(y1);
    }
    uint16_t* o = out + (m0 + i) * pr.n + n0;
    _mm256_mask_storeu_epi16(o, mask0, (__m256i)_mm512_cvtneps_pbh(y0));
    if (mask1) _mm256_mask_storeu_epi16(o + 16, mask1, (__m256i)_mm512_cvtneps_pbh(y1));
  }
}

ffi::Error Dense(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, int64_t activation,
                 ffi::Result<ffi::AnyBuffer> out) {
  auto dx = x.dimensions(), dw = w.dimensions(), db = b.dimensions(), dout = out->dimensions();
  if (x.element_type() != ffi::BF16 || w.element_type() != ffi::BF16 || out->element_type() != ffi::BF16 ||
      (b.element_type() != ffi::BF16 && b.element_type() != ffi::F32))
    return ffi::Error::InvalidArgument("cascade_dense: x, w and out must be bfloat16, b bfloat16 or float32");
  if (dx.size() < 1 || dw.size() != 2 || db.size() != 1 || dout.size() != dx.size())
    return ffi::Error::InvalidArgument("cascade_dense: expected x [..., K], w [K, N], b [N], out [..., N]");
  if (activation != 0 && activation != 1)
    return ffi::Error::InvalidArgument("cascade_dense: activation must be 0 (none) or 1 (GELU)");
  Problem pr{1, dw[0], dw[1], (dw[0] + 1) / 2, (dw[1] + NR - 1) / NR, int(activation)};
  for (size_t i = 0; i + 1 < dx.size(); ++i) {
    if (dout[i] != dx[i]) return ffi::Error::InvalidArgument("cascade_dense: out's leading dimensions differ");
    pr.m *= dx[i];
  }
  if (dx[dx.size() - 1] != pr.k || db[0] != pr.n || dout[dout.size() - 1] != pr.n)
    return ffi::Error::InvalidArgument("cascade_dense: x, w, b and out shapes disagree");
  if (pr.m == 0 || pr.n == 0) return ffi::Error::Success();
  auto xx = static_cast<const uint16_t*>(x.untyped_data());
  auto ww = static_cast<const uint16_t*>(w.untyped_data());
  auto oo = static_cast<uint16_t*>(out->untyped_data());

  // Bias as float32, padded to whole panels; the weight packed panel by panel (in parallel).
  std::vector<float> bias(pr.panels * NR + 16, 0.0f);
  if (b.element_type() == ffi::F32) {
    std::memcpy(bias.data(), b.untyped_data(), pr.n * sizeof(float));
  } else {
    auto bb = static_cast<const uint16_t*>(b.untyped_data());
    for (int64_t i = 0; i < pr.n; ++i) bias[i] = cascade_kernels::bf16_to_float(bb[i]);
  }
  const int64_t panel_size = pr.k2 * NR;
  std::unique_ptr<uint32_t[]> packed(new uint32_t[pr.panels * panel_size]);
  uint32_t* pw = packed.get();
  cascade_kernels::parallel_for(pool, pr.panels, [&](int64_t p) { pack_panel(pr, ww, p, pw + p * panel_size); });

  // Tasks: blocks of TILES row tiles. Within a task, panels in chunks that fit L2; each chunk passes over the
  // task's row tiles.
  const int64_t tiles = (pr.m + MR - 1) / MR, tasks = (tiles + TILES - 1) / TILES;
  const int64_t chunk = std::max<int64_t>(1, L2_BYTES / std::max<int64_t>(1, panel_size * 4));  // k = 0: no sums
  const float* bp = bias.data();
  cascade_kernels::parallel_for(pool, tasks, [&, pw, bp](int64_t t) {
    thread_local std::vector<uint32_t> rows;
    const int64_t first = t * TILES, last = std::min(tiles, first + TILES);
    // With k even, x's rows are already pairs: only a partial last tile is copied (zero-padded); with k odd, all.
    const int64_t packed_from = std::max(first, pr.k % 2 ? 0 : pr.m % MR ? tiles - 1 : tiles);
    if (last > packed_from) {
      rows.resize((last - packed_from) * MR * pr.k2);
      for (int64_t r = packed_from; r < last; ++r) pack_rows(pr, xx, r * MR, rows.data() + (r - packed_from) * MR * pr.k2);
    }
    for (int64_t p0 = 0; p0 < pr.panels; p0 += chunk) {
      const int64_t p1 = std::min(pr.panels, p0 + chunk);
      for (int64_t r = first; r < last; ++r) {
        const pairs_t* a = r < packed_from ? reinterpret_cast<const pairs_t*>(xx + r * MR * pr.k)
                                           : rows.data() + (r - packed_from) * MR * pr.k2;
        for (int64_t p = p0; p < p1; ++p) tile(pr, a, pw + p * panel_size, bp, r * MR, p * NR, oo);
      }
    }
  });
  return ffi::Error::Success();
}

#else

ffi::Error Dense(ffi::ThreadPool, ffi::AnyBuffer, ffi::AnyBuffer, ffi::AnyBuffer, int64_t,
                 ffi::Result<ffi::AnyBuffer>) {
  return ffi::Error::Internal("cascade_dense: built without AVX512-BF16 (this CPU lacks it)");
}

#endif

}  // namespace

// nullptr where the kernel runs, else why not (cascade_jax/kernels/__init__.py reads it before registering).
extern "C" const char* CascadeDenseUnavailable() {
#if !CASCADE_DENSE_AVAILABLE
  return "this CPU lacks AVX512-BF16 (the kernel's bf16 dot product instruction)";
#elif defined(__AMX_BF16__)
  return "this CPU has AMX, whose tiles XLA's own bf16 route (YNNPACK) can use; the kernel was not measured there";
#else
  return nullptr;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeDense, Dense,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Attr<int64_t>("activation")
                                  .Ret<ffi::AnyBuffer>());
