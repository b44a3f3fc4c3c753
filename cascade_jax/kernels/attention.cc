// Fused multi-head attention for XLA:CPU, called through JAX's FFI (cascade_jax/attention.py; built and registered
// by cascade_jax/kernels/__init__.py).
//
//   out[n, i, h, :] = sum_j softmax_j(scale * q[n, i, h, :] . k[n, j, h, :] + bias[n, j]) keep[n, h, i, j] v[n, j, h, :]
//
// q [N, Lq, H, D], k and v [N, Lk, H, D] (float32 or bfloat16, all the same), bias [N, Lk] float32 (additive), keep
// [N, H, Lq, Lk] float32 dropout multipliers (none in CascadeAttention), out like q; scale = 1 / sqrt(D).
// CascadeAttentionBackward gives dq, dk, dv and the bias gradient per head [N, H, Lk]. Arithmetic is float32
// whatever the input type. One task per (n, h): its slices are copied into small contiguous buffers (k transposed),
// the scores of a block of query rows stay in cache, their softmax is taken in place and multiplied into v (or, in
// the backward, into the gradients) before the next block. Tasks run on XLA's intra-op thread pool. GCC/Clang
// vector extensions keep the code free of one instruction set: -march=native picks it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using cascade_kernels::bf16_to_float;
using cascade_kernels::float_to_bf16;
using cascade_kernels::parallel_for;

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

// exp(x) for a vector: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial (truncation
// below 1e-7 relative), 2^n in the exponent bits; exactly 0 below -87.3 (and for -inf).
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

// Element types: float, or bfloat16 held as uint16_t.
inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) { return bf16_to_float(x); }
template <typename T>
inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return float_to_bf16(x);
}

struct Shape {
  int64_t n, lq, lk, h, d;
  int64_t lq_pad, lk_pad;  // lq rounded up to the row block, lk to the vector width
};

// Rows of queries processed together: 8 for head widths up to 32 (8 x 2 vector accumulators), else 4.
template <int D>
constexpr int row_block() { return D <= 32 ? 8 : 4; }

// Per-thread scratch, reused across tasks and calls.
struct Scratch {
  std::vector<float> q, kt, v, s;                // forward; q pre-scaled [lq_pad, D], kt [D, lk_pad], v [lk, D]
  std::vector<float> k, vt, g, ds, dk, dv, delta;  // backward
  void ensure(const Shape& sh, int rows, bool backward) {
    q.resize(sh.lq_pad * sh.d + W);
    kt.resize(sh.d * sh.lk_pad + W);
    v.resize(sh.lk * sh.d + W);
    s.resize(rows * sh.lk_pad + W);
    if (!backward) return;
    k.resize(sh.lk * sh.d + W);
    vt.resize(sh.d * sh.lk_pad + W);
    g.resize(sh.lq_pad * sh.d + W);
    ds.resize(rows * sh.lk_pad + W);
    dk.resize(sh.lk * sh.d + W);
    dv.resize(sh.lk * sh.d + W);
    delta.resize(sh.lq_pad + W);
  }
};

