#include "filters/breaker/sliding_window.h"

#include <algorithm>

namespace deferd::filters::breaker {

namespace {

void add(WindowCounts& totals, Outcome outcome) {
  totals.calls++;
  if (outcome == Outcome::kFailure) {
    totals.failures++;
  } else if (outcome == Outcome::kSlow) {
    totals.slow_calls++;
  }
}

void subtract(WindowCounts& totals, Outcome outcome) {
  totals.calls--;
  if (outcome == Outcome::kFailure) {
    totals.failures--;
  } else if (outcome == Outcome::kSlow) {
    totals.slow_calls--;
  }
}

} // namespace

double WindowCounts::failureRate() const {
  return calls == 0 ? 0.0 : static_cast<double>(failures) / static_cast<double>(calls);
}

double WindowCounts::slowCallRate() const {
  return calls == 0 ? 0.0 : static_cast<double>(slow_calls) / static_cast<double>(calls);
}

CountWindow::CountWindow(size_t size) : ring_(std::max<size_t>(size, 1), Outcome::kSuccess) {}

void CountWindow::record(Outcome outcome) {
  if (filled_ == ring_.size()) {
    subtract(totals_, ring_[next_]);
  } else {
    filled_++;
  }

  ring_[next_] = outcome;
  add(totals_, outcome);
  next_ = (next_ + 1) % ring_.size();
}

void CountWindow::reset() {
  next_ = 0;
  filled_ = 0;
  totals_ = WindowCounts{};
}

TimeWindow::TimeWindow(std::chrono::milliseconds duration, size_t buckets, MonotonicTime origin)
    : origin_(origin) {
  auto total = std::max(duration, std::chrono::milliseconds(1));
  size_t count = std::clamp<size_t>(buckets, 1, static_cast<size_t>(total.count()));
  width_ =
      std::chrono::duration_cast<std::chrono::nanoseconds>(total) / static_cast<int64_t>(count);
  buckets_.resize(count);
}

int64_t TimeWindow::sliceAt(MonotonicTime now) const {
  // Time before the origin (a clock read before construction on another thread) counts as
  // the first slice.
  if (now <= origin_) {
    return 0;
  }
  return (now - origin_) / width_;
}

void TimeWindow::advanceTo(int64_t slice) {
  if (slice <= newest_slice_) {
    return;
  }

  // Only the buckets of slices after newest_slice_ can hold stale counts. A walk of
  // buckets_.size() steps visits every bucket once, so it never needs to go further.
  int64_t steps = std::min<int64_t>(slice - newest_slice_, static_cast<int64_t>(buckets_.size()));
  for (int64_t i = 1; i <= steps; ++i) {
    Bucket& bucket = buckets_[static_cast<size_t>(newest_slice_ + i) % buckets_.size()];
    if (bucket.slice >= 0) {
      totals_.calls -= bucket.counts.calls;
      totals_.failures -= bucket.counts.failures;
      totals_.slow_calls -= bucket.counts.slow_calls;
    }
    bucket.slice = -1;
    bucket.counts = WindowCounts{};
  }
  newest_slice_ = slice;
}

void TimeWindow::record(Outcome outcome, MonotonicTime now) {
  int64_t slice = std::max(sliceAt(now), newest_slice_);
  advanceTo(slice);

  Bucket& bucket = buckets_[static_cast<size_t>(slice) % buckets_.size()];
  bucket.slice = slice;
  add(bucket.counts, outcome);
  add(totals_, outcome);
}

WindowCounts TimeWindow::counts(MonotonicTime now) {
  advanceTo(sliceAt(now));
  return totals_;
}

void TimeWindow::reset() {
  for (Bucket& bucket : buckets_) {
    bucket = Bucket{};
  }
  totals_ = WindowCounts{};
}

SlidingWindow::SlidingWindow(const WindowOptions& options, MonotonicTime origin)
    : window_(options.kind == WindowOptions::Kind::kCount
                  ? std::variant<CountWindow, TimeWindow>(CountWindow(options.size))
                  : std::variant<CountWindow, TimeWindow>(
                        TimeWindow(options.duration, options.buckets, origin))) {}

void SlidingWindow::record(Outcome outcome, MonotonicTime now) {
  if (auto* count = std::get_if<CountWindow>(&window_)) {
    count->record(outcome);
  } else {
    std::get<TimeWindow>(window_).record(outcome, now);
  }
}

WindowCounts SlidingWindow::counts(MonotonicTime now) {
  if (auto* count = std::get_if<CountWindow>(&window_)) {
    return count->counts();
  }
  return std::get<TimeWindow>(window_).counts(now);
}

void SlidingWindow::reset() {
  std::visit([](auto& window) { window.reset(); }, window_);
}

} // namespace deferd::filters::breaker
