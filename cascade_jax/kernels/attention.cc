// Fused multi-head attention for XLA:CPU, called through JAX's FFI (cascade_jax/fused_attention.py builds it).
//
//   out[n, i, h, :] = sum_j softmax_j(scale * q[n, i, h, :] . k[n, j, h, :] + mask[n, j]) v[n, j, h, :]
//
// q [N, Lq, H, D], k and v [N, Lk, H, D] (float32 or bfloat16, all the same), mask [N, Lk] float32 (additive),
// out like q. Arithmetic is float32 whatever the input type. One task per (n, h): its q, k, v slices
// are copied into small contiguous buffers (k transposed), the scores of a block of query rows stay in cache,
// their softmax is taken in place and multiplied into v before the next block. Tasks run on XLA's intra-op
// thread pool. GCC/Clang vector extensions keep the code free of one instruction set: -march=native picks it.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int W = 16;  // floats per vector
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf load(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(vf));
  return r;
}
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof(vf)); }
inline vf splat(float x) { return vf{} + x; }

// exp(x) for a vector: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial, 2^n in the exponent
// bits. Relative error below 2e-7 over the float range; exactly 0 below -87.3 (and for -inf).
inline vf vexp(vf x) {
  const vf lo = splat(-87.33654f), hi = splat(88.3762626647949f);
  vi under = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf t = x * splat(1.44269504088896341f) + shifter;
  vf n = t - shifter;
  vf r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  vi bits;
  std::memcpy(&bits, &t, sizeof(vi));
  bits = (bits - 0x4B400000 + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(vf));
  vf result = p * scale;
  return under ? splat(0.0f) : result;
}