// out[r, j] = sum_d a[r, d] bt[d, j] for RB rows r of a [RB, D] and all padded columns j of bt [D, lk_pad]
// (row stride lk_pad): the scores (a = scaled q, bt = k transposed) and g v^T (a = g, bt = v transposed).
template <int D, int RB>
inline void rows_times_cols(const float* a, const float* bt, float* out, int64_t lk_pad) {
  constexpr int CB = RB >= 8 ? 2 : 4;  // vectors of columns per step
  int64_t j = 0;
  for (; j + CB * W <= lk_pad; j += CB * W) {
    vf acc[RB][CB] = {};
    for (int d = 0; d < D; ++d) {
      vf kv[CB];
      for (int c = 0; c < CB; ++c) kv[c] = load(bt + d * lk_pad + j + c * W);
      for (int r = 0; r < RB; ++r) {
        vf qv = splat(a[r * D + d]);
        for (int c = 0; c < CB; ++c) acc[r][c] += qv * kv[c];
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < CB; ++c) store(out + r * lk_pad + j + c * W, acc[r][c]);
  }
  for (; j < lk_pad; j += W) {
    vf acc[RB] = {};
    for (int d = 0; d < D; ++d) {
      vf kv = load(bt + d * lk_pad + j);
      for (int r = 0; r < RB; ++r) acc[r] += splat(a[r * D + d]) * kv;
    }
    for (int r = 0; r < RB; ++r) store(out + r * lk_pad + j, acc[r]);
  }
}

// o[r, :] = sum_j p[r, j] x[j, :] for RB rows (x [lk, D], D a multiple of W): probabilities times v, dS times k.
template <int D, int RB>
inline void rows_times_matrix(const float* p, const float* x, int64_t lk, int64_t lk_pad, float* o) {
  constexpr int DV = D / W;
  vf acc[RB][DV] = {};
  for (int64_t j = 0; j < lk; ++j) {
    vf xv[DV];
    for (int c = 0; c < DV; ++c) xv[c] = load(x + j * D + c * W);
    for (int r = 0; r < RB; ++r) {
      vf pr = splat(p[r * lk_pad + j]);
      for (int c = 0; c < DV; ++c) acc[r][c] += pr * xv[c];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DV; ++c) store(o + r * D + c * W, acc[r][c]);
}

// y[j, :] += sum_r p[r, j] x[r, :] for all keys j (p [RB, lk_pad], x [RB, D], y [lk, D]): dV and dK.
template <int D, int RB>
inline void cols_times_rows_add(const float* p, const float* x, int64_t lk, int64_t lk_pad, float* y) {
  constexpr int DV = D / W;
  vf xv[RB][DV];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DV; ++c) xv[r][c] = load(x + r * D + c * W);
  for (int64_t j = 0; j < lk; ++j) {
    vf acc[DV];
    for (int c = 0; c < DV; ++c) acc[c] = load(y + j * D + c * W);
    for (int r = 0; r < RB; ++r) {
      vf pr = splat(p[r * lk_pad + j]);
      for (int c = 0; c < DV; ++c) acc[c] += pr * xv[r][c];
    }
    for (int c = 0; c < DV; ++c) store(y + j * D + c * W, acc[c]);
  }
}

// Row r of s (RB rows, stride lk_pad) becomes exp(s + bias - max) over the real keys, 0 on the padding; inv[r] is
// 1 / its sum, so that softmax = s * inv.
template <int RB>
inline void softmax_rows(float* s, const float* bias, int64_t lk, int64_t lk_pad, float* inv) {
  for (int r = 0; r < RB; ++r) {
    float* row = s + r * lk_pad;
    for (int64_t j = 0; j < lk; ++j) row[j] += bias[j];
    for (int64_t j = lk; j < lk_pad; ++j) row[j] = -INFINITY;  // padding: weight exactly 0
    vf m = splat(-INFINITY);
    for (int64_t j = 0; j < lk_pad; j += W) {
      vf x = load(row + j);
      m = x > m ? x : m;
    }
    const float mx = hmax(m);
    vf total = {};
    for (int64_t j = 0; j < lk_pad; j += W) {
      vf e = vexp(load(row + j) - mx);
      store(row + j, e);
      total += e;
    }
    inv[r] = 1.0f / hsum(total);
  }
}

// The (n, h) slices of [N, L, H, D] tensors as contiguous float rows: q scaled, k transposed (kt), v as is.
template <int D, typename T>
inline void gather_rows(const T* x, int64_t rows, int64_t rows_pad, int64_t stride, float scale, float* out) {
  for (int64_t i = 0; i < rows_pad; ++i)
    for (int d = 0; d < D; ++d) out[i * D + d] = i < rows ? scale * to_float(x[i * stride + d]) : 0.0f;
}
template <int D, typename T>
inline void gather_transposed(const T* x, int64_t rows, int64_t rows_pad, int64_t stride, float* out) {
  for (int d = 0; d < D; ++d)
    for (int64_t j = rows; j < rows_pad; ++j) out[d * rows_pad + j] = 0.0f;
  for (int64_t j = 0; j < rows; ++j)
    for (int d = 0; d < D; ++d) out[d * rows_pad + j] = to_float(x[j * stride + d]);
}

// Forward of one (n, h): out = softmax(q k^T scale + bias) [* keep] v; keep (dropout, already divided by the keep
// probability) is [lq, lk] or null.
template <int D, typename T>
void forward_one(const Shape& sh, int64_t task, const T* q, const T* k, const T* v, const float* bias,
                 const float* keep, T* out, float scale, Scratch& sc) {
  constexpr int RB = row_block<D>();
  const int64_t n = task / sh.h, h = task % sh.h, row = sh.h * D;  // row: stride between tokens
  const float* bn = bias + n * sh.lk;
  float *Q = sc.q.data(), *KT = sc.kt.data(), *V = sc.v.data(), *S = sc.s.data();
  gather_rows<D>(q + n * sh.lq * row + h * D, sh.lq, sh.lq_pad, row, scale, Q);
  gather_transposed<D>(k + n * sh.lk * row + h * D, sh.lk, sh.lk_pad, row, KT);
  gather_rows<D>(v + n * sh.lk * row + h * D, sh.lk, sh.lk, row, 1.0f, V);
  float O[RB * D], inv[RB];
  for (int64_t i0 = 0; i0 < sh.lq_pad; i0 += RB) {
    rows_times_cols<D, RB>(Q + i0 * D, KT, S, sh.lk_pad);
    softmax_rows<RB>(S, bn, sh.lk, sh.lk_pad, inv);
    if (keep != nullptr)
      for (int r = 0; r < RB && i0 + r < sh.lq; ++r) {
        const float* kr = keep + (task * sh.lq + i0 + r) * sh.lk;
        for (int64_t j = 0; j < sh.lk; ++j) S[r * sh.lk_pad + j] *= kr[j];
      }
    rows_times_matrix<D, RB>(S, V, sh.lk, sh.lk_pad, O);
    for (int r = 0; r < RB && i0 + r < sh.lq; ++r) {
      T* o = out + n * sh.lq * row + (i0 + r) * row + h * D;
      for (int d = 0; d < D; ++d) o[d] = from_float<T>(O[r * D + d] * inv[r]);
    }
  }
}

// Backward of one (n, h), probabilities recomputed: P = softmax(S), Pd = P * keep, dV = Pd^T g, dPd = g v^T,
// dS = P * (dPd * keep - delta) with delta = rowsum(g * out), dQ = dS k scale, dK = dS^T q scale, dbias = colsum(dS).
template <int D, typename T>
void backward_one(const Shape& sh, int64_t task, const T* q, const T* k, const T* v, const float* bias,
                  const float* keep, const T* out, const T* g, T* dq, T* dk, T* dv, float* dbias, float scale,
                  Scratch& sc) {
  constexpr int RB = row_block<D>();
  const int64_t n = task / sh.h, h = task % sh.h, row = sh.h * D;
  const int64_t qoff = n * sh.lq * row + h * D, koff = n * sh.lk * row + h * D;
  const float* bn = bias + n * sh.lk;
  float *Q = sc.q.data(), *KT = sc.kt.data(), *K = sc.k.data(), *VT = sc.vt.data(), *G = sc.g.data();
  float *P = sc.s.data(), *DS = sc.ds.data(), *DK = sc.dk.data(), *DV = sc.dv.data(), *delta = sc.delta.data();
  float* db = dbias + task * sh.lk;
  gather_rows<D>(q + qoff, sh.lq, sh.lq_pad, row, scale, Q);
  gather_transposed<D>(k + koff, sh.lk, sh.lk_pad, row, KT);
  gather_rows<D>(k + koff, sh.lk, sh.lk, row, scale, K);
  gather_transposed<D>(v + koff, sh.lk, sh.lk_pad, row, VT);
  gather_rows<D>(g + qoff, sh.lq, sh.lq_pad, row, 1.0f, G);
  for (int64_t i = 0; i < sh.lq_pad; ++i) {
    float acc = 0;
    if (i < sh.lq)
      for (int d = 0; d < D; ++d) acc += G[i * D + d] * to_float(out[qoff + i * row + d]);
    delta[i] = acc;
  }
  std::fill(DK, DK + sh.lk * D, 0.0f);
  std::fill(DV, DV + sh.lk * D, 0.0f);
  std::fill(db, db + sh.lk, 0.0f);
  float dQ[RB * D], inv[RB];
  for (int64_t i0 = 0; i0 < sh.lq_pad; i0 += RB) {
    const int rows = int(std::min<int64_t>(RB, sh.lq - i0));  // real rows in this block
    rows_times_cols<D, RB>(Q + i0 * D, KT, P, sh.lk_pad);
    softmax_rows<RB>(P, bn, sh.lk, sh.lk_pad, inv);
    rows_times_cols<D, RB>(G + i0 * D, VT, DS, sh.lk_pad);  // dPd
    for (int r = 0; r < RB; ++r) {
      float* p = P + r * sh.lk_pad;
      float* ds = DS + r * sh.lk_pad;
      if (r >= rows) {  // padding rows: no contribution
        std::fill(p, p + sh.lk_pad, 0.0f);
        std::fill(ds, ds + sh.lk_pad, 0.0f);
        continue;
      }
      const float* kr = keep != nullptr ? keep + (task * sh.lq + i0 + r) * sh.lk : nullptr;
      for (int64_t j = 0; j < sh.lk; ++j) {
        const float pj = p[j] * inv[r];
        const float dp = kr != nullptr ? ds[j] * kr[j] : ds[j];
        ds[j] = pj * (dp - delta[i0 + r]);
        p[j] = kr != nullptr ? pj * kr[j] : pj;  // Pd, for dV
        db[j] += ds[j];
      }
    }
    cols_times_rows_add<D, RB>(P, G + i0 * D, sh.lk, sh.lk_pad, DV);
    cols_times_rows_add<D, RB>(DS, Q + i0 * D, sh.lk, sh.lk_pad, DK);  // Q is scaled: dK = dS^T q scale
    rows_times_matrix<D, RB>(DS, K, sh.lk, sh.lk_pad, dQ);             // K is scaled: dQ = dS k scale
    for (int r = 0; r < rows; ++r) {
      T* o = dq + qoff + (i0 + r) * row;
      for (int d = 0; d < D; ++d) o[d] = from_float<T>(dQ[r * D + d]);
    }
  }
  for (int64_t j = 0; j < sh.lk; ++j)
    for (int d = 0; d < D; ++d) {
      dk[koff + j * row + d] = from_float<T>(DK[j * D + d]);
      dv[koff + j * row + d] = from_float<T>(DV[j * D + d]);
    }
}

// Runs body(task, scratch) for every task on XLA's intra-op pool (parallel_for), with this thread's scratch.
template <typename Body>
void run_tasks(ffi::ThreadPool& pool, int64_t tasks, const Shape& sh, int rows, bool backward, Body body) {
  parallel_for(pool, tasks, [=](int64_t t) {
    thread_local Scratch sc;
    sc.ensure(sh, rows, backward);
    body(t, sc);
  });
}

// Calls f(std::integral_constant<int, D>) for the supported head widths.
template <typename F>
ffi::Error with_head_dim(int64_t d, F f) {
  switch (d) {
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 48: f(std::integral_constant<int, 48>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    case 128: f(std::integral_constant<int, 128>()); break;
    default:
      return ffi::Error::InvalidArgument("cascade_attention: head width must be 16, 32, 48, 64 or 128");
  }
  return ffi::Error::Success();
}

// Checks q, k, v [..., L, H, D], bias [..., Lk], keep [..., H, Lq, Lk] or empty; fills sh.
ffi::Error parse(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                 const ffi::Buffer<ffi::F32>& bias, const ffi::Buffer<ffi::F32>* keep, Shape& sh) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions(), dm = bias.dimensions();
  const size_t rank = dq.size();
  if (rank < 3 || dk.size() != rank || dv.size() != rank || dm.size() != rank - 2)
    return ffi::Error::InvalidArgument("cascade_attention: expected q, k, v [..., L, H, D] and bias [..., Lk]");
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return ffi::Error::InvalidArgument("cascade_attention: q, k and v must share one dtype");
  if (q.element_type() != ffi::F32 && q.element_type() != ffi::BF16)
    return ffi::Error::InvalidArgument("cascade_attention: dtype must be float32 or bfloat16");
  sh = Shape{1, dq[rank - 3], dk[rank - 3], dq[rank - 2], dq[rank - 1], 0, 0};
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (dk[i] != dq[i] || dv[i] != dq[i] || dm[i] != dq[i])
      return ffi::Error::InvalidArgument("cascade_attention: leading dimensions differ");
    sh.n *= dq[i];
  }
  if (dk[rank - 2] != sh.h || dk[rank - 1] != sh.d || dv[rank - 3] != sh.lk || dv[rank - 2] != sh.h ||
      dv[rank - 1] != sh.d || dm[rank - 3] != sh.lk)
    return ffi::Error::InvalidArgument("cascade_attention: q, k, v and bias shapes disagree");
  if (keep != nullptr && keep->element_count() != 0 &&
      int64_t(keep->element_count()) != sh.n * sh.h * sh.lq * sh.lk)
    return ffi::Error::InvalidArgument("cascade_attention: keep must be [..., H, Lq, Lk] or empty");
  const int64_t rb = sh.d <= 32 ? 8 : 4;
  sh.lq_pad = (sh.lq + rb - 1) / rb * rb;
  sh.lk_pad = (sh.lk + W - 1) / W * W;
  if (sh.lk == 0 && sh.n * sh.lq * sh.h > 0) return ffi::Error::InvalidArgument("cascade_attention: no keys");
  return ffi::Error::Success();
}

