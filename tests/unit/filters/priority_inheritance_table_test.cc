#include "filters/priority/inheritance_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::priority {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class InheritanceTableTest : public ::testing::Test {
protected:
  // Builds the table on the fake clock. smallTable() has one shard, so eviction order is exact.
  InheritanceTable& makeTable(InheritanceTableOptions options) {
    table_ = std::make_unique<InheritanceTable>(options, [this] { return dispatcher_.now(); });
    return *table_;
  }

  static InheritanceTableOptions smallTable() {
    InheritanceTableOptions options;
    options.max_entries = 3;
    options.shards = 1;
    options.ttl = 10s;
    options.release_grace = 1s;
    options.max_depth = 3;
    return options;
  }

  static bool found(InheritanceTable& table, std::string_view id) {
    return table.lookupForOutbound(id).status != InheritanceStatus::kNotFound;
  }

  FakeDispatcher dispatcher_;
  std::unique_ptr<InheritanceTable> table_;
};

TEST_F(InheritanceTableTest, InheritsWithNextHop) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("trace-a", 1, 0);

  OutboundPriority outbound = table.lookupForOutbound("trace-a");
  EXPECT_EQ(outbound.status, InheritanceStatus::kInherited);
  EXPECT_EQ(outbound.priority, (Priority{.urgency = 1, .hop = 1}));
  EXPECT_FALSE(outbound.boosted);
  EXPECT_EQ(table.size(), 1u);
}

TEST_F(InheritanceTableTest, UnknownIdIsNotFound) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("trace-a", 1, 0);

  EXPECT_EQ(table.lookupForOutbound("trace-b").status, InheritanceStatus::kNotFound);
  EXPECT_FALSE(table.release("trace-b"));
  EXPECT_FALSE(table.boost("trace-b", 0));
}

TEST_F(InheritanceTableTest, CutsOffPastMaxDepth) {
  InheritanceTable& table = makeTable(smallTable());
  struct Case {
    int hop;
    InheritanceStatus status;
  };
  const Case cases[] = {
      {0, InheritanceStatus::kInherited},     {1, InheritanceStatus::kInherited},
      {2, InheritanceStatus::kInherited},     {3, InheritanceStatus::kDepthExceeded},
      {4, InheritanceStatus::kDepthExceeded}, {kMaxHop, InheritanceStatus::kDepthExceeded},
  };
  uint64_t exceeded = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.hop);
    std::string id = "hop-" + std::to_string(c.hop);
    table.record(id, 2, c.hop);
    OutboundPriority outbound = table.lookupForOutbound(id);
    EXPECT_EQ(outbound.status, c.status);
    if (c.status == InheritanceStatus::kInherited) {
      EXPECT_EQ(outbound.priority.hop, c.hop + 1);
      EXPECT_EQ(outbound.priority.urgency, 2);
    } else {
      ++exceeded;
    }
    EXPECT_EQ(table.depthExceeded(), exceeded);
  }
}

TEST_F(InheritanceTableTest, EvictsOldestWhenFull) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);
  table.record("b", 1, 0);
  table.record("c", 1, 0);
  EXPECT_EQ(table.evictions(), 0u);

  table.record("d", 1, 0);
  EXPECT_EQ(table.size(), 3u);
  EXPECT_EQ(table.evictions(), 1u);
  EXPECT_FALSE(found(table, "a"));
  EXPECT_TRUE(found(table, "b"));
  EXPECT_TRUE(found(table, "c"));
  EXPECT_TRUE(found(table, "d"));

  table.record("e", 1, 0);
  EXPECT_EQ(table.evictions(), 2u);
  EXPECT_FALSE(found(table, "b"));
}

TEST_F(InheritanceTableTest, EvictsReleasedBeforeInFlight) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);
  table.record("b", 1, 0);
  table.record("c", 1, 0);
  ASSERT_TRUE(table.release("b"));

  table.record("d", 1, 0);
  EXPECT_EQ(table.evictions(), 1u);
  EXPECT_TRUE(found(table, "a"));
  EXPECT_FALSE(found(table, "b"));
}

TEST_F(InheritanceTableTest, RecordingAgainMakesEntryNewest) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);
  table.record("b", 1, 0);
  table.record("c", 1, 0);
  table.record("a", 1, 0);

  table.record("d", 1, 0);
  EXPECT_TRUE(found(table, "a"));
  EXPECT_FALSE(found(table, "b"));
}