inline float hmax(vf x) {
  float m = x[0];
  for (int i = 1; i < W; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
inline float hsum(vf x) {
  float s = 0;
  for (int i = 0; i < W; ++i) s += x[i];
  return s;
}

inline float bf16_to_float(uint16_t x) {
  uint32_t bits = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return uint16_t(bits >> 16);
}

template <typename T>
inline float to_float(T x);
template <>
inline float to_float<float>(float x) { return x; }
template <>
inline float to_float<uint16_t>(uint16_t x) { return bf16_to_float(x); }
template <typename T>
inline T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
template <>
inline uint16_t from_float<uint16_t>(float x) { return float_to_bf16(x); }

struct Shape {
  int64_t n, lq, lk, h, d;
  int64_t lq_pad, lk_pad;  // lq rounded up to the row block, lk to the vector width
};

// Per-thread scratch, reused across tasks.
struct Scratch {
  std::vector<float, std::allocator<float>> q, kt, v, s;
  void ensure(const Shape& sh, int rows) {
    q.resize(sh.lq_pad * sh.d + W);
    kt.resize(sh.d * sh.lk_pad + W);
    v.resize(sh.lk * sh.d + W);
    s.resize(rows * sh.lk_pad + W);
  }
};

// Rows of queries processed together: 8 for head width 32 (8 x 2 vector accumulators), else 4.
template <int D>
constexpr int row_block() { return D <= 32 ? 8 : 4; }

// scores[r, j] for RB rows r of (pre-scaled) q and all padded keys j, written to s (row stride lk_pad).
template <int D, int RB>
inline void scores_block(const float* q, const float* kt, float* s, int64_t lk_pad) {
  constexpr int CB = RB >= 8 ? 2 : 4;  // vectors of keys per step
  int64_t j = 0;
  for (; j + CB * W <= lk_pad; j += CB * W) {
    vf acc[RB][CB] = {};
    for (int d = 0; d < D; ++d) {
      vf kv[CB];
      for (int c = 0; c < CB; ++c) kv[c] = load(kt + d * lk_pad + j + c * W);
      for (int r = 0; r < RB; ++r) {
        vf qv = splat(q[r * D + d]);
        for (int c = 0; c < CB; ++c) acc[r][c] += qv * kv[c];
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < CB; ++c) store(s + r * lk_pad + j + c * W, acc[r][c]);
  }
  for (; j < lk_pad; j += W) {
    vf acc[RB] = {};
    for (int d = 0; d < D; ++d) {
      vf kv = load(kt + d * lk_pad + j);
      for (int r = 0; r < RB; ++r) acc[r] += splat(q[r * D + d]) * kv;
    }
    for (int r = 0; r < RB; ++r) store(s + r * lk_pad + j, acc[r]);
  }
}

// out rows r = sum_j p[r, j] v[j, :] for RB rows (head width D, a multiple of W).
template <int D, int RB>
inline void pv_block(const float* p, const float* v, int64_t lk, int64_t lk_pad, float* o) {
  constexpr int DV = D / W;
  vf acc[RB][DV] = {};
  for (int64_t j = 0; j < lk; ++j) {
    vf vv[DV];
    for (int c = 0; c < DV; ++c) vv[c] = load(v + j * D + c * W);
    for (int r = 0; r < RB; ++r) {
      vf pr = splat(p[r * lk_pad + j]);
      for (int c = 0; c < DV; ++c) acc[r][c] += pr * vv[c];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DV; ++c) store(o + r * D + c * W, acc[r][c]);
}

template <int D, typename T>
void attend_one(const Shape& sh, int64_t task, const T* q, const T* k, const T* v, const float* mask, T* out,
                float scale, Scratch& sc) {
  constexpr int RB = row_block<D>();
  const int64_t n = task / sh.h, h = task % sh.h;
  const int64_t row = sh.h * D;  // stride between tokens in [N, L, H, D]
  const T* qn = q + n * sh.lq * row + h * D;
  const T* kn = k + n * sh.lk * row + h * D;
  const T* vn = v + n * sh.lk * row + h * D;
  const float* mn = mask + n * sh.lk;
  float* Q = sc.q.data();
  float* KT = sc.kt.data();
  float* V = sc.v.data();
  float* S = sc.s.data();
  for (int64_t i = 0; i < sh.lq_pad; ++i)
    for (int d = 0; d < D; ++d) Q[i * D + d] = i < sh.lq ? scale * to_float(qn[i * row + d]) : 0.0f;
  for (int d = 0; d < D; ++d)
    for (int64_t j = sh.lk; j < sh.lk_pad; ++j) KT[d * sh.lk_pad + j] = 0.0f;
  for (int64_t j = 0; j < sh.lk; ++j)
    for (int d = 0; d < D; ++d) {
      KT[d * sh.lk_pad + j] = to_float(kn[j * row + d]);
      V[j * D + d] = to_float(vn[j * row + d]);
    }
  float O[RB * D];
  for (int64_t i0 = 0; i0 < sh.lq_pad; i0 += RB) {
    scores_block<D, RB>(Q + i0 * D, KT, S, sh.lk_pad);
    float inv[RB];
    for (int r = 0; r < RB; ++r) {
      float* s = S + r * sh.lk_pad;
      for (int64_t j = 0; j < sh.lk; ++j) s[j] += mn[j];
      for (int64_t j = sh.lk; j < sh.lk_pad; ++j) s[j] = -INFINITY;  // padding: weight exactly 0
      vf m = splat(-INFINITY);
      for (int64_t j = 0; j < sh.lk_pad; j += W) {
        vf x = load(s + j);
        m = x > m ? x : m;
      }
      const float mx = hmax(m);
      vf total = {};
      for (int64_t j = 0; j < sh.lk_pad; j += W) {
        vf e = vexp(load(s + j) - mx);
        store(s + j, e);
        total += e;
      }
      const float sum = hsum(total);
      inv[r] = 1.0f / sum;
    }
    pv_block<D, RB>(S, V, sh.lk, sh.lk_pad, O);
    for (int r = 0; r < RB && i0 + r < sh.lq; ++r) {
      T* o = out + n * sh.lq * row + (i0 + r) * row + h * D;
      for (int d = 0; d < D; ++d) o[d] = from_float<T>(O[r * D + d] * inv[r]);
    }
  }
}

template <int D, typename T>
void attend_all(ffi::ThreadPool& pool, const Shape& sh, const T* q, const T* k, const T* v, const float* mask,
                T* out) {
  const float scale = 1.0f / std::sqrt(float(D));
  const int64_t tasks = sh.n * sh.h;
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [=]() {
    thread_local Scratch sc;
    sc.ensure(sh, row_block<D>());
    for (;;) {
      const int64_t t = state->next.fetch_add(1);
      if (t >= tasks) break;
      attend_one<D, T>(sh, t, q, k, v, mask, out, scale, sc);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  // Helpers start when the pool has a free thread; the caller works too, so the call never waits on a busy pool
  // for more than the task a helper has already begun.
  const int64_t threads = pool.num_threads();
  const int64_t helpers = std::min<int64_t>(threads > 0 ? threads - 1 : 0, tasks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
}

template <typename T>
ffi::Error dispatch(ffi::ThreadPool& pool, const Shape& sh, const void* q, const void* k, const void* v,
                    const float* mask, void* out) {
  auto qq = static_cast<const T*>(q), kk = static_cast<const T*>(k), vv = static_cast<const T*>(v);
  auto oo = static_cast<T*>(out);
  switch (sh.d) {
    case 16: attend_all<16, T>(pool, sh, qq, kk, vv, mask, oo); break;
    case 32: attend_all<32, T>(pool, sh, qq, kk, vv, mask, oo); break;
    case 48: attend_all<48, T>(pool, sh, qq, kk, vv, mask, oo); break;
    case 64: attend_all<64, T>(pool, sh, qq, kk, vv, mask, oo); break;
    case 128: attend_all<128, T>(pool, sh, qq, kk, vv, mask, oo); break;
    default:
      return ffi::Error::InvalidArgument("cascade_attention: head width must be 16, 32, 48, 64 or 128");
  }
  return ffi::Error::Success();
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::Buffer<ffi::F32> mask, ffi::Result<ffi::AnyBuffer> out) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions(), dm = mask.dimensions();
  const size_t rank = dq.size();
  if (rank < 3 || dk.size() != rank || dv.size() != rank || dm.size() != rank - 2)
    return ffi::Error::InvalidArgument("cascade_attention: expected q, k, v [..., L, H, D] and mask [..., Lk]");
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type() ||
      out->element_type() != q.element_type())
    return ffi::Error::InvalidArgument("cascade_attention: q, k, v and the output must share one dtype");
  Shape sh{1, dq[rank - 3], dk[rank - 3], dq[rank - 2], dq[rank - 1], 0, 0};
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (dk[i] != dq[i] || dv[i] != dq[i] || dm[i] != dq[i])
      return ffi::Error::InvalidArgument("cascade_attention: leading dimensions differ");
    sh.n *= dq[i];
  }
  if (dk[rank - 2] != sh.h || dk[rank - 1] != sh.d || dv[rank - 3] != sh.lk || dv[rank - 2] != sh.h ||
      dv[rank - 1] != sh.d || dm[rank - 3] != sh.lk)
    return ffi::Error::InvalidArgument("cascade_attention: q, k, v and mask shapes disagree");
  const int64_t rb = sh.d <= 32 ? 8 : 4;
  sh.lq_pad = (sh.lq + rb - 1) / rb * rb;
  sh.lk_pad = (sh.lk + W - 1) / W * W;
  if (sh.n == 0 || sh.lq == 0 || sh.h == 0) return ffi::Error::Success();
  if (sh.lk == 0) return ffi::Error::InvalidArgument("cascade_attention: no keys");
  switch (q.element_type()) {
    case ffi::F32:
      return dispatch<float>(pool, sh, q.untyped_data(), k.untyped_data(), v.untyped_data(), mask.typed_data(),
                             out->untyped_data());
    case ffi::BF16:
      return dispatch<uint16_t>(pool, sh, q.untyped_data(), k.untyped_data(), v.untyped_data(), mask.typed_data(),
                                out->untyped_data());
    default:
      return ffi::Error::InvalidArgument("cascade_attention: dtype must be float32 or bfloat16");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>());