template <typename T>
ffi::Error forward(ffi::ThreadPool& pool, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                   const ffi::AnyBuffer& v, const ffi::Buffer<ffi::F32>& bias, const float* keep,
                   ffi::AnyBuffer& out, const Shape& sh) {
  auto qq = static_cast<const T*>(q.untyped_data()), kk = static_cast<const T*>(k.untyped_data());
  auto vv = static_cast<const T*>(v.untyped_data());
  auto oo = static_cast<T*>(out.untyped_data());
  const float* b = bias.typed_data();
  return with_head_dim(sh.d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    const float scale = 1.0f / std::sqrt(float(D));
    run_tasks(pool, sh.n * sh.h, sh, row_block<D>(), false, [=](int64_t t, Scratch& sc) {
      forward_one<D, T>(sh, t, qq, kk, vv, b, keep, oo, scale, sc);
    });
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Buffer<ffi::F32> bias, const ffi::Buffer<ffi::F32>* keep, ffi::AnyBuffer out) {
  Shape sh;
  if (auto e = parse(q, k, v, bias, keep, sh); e.failure()) return e;
  if (out.element_type() != q.element_type() || out.element_count() != q.element_count())
    return ffi::Error::InvalidArgument("cascade_attention: the output must be like q");
  if (sh.n * sh.lq * sh.h == 0) return ffi::Error::Success();
  const float* kp = keep != nullptr && keep->element_count() != 0 ? keep->typed_data() : nullptr;
  return q.element_type() == ffi::F32 ? forward<float>(pool, q, k, v, bias, kp, out, sh)
                                      : forward<uint16_t>(pool, q, k, v, bias, kp, out, sh);
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::Buffer<ffi::F32> bias, ffi::Result<ffi::AnyBuffer> out) {
  return Forward(pool, q, k, v, bias, nullptr, *out);
}

ffi::Error AttentionDropout(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                            ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> keep,
                            ffi::Result<ffi::AnyBuffer> out) {
  return Forward(pool, q, k, v, bias, &keep, *out);
}

template <typename T>
ffi::Error backward(ffi::ThreadPool& pool, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                    const ffi::AnyBuffer& v, const ffi::Buffer<ffi::F32>& bias, const float* keep,
                    const ffi::AnyBuffer& out, const ffi::AnyBuffer& g, ffi::AnyBuffer& dq, ffi::AnyBuffer& dk,
                    ffi::AnyBuffer& dv, float* dbias, const Shape& sh) {
  auto in = [](const ffi::AnyBuffer& x) { return static_cast<const T*>(x.untyped_data()); };
  auto res = [](ffi::AnyBuffer& x) { return static_cast<T*>(x.untyped_data()); };
  const T *qq = in(q), *kk = in(k), *vv = in(v), *oo = in(out), *gg = in(g);
  T *dqq = res(dq), *dkk = res(dk), *dvv = res(dv);
  const float* b = bias.typed_data();
  return with_head_dim(sh.d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    const float scale = 1.0f / std::sqrt(float(D));
    run_tasks(pool, sh.n * sh.h, sh, row_block<D>(), true, [=](int64_t t, Scratch& sc) {
      backward_one<D, T>(sh, t, qq, kk, vv, b, keep, oo, gg, dqq, dkk, dvv, dbias, scale, sc);
    });
  });
}