TEST_F(InheritanceTableTest, ExpiredEntriesMakeRoomWithoutEviction) {
  InheritanceTableOptions options = smallTable();
  options.max_entries = 2;
  InheritanceTable& table = makeTable(options);
  table.record("a", 1, 0);
  table.record("b", 1, 0);
  dispatcher_.advance(10s);

  table.record("c", 1, 0);
  EXPECT_EQ(table.evictions(), 0u);
  EXPECT_EQ(table.expirations(), 2u);
  EXPECT_EQ(table.size(), 1u);
}

TEST_F(InheritanceTableTest, SplitsCapacityAcrossShards) {
  InheritanceTableOptions options = smallTable();
  options.max_entries = 10;
  options.shards = 16; // more shards than entries: reduced to 10 shards of 1
  InheritanceTable& table = makeTable(options);

  for (int i = 0; i < 100; ++i) {
    table.record("id-" + std::to_string(i), 1, 0);
    ASSERT_LE(table.size(), 10u);
  }
  EXPECT_EQ(table.size() + table.evictions(), 100u);
  EXPECT_EQ(table.maxEntries(), 10u);
}

TEST_F(InheritanceTableTest, ExpiresAfterTtl) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);

  dispatcher_.advance(9999ms);
  EXPECT_TRUE(found(table, "a"));
  EXPECT_EQ(table.expirations(), 0u);

  dispatcher_.advance(1ms);
  EXPECT_FALSE(found(table, "a"));
  EXPECT_EQ(table.expirations(), 1u);
  EXPECT_EQ(table.size(), 0u);
  EXPECT_FALSE(table.release("a"));
}

TEST_F(InheritanceTableTest, RecordingAgainExtendsTtl) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);
  dispatcher_.advance(6s);
  table.record("a", 1, 0);
  dispatcher_.advance(6s);
  EXPECT_TRUE(found(table, "a"));
}

TEST_F(InheritanceTableTest, KeepsReleasedEntryForGrace) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 0);
  dispatcher_.advance(5s);
  ASSERT_TRUE(table.release("a"));

  dispatcher_.advance(999ms);
  EXPECT_EQ(table.lookupForOutbound("a").priority, (Priority{.urgency = 1, .hop = 1}));

  dispatcher_.advance(1ms);
  EXPECT_FALSE(found(table, "a"));
  EXPECT_EQ(table.size(), 0u);
  // A released entry ending its grace is the normal path, not a missed release.
  EXPECT_EQ(table.expirations(), 0u);
}

TEST_F(InheritanceTableTest, ReleasesAfterLastRequest) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 4, 0);
  table.record("a", 4, 0);

  EXPECT_TRUE(table.release("a"));
  EXPECT_TRUE(table.boost("a", 2)); // still in flight
  EXPECT_TRUE(table.release("a"));
  EXPECT_FALSE(table.release("a"));
  EXPECT_FALSE(table.boost("a", 1)); // released
  EXPECT_TRUE(found(table, "a"));
}

TEST_F(InheritanceTableTest, KeepsMostUrgentWhileInFlight) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 5, 1);
  table.record("a", 2, 2);
  EXPECT_EQ(table.lookupForOutbound("a").priority, (Priority{.urgency = 2, .hop = 3}));

  table.record("a", 6, 0);
  EXPECT_EQ(table.lookupForOutbound("a").priority, (Priority{.urgency = 2, .hop = 3}));

  table.record("a", 2, 0);
  EXPECT_EQ(table.lookupForOutbound("a").priority, (Priority{.urgency = 2, .hop = 1}));
}

TEST_F(InheritanceTableTest, RecordingAfterReleaseStartsAfresh) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 1, 2);
  ASSERT_TRUE(table.release("a"));

  table.record("a", 6, 0);
  EXPECT_EQ(table.lookupForOutbound("a").priority, (Priority{.urgency = 6, .hop = 1}));
}

TEST_F(InheritanceTableTest, BoostLastsUntilRelease) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 5, 1);

  EXPECT_TRUE(table.boost("a", 1));
  OutboundPriority boosted = table.lookupForOutbound("a");
  EXPECT_EQ(boosted.priority, (Priority{.urgency = 1, .hop = 2}));
  EXPECT_TRUE(boosted.boosted);
  EXPECT_EQ(table.boosts(), 1u);

  // A boost never lowers the urgency.
  EXPECT_FALSE(table.boost("a", 3));
  EXPECT_FALSE(table.boost("a", 1));
  EXPECT_EQ(table.lookupForOutbound("a").priority.urgency, 1);
  EXPECT_EQ(table.boosts(), 1u);

  EXPECT_TRUE(table.boost("a", 0));
  EXPECT_EQ(table.lookupForOutbound("a").priority.urgency, 0);
  EXPECT_EQ(table.boosts(), 2u);

  ASSERT_TRUE(table.release("a"));
  OutboundPriority after_release = table.lookupForOutbound("a");
  EXPECT_EQ(after_release.priority, (Priority{.urgency = 5, .hop = 2}));
  EXPECT_FALSE(after_release.boosted);
}

