// What the kernels in this folder share: running tasks on XLA's intra-op thread pool, and bfloat16 <-> float.
#ifndef CASCADE_JAX_KERNELS_COMMON_H_
#define CASCADE_JAX_KERNELS_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace cascade_kernels {

// Runs body(task) for tasks 0..tasks-1 on XLA's intra-op pool. The caller works too, so the call never waits on a
// busy pool for more than the task a helper has already begun; it returns when every task is done (a helper that
// starts late only touches the shared counters, never body).
template <typename Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t tasks, Body body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [=]() {
    for (;;) {
      const int64_t t = state->next.fetch_add(1);
      if (t >= tasks) break;
      body(t);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t threads = pool.num_threads();
  const int64_t helpers = std::min<int64_t>(threads > 0 ? threads - 1 : 0, tasks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
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

}  // namespace cascade_kernels

#endif  // CASCADE_JAX_KERNELS_COMMON_H_
