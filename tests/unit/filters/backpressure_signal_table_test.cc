#include "filters/backpressure/signal_table.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::backpressure {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class SignalTableTest : public ::testing::Test {
protected:
  static SignalTableOptions options() {
    SignalTableOptions options;
    options.half_life = 0ms; // no smoothing unless a test sets a half-life
    options.defer_above = 0.9;
    options.resume_below = 0.7;
    options.hold_above = 500ms;
    options.hold_below = 1000ms;
    options.ttl = 5s;
    return options;
  }

  static LoadReport load(double utilization, bool defer = false) {
    return LoadReport{.utilization = utilization, .queue = 0, .defer = defer};
  }

  // Reports `utilization` for endpoint 0 every 100 ms for `duration`.
  void reportFor(SignalTable& table, double utilization, std::chrono::milliseconds duration) {
    for (auto elapsed = 0ms; elapsed < duration; elapsed += 100ms) {
      dispatcher_.advance(100ms);
      table.update(0, load(utilization), dispatcher_.now());
    }
  }

  FakeDispatcher dispatcher_;
};

TEST_F(SignalTableTest, EntersDeferringOnlyAfterHoldAbove) {
  SignalTable table(2, options());
  table.update(0, load(0.95), dispatcher_.now());
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));

  reportFor(table, 0.95, 400ms);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
  reportFor(table, 0.95, 100ms);
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
  EXPECT_FALSE(table.isDeferring(1, dispatcher_.now()));
  EXPECT_EQ(table.deferringCount(dispatcher_.now()), 1u);
  EXPECT_EQ(table.transitions(), 1u);
}

TEST_F(SignalTableTest, DipBelowRestartsHoldAbove) {
  SignalTable table(1, options());
  table.update(0, load(0.95), dispatcher_.now());
  reportFor(table, 0.95, 400ms);
  reportFor(table, 0.85, 100ms);
  // The hold restarts at the first report above, 100 ms after the dip.
  reportFor(table, 0.95, 500ms);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
  reportFor(table, 0.95, 100ms);
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
}

TEST_F(SignalTableTest, LeavesOnlyAfterHoldBelow) {
  SignalTable table(1, options());
  table.update(0, load(0.95), dispatcher_.now());
  reportFor(table, 0.95, 500ms);
  ASSERT_TRUE(table.isDeferring(0, dispatcher_.now()));

  // Between the watermarks nothing changes, however long it lasts.
  reportFor(table, 0.8, 3s);
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));

  table.update(0, load(0.5), dispatcher_.now());
  reportFor(table, 0.5, 900ms);
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
  reportFor(table, 0.5, 100ms);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
  EXPECT_EQ(table.transitions(), 2u);
}

TEST_F(SignalTableTest, PollEndsHoldWithoutNewReport) {
  SignalTable table(1, options());
  table.update(0, load(0.95), dispatcher_.now());
  dispatcher_.advance(600ms);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
  table.poll(dispatcher_.now());
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
}

TEST_F(SignalTableTest, SmoothsOverHalfLife) {
  SignalTableOptions smooth = options();
  smooth.half_life = 1s;
  SignalTable table(1, smooth);
  table.update(0, load(0.0), dispatcher_.now());
  dispatcher_.advance(1s);
  table.update(0, load(1.0), dispatcher_.now());
  ASSERT_TRUE(table.smoothedLoad(0, dispatcher_.now()));
  EXPECT_NEAR(*table.smoothedLoad(0, dispatcher_.now()), 0.5, 1e-9);

  // More reports at the same instant carry no weight: decay is by time, not by count.
  for (int i = 0; i < 100; ++i) {
    table.update(0, load(1.0), dispatcher_.now());
  }
  EXPECT_NEAR(*table.smoothedLoad(0, dispatcher_.now()), 0.5, 1e-9);

  dispatcher_.advance(2s);
  table.update(0, load(1.0), dispatcher_.now());
  EXPECT_NEAR(*table.smoothedLoad(0, dispatcher_.now()), 0.875, 1e-9);
}

TEST_F(SignalTableTest, SmoothingDelaysDeferring) {
  SignalTableOptions smooth = options();
  smooth.half_life = 1s;
  SignalTable table(1, smooth);
  table.update(0, load(0.5), dispatcher_.now());
  // One spike does not lift the average over defer_above.
  dispatcher_.advance(100ms);
  table.update(0, load(1.0), dispatcher_.now());
  reportFor(table, 0.5, 1s);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
}

