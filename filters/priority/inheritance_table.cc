#include "filters/priority/inheritance_table.h"

#include <algorithm>
#include <utility>

namespace deferd::filters::priority {

InheritanceTable::InheritanceTable(const InheritanceTableOptions& options, Clock clock)
    : options_(options), clock_(std::move(clock)),
      max_entries_(std::max<size_t>(options.max_entries, 1)) {
  size_t shard_count = std::clamp<size_t>(options.shards, 1, max_entries_);
  for (size_t i = 0; i < shard_count; ++i) {
    auto shard = std::make_unique<Shard>();
    // The first max_entries % shard_count shards take one extra entry, so the capacities add
    // up to max_entries exactly.
    shard->capacity = max_entries_ / shard_count + (i < max_entries_ % shard_count ? 1 : 0);
    shards_.push_back(std::move(shard));
  }
}

InheritanceTable::~InheritanceTable() = default;

void InheritanceTable::record(std::string_view id, int urgency, int hop) {
  Shard& shard = shardFor(id);
  std::lock_guard lock(shard.mutex);
  MonotonicTime now = clock_();
  removeExpiredLocked(shard, now);

  auto found = shard.index.find(id);
  if (found == shard.index.end()) {
    makeRoom(shard);
    shard.in_flight.push_back(Entry{.id = std::string(id),
                                    .urgency = urgency,
                                    .hop = hop,
                                    .boost = std::nullopt,
                                    .in_flight = 1,
                                    .expiry = now + options_.ttl});
    auto entry = std::prev(shard.in_flight.end());
    shard.index.emplace(entry->id, entry);
    size_.fetch_add(1, std::memory_order_relaxed);
    return;
  }

  auto entry = found->second;
  if (entry->in_flight == 0) {
    // Released and in its grace period: a new request of the id starts afresh.
    entry->urgency = urgency;
    entry->hop = hop;
  } else if (urgency < entry->urgency || (urgency == entry->urgency && hop < entry->hop)) {
    entry->urgency = urgency;
    entry->hop = hop;
  }
  if (entry->boost && *entry->boost >= entry->urgency) {
    entry->boost.reset();
  }
  EntryList& from = entry->in_flight == 0 ? shard.released : shard.in_flight;
  shard.in_flight.splice(shard.in_flight.end(), from, entry);
  entry->in_flight++;
  entry->expiry = now + options_.ttl;
}

bool InheritanceTable::release(std::string_view id) {
  Shard& shard = shardFor(id);
  std::lock_guard lock(shard.mutex);
  MonotonicTime now = clock_();
  removeExpiredLocked(shard, now);

  auto found = shard.index.find(id);
  if (found == shard.index.end() || found->second->in_flight == 0) {
    return false;
  }
  auto entry = found->second;
  entry->in_flight--;
  if (entry->in_flight > 0) {
    return true;
  }
  entry->boost.reset();
  entry->expiry = now + options_.release_grace;
  shard.released.splice(shard.released.end(), shard.in_flight, entry);
  return true;
}

OutboundPriority InheritanceTable::lookupForOutbound(std::string_view id) {
  return lookupForOutbound(id, options_.max_depth);
}

OutboundPriority InheritanceTable::lookupForOutbound(std::string_view id, int max_depth) {
  Shard& shard = shardFor(id);
  std::lock_guard lock(shard.mutex);
  MonotonicTime now = clock_();
  removeExpiredLocked(shard, now);

  auto found = shard.index.find(id);
  if (found == shard.index.end()) {
    return OutboundPriority{};
  }
  const Entry& entry = *found->second;
  if (entry.hop + 1 > max_depth) {
    depth_exceeded_.fetch_add(1, std::memory_order_relaxed);
    OutboundPriority result;
    result.status = InheritanceStatus::kDepthExceeded;
    result.priority.hop = entry.hop + 1;
    return result;
  }

  OutboundPriority result;
  result.status = InheritanceStatus::kInherited;
  result.priority.urgency = entry.boost.value_or(entry.urgency);
  result.priority.hop = entry.hop + 1;
  result.boosted = entry.boost.has_value();
  return result;
}

bool InheritanceTable::boost(std::string_view id, int urgency) {
  Shard& shard = shardFor(id);
  std::lock_guard lock(shard.mutex);
  MonotonicTime now = clock_();
  removeExpiredLocked(shard, now);

  auto found = shard.index.find(id);
  if (found == shard.index.end() || found->second->in_flight == 0) {
    return false;
  }
  auto entry = found->second;
  if (urgency >= entry->boost.value_or(entry->urgency)) {
    return false;
  }
  entry->boost = urgency;
  boosts_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void InheritanceTable::removeExpired() {
  for (auto& shard : shards_) {
    std::lock_guard lock(shard->mutex);
    removeExpiredLocked(*shard, clock_());
  }
}

InheritanceTable::Shard& InheritanceTable::shardFor(std::string_view id) {
  return *shards_[std::hash<std::string_view>{}(id) % shards_.size()];
}

void InheritanceTable::removeExpiredLocked(Shard& shard, MonotonicTime now) {
  while (!shard.in_flight.empty() && shard.in_flight.front().expiry <= now) {
    expirations_.fetch_add(1, std::memory_order_relaxed);
    removeFront(shard, shard.in_flight);
  }
  while (!shard.released.empty() && shard.released.front().expiry <= now) {
    removeFront(shard, shard.released);
  }
}

void InheritanceTable::removeFront(Shard& shard, EntryList& list) {
  shard.index.erase(list.front().id);
  list.pop_front();
  size_.fetch_sub(1, std::memory_order_relaxed);
}

void InheritanceTable::makeRoom(Shard& shard) {
  if (shard.index.size() < shard.capacity) {
    return;
  }
  evictions_.fetch_add(1, std::memory_order_relaxed);
  removeFront(shard, shard.released.empty() ? shard.in_flight : shard.released);
}

} // namespace deferd::filters::priority
