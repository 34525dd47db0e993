#pragma once

// Sliding windows of call outcomes, one per cluster breaker.
//
// Count-based: the last `size` calls, kept in a ring of outcomes. Recording a call overwrites
// the oldest one and adjusts the running totals, so an update is O(1).
//
// Time-based: the last `duration`, split into `buckets` buckets of duration / buckets each.
// A bucket stores the index of the time slice it counts (time since the window's origin,
// divided by the bucket width). When time moves on, the buckets of slices that have left the
// window are subtracted from the running totals and cleared. So an update is O(1) amortized,
// and O(buckets) at worst after a long idle period, never O(calls). The window covers between
// duration - width and duration of history, depending on where in the current slice `now` is.
//
// SlidingWindow is not thread-safe: the breaker that owns it holds its lock around every call.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <variant>
#include <vector>

#include "filters/breaker/outcome.h"
#include "filters/filter.h"

namespace deferd::filters::breaker {

struct WindowOptions {
  enum class Kind : uint8_t { kCount, kTime };

  Kind kind = Kind::kCount;
  // Calls in a count-based window. Zero is treated as 1.
  size_t size = 100;
  // Length and bucket count of a time-based window. A zero duration is treated as 1 ms, zero
  // buckets as 1, and more buckets than milliseconds in the duration as one per millisecond.
  std::chrono::milliseconds duration = std::chrono::seconds(10);
  size_t buckets = 10;
};

// Totals over a window.
struct WindowCounts {
  uint64_t calls = 0;
  uint64_t failures = 0;
  // Slow calls that were not failures (see outcome.h).
  uint64_t slow_calls = 0;

  double failureRate() const;
  double slowCallRate() const;

  bool operator==(const WindowCounts&) const = default;
};

class CountWindow {
public:
  explicit CountWindow(size_t size);

  void record(Outcome outcome);
  WindowCounts counts() const { return totals_; }
  void reset();

private:
  std::vector<Outcome> ring_;
  // Next position to write. The ring is full once filled_ reaches its size.
  size_t next_ = 0;
  size_t filled_ = 0;
  WindowCounts totals_;
};

class TimeWindow {
public:
  TimeWindow(std::chrono::milliseconds duration, size_t buckets, MonotonicTime origin);

  void record(Outcome outcome, MonotonicTime now);
  // Drops slices older than the window first, so the counts are those as of now.
  WindowCounts counts(MonotonicTime now);
  void reset();

private:
  struct Bucket {
    // The time slice this bucket counts. Slices count up from origin_ in steps of width_.
    int64_t slice = -1;
    WindowCounts counts;
  };

  // Clears the buckets of slices that have left the window as of `slice`.
  void advanceTo(int64_t slice);
  int64_t sliceAt(MonotonicTime now) const;

  std::chrono::nanoseconds width_;
  MonotonicTime origin_;
  std::vector<Bucket> buckets_;
  // The newest slice seen, so advanceTo only walks slices it has not cleared yet.
  int64_t newest_slice_ = 0;
  WindowCounts totals_;
};

// A window of either kind, chosen by WindowOptions.
class SlidingWindow {
public:
  SlidingWindow(const WindowOptions& options, MonotonicTime origin);

  void record(Outcome outcome, MonotonicTime now);
  WindowCounts counts(MonotonicTime now);
  void reset();

private:
  std::variant<CountWindow, TimeWindow> window_;
};

} // namespace deferd::filters::breaker
