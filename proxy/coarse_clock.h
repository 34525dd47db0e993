#pragma once

// The clock for idle deadlines.
//
// std::chrono::steady_clock reads CLOCK_MONOTONIC, about 27 ns a call on the benchmark
// machine of docs/benchmarks.md, and a request renews its idle deadline several times. An idle
// deadline (a stream's or a connection's) is seconds long and checked on the worker's tick, so
// coarseNow() reads CLOCK_MONOTONIC_COARSE instead, about 5 ns a call. That clock is
// CLOCK_MONOTONIC as of the kernel's last timer tick: the same base, at most one tick (1 to 10 ms,
// by the kernel's HZ) behind. So a deadline taken from it can be compared with steady_clock's time,
// and expires at most one tick early.
//
// Latencies, limiter samples and request deadlines keep steady_clock.

#include <time.h>

#include <chrono>

#include "filters/filter.h"

namespace deferd {

inline MonotonicTime coarseNow() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return MonotonicTime(std::chrono::duration_cast<MonotonicTime::duration>(
      std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec)));
}

} // namespace deferd
