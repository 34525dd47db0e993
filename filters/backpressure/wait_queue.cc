#include "filters/backpressure/wait_queue.h"

#include <algorithm>
#include <utility>

namespace deferd::filters::backpressure {

int WaitQueue::effectiveUrgency(const Waiter& waiter, MonotonicTime now) const {
  const int urgency = std::clamp(waiter.urgency, 0, kLeastUrgent);
  if (options_.aging.count() <= 0 || now <= waiter.enqueued) {
    return urgency;
  }
  const auto steps = (now - waiter.enqueued) / options_.aging;
  return steps >= urgency ? 0 : urgency - static_cast<int>(steps);
}

PushResult WaitQueue::push(Waiter waiter, MonotonicTime now) {
  PushResult result;
  waiter.urgency = std::clamp(waiter.urgency, 0, kLeastUrgent);
  waiter.enqueued = now;

  if (options_.max_length == 0) {
    return result;
  }
  if (index_.size() >= options_.max_length) {
    const int level = leastUrgentLevel(now);
    const Waiter& victim = levels_[level].back().waiter;
    // The newcomer is the newest of all, so it loses every tie.
    if (waiter.urgency >= effectiveUrgency(victim, now)) {
      return result;
    }
    result.displaced = take(std::prev(levels_[level].end()));
  }

  Entry entry;
  entry.timeout = now + options_.max_wait;
  if (waiter.deadline && *waiter.deadline - options_.deadline_margin < entry.timeout) {
    entry.timeout = *waiter.deadline - options_.deadline_margin;
    entry.timeout_kind = TimeoutKind::kDeadline;
  }
  const uint64_t id = waiter.id;
  Level& level = levels_[waiter.urgency];
  entry.waiter = std::move(waiter);
  entry.timeout_entry = timeouts_.emplace(entry.timeout, id);
  level.push_back(std::move(entry));
  index_.emplace(id, std::prev(level.end()));
  result.queued = true;
  return result;
}

std::optional<Waiter> WaitQueue::popMostUrgent(MonotonicTime now) {
  const int level = mostUrgentLevel(now);
  if (level < 0) {
    return std::nullopt;
  }
  return take(levels_[level].begin());
}

std::optional<TimedOutWaiter> WaitQueue::popTimedOut(MonotonicTime now) {
  if (timeouts_.empty() || timeouts_.begin()->first > now) {
    return std::nullopt;
  }
  auto entry = index_.at(timeouts_.begin()->second);
  const TimeoutKind kind = entry->timeout_kind;
  return TimedOutWaiter{.waiter = take(entry), .kind = kind};
}

bool WaitQueue::remove(uint64_t id) {
  auto found = index_.find(id);
  if (found == index_.end()) {
    return false;
  }
  take(found->second);
  return true;
}

std::optional<MonotonicTime> WaitQueue::nextTimeout() const {
  if (timeouts_.empty()) {
    return std::nullopt;
  }
  return timeouts_.begin()->first;
}

size_t WaitQueue::countAhead(int urgency, MonotonicTime now) const {
  urgency = std::clamp(urgency, 0, kLeastUrgent);
  size_t ahead = 0;
  for (int level = 0; level <= urgency; ++level) {
    ahead += levels_[level].size();
  }
  for (int level = urgency + 1; level < kUrgencyLevels; ++level) {
    for (const Entry& entry : levels_[level]) {
      if (effectiveUrgency(entry.waiter, now) > urgency) {
        break;
      }
      ++ahead;
    }
  }
  return ahead;
}

std::array<size_t, kUrgencyLevels> WaitQueue::depthByUrgency() const {
  std::array<size_t, kUrgencyLevels> depth{};
  for (int level = 0; level < kUrgencyLevels; ++level) {
    depth[level] = levels_[level].size();
  }
  return depth;
}

Waiter WaitQueue::take(Level::iterator entry) {
  Waiter waiter = std::move(entry->waiter);
  timeouts_.erase(entry->timeout_entry);
  index_.erase(waiter.id);
  levels_[waiter.urgency].erase(entry);
  return waiter;
}

int WaitQueue::mostUrgentLevel(MonotonicTime now) const {
  int best = -1;
  int best_urgency = kUrgencyLevels;
  MonotonicTime best_enqueued{};
  for (int level = 0; level < kUrgencyLevels; ++level) {
    if (levels_[level].empty()) {
      continue;
    }
    const Waiter& head = levels_[level].front().waiter;
    const int urgency = effectiveUrgency(head, now);
    if (urgency < best_urgency || (urgency == best_urgency && head.enqueued < best_enqueued)) {
      best = level;
      best_urgency = urgency;
      best_enqueued = head.enqueued;
    }
  }
  return best;
}

int WaitQueue::leastUrgentLevel(MonotonicTime now) const {
  int worst = -1;
  int worst_urgency = -1;
  MonotonicTime worst_enqueued{};
  for (int level = 0; level < kUrgencyLevels; ++level) {
    if (levels_[level].empty()) {
      continue;
    }
    const Waiter& tail = levels_[level].back().waiter;
    const int urgency = effectiveUrgency(tail, now);
    if (urgency > worst_urgency || (urgency == worst_urgency && tail.enqueued >= worst_enqueued)) {
      worst = level;
      worst_urgency = urgency;
      worst_enqueued = tail.enqueued;
    }
  }
  return worst;
}

} // namespace deferd::filters::backpressure
