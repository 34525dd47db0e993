#pragma once

// The inheritance table: the priority of each inbound request in flight, by correlation id,
// so that the local app's outbound calls carrying the same id inherit it with hop + 1.
//
// Entry lifetime:
//   record(id)   on an inbound request. A new entry starts in flight with an expiry of
//                now + ttl. Recording an id that is already in flight counts one more request
//                and keeps the more urgent of the two priorities (on equal urgency, the
//                smaller hop). So a less urgent request of the same trace cannot slow down
//                the outbound calls of a more urgent one. The expiry moves to now + ttl.
//   release(id)  at the end of an inbound request. When the last request of the id ends, the
//                boost ends and the entry stays for release_grace, for outbound calls that
//                the app makes just after its response; then it expires.
//   ttl          limits an entry that is never released, for example because a stream end was
//                missed. Such an expiry is counted in expirations().
// An entry whose expiry has passed is gone: operations ignore it and remove it.
//
// Bounds: the table is split into shards by the hash of the id, and the capacity max_entries
// is split between them, so the table never holds more than max_entries. When a shard is full,
// recording a new id removes expired entries and then evicts the shard's oldest released
// entry, or if there is none, its oldest in-flight entry. "Oldest" is by the last record or
// release, so eviction order is exact within a shard and approximate across the table.
//
// Data structures: each shard keeps its entries in two lists, in flight and released, each in
// order of expiry. The in-flight list is in order of expiry because every in-flight entry gets
// now + ttl, and the released list because every released entry gets now + release_grace. So
// expired entries are always at the fronts, and every operation is O(1) amortized.
//
// Locking: one mutex per shard, held only for the map and list operations of one call (no
// allocation other than a new entry's node and key, no I/O, no callbacks). The clock is read
// under the lock, so the lists stay in expiry order when workers race. Counters and the size
// are atomics, read without a lock; size() is a snapshot.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "filters/filter.h"
#include "filters/priority/priority_header.h"

namespace deferd::filters::priority {

struct InheritanceTableOptions {
  // Bounds memory. An estimate of the cost: about 200 bytes per entry with a 32-character id.
  size_t max_entries = 65536;
  std::chrono::milliseconds ttl = std::chrono::minutes(5);
  std::chrono::milliseconds release_grace = std::chrono::seconds(1);
  // Outbound calls with hop + 1 above this get the route default instead.
  int max_depth = 3;
  // Number of lock shards, capped at max_entries. More shards mean less contention between
  // workers.
  size_t shards = 16;
};

enum class InheritanceStatus {
  kInherited,     // priority contains the inherited urgency and hop + 1
  kNotFound,      // no live entry for the id
  kDepthExceeded, // hop + 1 would exceed max_depth, so the route default applies
};

struct OutboundPriority {
  InheritanceStatus status = InheritanceStatus::kNotFound;
  Priority priority;
  // Whether a boost made the urgency more urgent than the recorded one.
  bool boosted = false;
};

class InheritanceTable {
public:
  using Clock = std::function<MonotonicTime()>;

  // Zero max_entries or shards are treated as 1. The clock must be safe to call from every
  // worker thread.
  InheritanceTable(const InheritanceTableOptions& options, Clock clock);
  ~InheritanceTable();

  InheritanceTable(const InheritanceTable&) = delete;
  InheritanceTable& operator=(const InheritanceTable&) = delete;

  // Records the priority of an inbound request, as the trust rules left it.
  void record(std::string_view id, int urgency, int hop);

  // Ends one inbound request of the id. Returns false when the id has no live in-flight entry.
  bool release(std::string_view id);

  // Returns the priority an outbound call with this id inherits. On kDepthExceeded, only the
  // priority's hop is set: the hop the call would have had.
  OutboundPriority lookupForOutbound(std::string_view id);
  // The same with the depth limit of the calling route's policy instead of the table's.
  OutboundPriority lookupForOutbound(std::string_view id, int max_depth);

  // Makes the in-flight entry of the id at least as urgent as urgency until it is released.
  // Returns true when that raised its urgency, false when it was already as urgent or the id
  // has no live in-flight entry.
  bool boost(std::string_view id, int urgency);

  // Removes every expired entry. Operations already remove expired entries of the shards they
  // touch; a periodic call frees the memory of shards that see no traffic.
  void removeExpired();

  size_t size() const { return size_.load(std::memory_order_relaxed); }
  size_t maxEntries() const { return max_entries_; }

  // Live entries removed to make room for a new id.
  uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }
  // In-flight entries removed because their ttl passed before release.
  uint64_t expirations() const { return expirations_.load(std::memory_order_relaxed); }
  // Successful boost() calls.
  uint64_t boosts() const { return boosts_.load(std::memory_order_relaxed); }
  // Lookups that returned kDepthExceeded.
  uint64_t depthExceeded() const { return depth_exceeded_.load(std::memory_order_relaxed); }

private:
  struct Entry {
    std::string id;
    int urgency = kDefaultUrgency;
    int hop = 0;
    // Set while a boost is active; always more urgent than urgency.
    std::optional<int> boost;
    // Inbound requests of this id that have not been released.
    int in_flight = 0;
    MonotonicTime expiry;
  };
  using EntryList = std::list<Entry>;

  struct Shard {
    std::mutex mutex;
    size_t capacity = 0;
    // Both lists are in expiry order, as the design notes above explain.
    EntryList in_flight;
    EntryList released;
    // Keys are views of Entry::id, which does not move while the node exists.
    std::unordered_map<std::string_view, EntryList::iterator> index;
  };

  Shard& shardFor(std::string_view id);

  // Each function below expects the shard's mutex to be held. Every public operation calls
  // removeExpiredLocked first, so an entry still in the index afterwards is live.
  void removeExpiredLocked(Shard& shard, MonotonicTime now);
  void removeFront(Shard& shard, EntryList& list);
  // Evicts one entry when the shard is full.
  void makeRoom(Shard& shard);

  const InheritanceTableOptions options_;
  const Clock clock_;
  size_t max_entries_;
  std::vector<std::unique_ptr<Shard>> shards_;

  std::atomic<size_t> size_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> expirations_{0};
  std::atomic<uint64_t> boosts_{0};
  std::atomic<uint64_t> depth_exceeded_{0};
};

} // namespace deferd::filters::priority