TEST_F(InheritanceTableTest, BoostNotBelowRecordedUrgency) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 2, 0);
  EXPECT_FALSE(table.boost("a", 4));
  EXPECT_FALSE(table.boost("a", 2));
  EXPECT_EQ(table.boosts(), 0u);
  EXPECT_FALSE(table.lookupForOutbound("a").boosted);
}

TEST_F(InheritanceTableTest, MoreUrgentRecordReplacesBoost) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 5, 0);
  ASSERT_TRUE(table.boost("a", 3));

  table.record("a", 1, 0);
  OutboundPriority outbound = table.lookupForOutbound("a");
  EXPECT_EQ(outbound.priority.urgency, 1);
  EXPECT_FALSE(outbound.boosted);
}

TEST_F(InheritanceTableTest, BoostedEntryStillExpires) {
  InheritanceTable& table = makeTable(smallTable());
  table.record("a", 5, 0);
  ASSERT_TRUE(table.boost("a", 0));
  dispatcher_.advance(10s);
  EXPECT_FALSE(found(table, "a"));
  EXPECT_FALSE(table.boost("a", 0));
}

TEST_F(InheritanceTableTest, RemoveExpiredSweepsIdleShards) {
  InheritanceTableOptions options = smallTable();
  options.max_entries = 64;
  options.shards = 8;
  InheritanceTable& table = makeTable(options);
  for (int i = 0; i < 20; ++i) {
    table.record("id-" + std::to_string(i), 3, 0);
  }
  ASSERT_TRUE(table.release("id-0"));
  dispatcher_.advance(10s);
  EXPECT_EQ(table.size(), 20u); // expired entries stay until an operation or a sweep

  table.removeExpired();
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.expirations(), 19u);
}

TEST_F(InheritanceTableTest, ZeroOptionsAreRaisedToOne) {
  InheritanceTableOptions options = smallTable();
  options.max_entries = 0;
  options.shards = 0;
  InheritanceTable& table = makeTable(options);
  table.record("a", 1, 0);
  table.record("b", 1, 0);
  EXPECT_EQ(table.maxEntries(), 1u);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_TRUE(found(table, "b"));
}

// Four workers record, look up, boost and release ids from a shared pool, with a clock that
// moves as they go, so entries are evicted, expire and come back while others use them.
TEST(InheritanceTableConcurrencyTest, KeepsBoundsUnderFourThreads) {
  constexpr size_t kMaxEntries = 64;
  constexpr int kThreads = 4;
  constexpr int kOperationsPerThread = 20000;
  constexpr int kIds = 200;

  std::atomic<int64_t> clock_ms{0};
  InheritanceTableOptions options;
  options.max_entries = kMaxEntries;
  options.shards = 8;
  options.ttl = 50ms;
  options.release_grace = 5ms;
  options.max_depth = 3;
  InheritanceTable table(options, [&clock_ms] {
    return MonotonicTime(std::chrono::milliseconds(clock_ms.load(std::memory_order_relaxed)));
  });

  std::atomic<int> violations{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < kOperationsPerThread; ++i) {
        std::string id = "trace-" + std::to_string((i * 7 + t * 13) % kIds);
        int urgency = (i + t) % 8;
        table.record(id, urgency, i % 4);
        OutboundPriority outbound = table.lookupForOutbound(id);
        if (outbound.status == InheritanceStatus::kInherited &&
            (outbound.priority.urgency < kMostUrgent || outbound.priority.urgency > kLeastUrgent ||
             outbound.priority.hop > options.max_depth)) {
          violations.fetch_add(1);
        }
        if (i % 5 == 0) {
          table.boost(id, 0);
        }
        table.release(id);
        if (table.size() > kMaxEntries) {
          violations.fetch_add(1);
        }
        if (i % 50 == 0) {
          clock_ms.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  for (std::thread& worker : workers) {
    worker.join();
  }

  EXPECT_EQ(violations.load(), 0);
  EXPECT_LE(table.size(), kMaxEntries);
  EXPECT_GT(table.evictions(), 0u);
  EXPECT_GT(table.boosts(), 0u);

  // Everything expires once the clock passes the ttl, and the size accounting ends at zero.
  clock_ms.fetch_add(1000);
  table.removeExpired();
  EXPECT_EQ(table.size(), 0u);
}

} // namespace
} // namespace deferd::filters::priority