// Gradients of q, k, v and of the bias per head ([..., H, Lk]; the caller sums over heads); keep may be empty.
ffi::Error AttentionBackward(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> keep, ffi::AnyBuffer out,
                             ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                             ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::F32>> dbias) {
  Shape sh;
  if (auto e = parse(q, k, v, bias, &keep, sh); e.failure()) return e;
  for (auto* x : {&out, &g})
    if (x->element_type() != q.element_type() || x->element_count() != q.element_count())
      return ffi::Error::InvalidArgument("cascade_attention_backward: out and g must be like q");
  if (dq->element_type() != q.element_type() || dk->element_type() != q.element_type() ||
      dv->element_type() != q.element_type() || dq->element_count() != q.element_count() ||
      dk->element_count() != k.element_count() || dv->element_count() != v.element_count() ||
      int64_t(dbias->element_count()) != sh.n * sh.h * sh.lk)
    return ffi::Error::InvalidArgument("cascade_attention_backward: results must be like q, k, v and [..., H, Lk]");
  if (sh.n * sh.h == 0) return ffi::Error::Success();
  if (sh.lq == 0) {  // no queries: every gradient is zero
    std::memset(dk->untyped_data(), 0, dk->size_bytes());
    std::memset(dv->untyped_data(), 0, dv->size_bytes());
    std::memset(dbias->untyped_data(), 0, dbias->size_bytes());
    return ffi::Error::Success();
  }
  const float* kp = keep.element_count() != 0 ? keep.typed_data() : nullptr;
  return q.element_type() == ffi::F32
             ? backward<float>(pool, q, k, v, bias, kp, out, g, *dq, *dk, *dv, dbias->typed_data(), sh)
             : backward<uint16_t>(pool, q, k, v, bias, kp, out, g, *dq, *dk, *dv, dbias->typed_data(), sh);
}

// The handlers' common arguments: the intra-op thread pool, q, k, v and the key bias.
inline auto bind_qkv_bias() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
      .Arg<ffi::Buffer<ffi::F32>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeAttention, Attention, bind_qkv_bias().Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeAttentionDropout, AttentionDropout,
                              bind_qkv_bias().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CascadeAttentionBackward, AttentionBackward,
                              bind_qkv_bias()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // keep, or empty
                                  .Arg<ffi::AnyBuffer>()         // out
                                  .Arg<ffi::AnyBuffer>()         // g
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