TEST_F(SignalTableTest, DeferFlagCountsAsFullLoad) {
  SignalTable table(1, options());
  table.update(0, load(0.1, true), dispatcher_.now());
  dispatcher_.advance(500ms);
  table.update(0, load(0.1, true), dispatcher_.now());
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
  EXPECT_DOUBLE_EQ(*table.smoothedLoad(0, dispatcher_.now()), 1.0);
}

TEST_F(SignalTableTest, ForgetsStaleSignal) {
  SignalTable table(1, options());
  table.update(0, load(0.95), dispatcher_.now());
  reportFor(table, 0.95, 500ms);
  ASSERT_TRUE(table.isDeferring(0, dispatcher_.now()));

  dispatcher_.advance(4900ms);
  EXPECT_TRUE(table.isDeferring(0, dispatcher_.now()));
  dispatcher_.advance(100ms);
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
  EXPECT_FALSE(table.smoothedLoad(0, dispatcher_.now()));
  EXPECT_EQ(table.staleSignals(), 0u);

  table.poll(dispatcher_.now());
  EXPECT_EQ(table.staleSignals(), 1u);
  table.poll(dispatcher_.now());
  EXPECT_EQ(table.staleSignals(), 1u);

  // The next report starts afresh: a new hold is needed.
  table.update(0, load(0.95), dispatcher_.now());
  EXPECT_FALSE(table.isDeferring(0, dispatcher_.now()));
}

TEST_F(SignalTableTest, StaleReportCountedOnNextUpdate) {
  SignalTable table(1, options());
  table.update(0, load(0.3), dispatcher_.now());
  dispatcher_.advance(6s);
  table.update(0, load(0.6), dispatcher_.now());
  EXPECT_EQ(table.staleSignals(), 1u);
  EXPECT_DOUBLE_EQ(*table.smoothedLoad(0, dispatcher_.now()), 0.6);
}

TEST_F(SignalTableTest, ReportsAllDeferringChanges) {
  std::vector<bool> calls;
  SignalTable table(2, options(), [&](bool all) { calls.push_back(all); });
  EXPECT_FALSE(table.allDeferring(dispatcher_.now()));

  table.update(0, load(0.95), dispatcher_.now());
  table.update(1, load(0.95), dispatcher_.now());
  dispatcher_.advance(500ms);
  table.update(0, load(0.95), dispatcher_.now());
  EXPECT_FALSE(table.allDeferring(dispatcher_.now()));
  EXPECT_TRUE(calls.empty());
  table.update(1, load(0.95), dispatcher_.now());
  EXPECT_TRUE(table.allDeferring(dispatcher_.now()));
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_TRUE(calls[0]);

  // Endpoint 1 goes quiet: after its ttl the cluster is no longer all deferring.
  for (int i = 0; i < 50; ++i) {
    dispatcher_.advance(100ms);
    table.update(0, load(0.95), dispatcher_.now());
  }
  EXPECT_FALSE(table.allDeferring(dispatcher_.now()));
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_FALSE(calls[1]);
}

TEST_F(SignalTableTest, IgnoresUnknownEndpoints) {
  SignalTable table(1, options());
  table.update(7, load(1.0), dispatcher_.now());
  EXPECT_FALSE(table.isDeferring(7, dispatcher_.now()));
  EXPECT_FALSE(table.smoothedLoad(7, dispatcher_.now()));
  SignalTable empty(0, options());
  EXPECT_FALSE(empty.allDeferring(dispatcher_.now()));
}

TEST(SignalTableThreadsTest, WorkersUpdateAndQueryTogether) {
  SignalTableOptions options;
  options.hold_above = 0ms;
  std::atomic<int> calls{0};
  SignalTable table(4, options, [&](bool) { calls.fetch_add(1); });
  const MonotonicTime start = std::chrono::steady_clock::now();

  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 20'000; ++i) {
        const MonotonicTime now = start + std::chrono::microseconds(i);
        table.update(static_cast<size_t>((i + t) % 4),
                     LoadReport{.utilization = 0.95, .queue = 0, .defer = false}, now);
        table.allDeferring(now);
      }
    });
  }
  for (auto& worker : workers) {
    worker.join();
  }
  EXPECT_TRUE(table.allDeferring(start + 20ms));
  EXPECT_GE(calls.load(), 1);
}

} // namespace
} // namespace deferd::filters::backpressure
