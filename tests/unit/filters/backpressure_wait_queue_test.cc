#include "filters/backpressure/wait_queue.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::backpressure {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class WaitQueueTest : public ::testing::Test {
protected:
  static QueueOptions options() {
    QueueOptions options;
    options.max_length = 4;
    options.max_wait = 1000ms;
    options.aging = 100ms;
    options.deadline_margin = 5ms;
    return options;
  }

  static Waiter makeWaiter(uint64_t id, int urgency, MonotonicTime enqueued,
                           std::optional<MonotonicTime> deadline = std::nullopt) {
    Waiter waiter;
    waiter.id = id;
    waiter.urgency = urgency;
    waiter.enqueued = enqueued;
    waiter.deadline = deadline;
    return waiter;
  }

  PushResult push(WaitQueue& queue, uint64_t id, int urgency,
                  std::optional<MonotonicTime> deadline = std::nullopt) {
    return queue.push(makeWaiter(id, urgency, dispatcher_.now(), deadline), dispatcher_.now());
  }

  std::vector<uint64_t> drain(WaitQueue& queue) {
    std::vector<uint64_t> order;
    while (auto waiter = queue.popMostUrgent(dispatcher_.now())) {
      order.push_back(waiter->id);
    }
    return order;
  }

  FakeDispatcher dispatcher_;
};

TEST_F(WaitQueueTest, OrdersByUrgencyThenArrival) {
  QueueOptions no_aging = options();
  no_aging.aging = 0ms;
  no_aging.max_length = 10;
  WaitQueue queue(no_aging);
  push(queue, 1, 5);
  push(queue, 2, 1);
  push(queue, 3, 5);
  push(queue, 4, 0);
  push(queue, 5, 1);
  EXPECT_EQ(drain(queue), (std::vector<uint64_t>{4, 2, 5, 1, 3}));
  EXPECT_TRUE(queue.empty());
}

TEST_F(WaitQueueTest, AgingRaisesLongWaiters) {
  WaitQueue queue(options());
  push(queue, 1, 7);
  dispatcher_.advance(650ms); // six levels of aging: effective urgency 1
  push(queue, 2, 2);
  push(queue, 3, 1);
  EXPECT_EQ(queue.effectiveUrgency(makeWaiter(1, 7, dispatcher_.now() - 650ms), dispatcher_.now()),
            1);
  // Equal effective urgency: the earlier arrival goes first.
  EXPECT_EQ(drain(queue), (std::vector<uint64_t>{1, 3, 2}));
}

TEST_F(WaitQueueTest, AgingStopsAtMostUrgent) {
  WaitQueue queue(options());
  const Waiter waiter = makeWaiter(1, 3, dispatcher_.now());
  EXPECT_EQ(queue.effectiveUrgency(waiter, dispatcher_.now() + 99ms), 3);
  EXPECT_EQ(queue.effectiveUrgency(waiter, dispatcher_.now() + 100ms), 2);
  EXPECT_EQ(queue.effectiveUrgency(waiter, dispatcher_.now() + 10s), 0);
}

TEST_F(WaitQueueTest, ShedsNewcomerWhenNotMoreUrgent) {
  WaitQueue queue(options());
  for (uint64_t id = 1; id <= 4; ++id) {
    ASSERT_TRUE(push(queue, id, 3).queued);
  }
  const PushResult tie = push(queue, 5, 3);
  EXPECT_FALSE(tie.queued);
  EXPECT_FALSE(tie.displaced);
  EXPECT_FALSE(push(queue, 6, 7).queued);
  EXPECT_EQ(queue.size(), 4u);
}

TEST_F(WaitQueueTest, ShedsNewestOfLeastUrgentWaiting) {
  WaitQueue queue(options());
  push(queue, 1, 6);
  push(queue, 2, 2);
  push(queue, 3, 6);
  push(queue, 4, 4);

  const PushResult result = push(queue, 5, 3);
  EXPECT_TRUE(result.queued);
  ASSERT_TRUE(result.displaced);
  EXPECT_EQ(result.displaced->id, 3u);
  EXPECT_EQ(drain(queue), (std::vector<uint64_t>{2, 5, 4, 1}));
}

TEST_F(WaitQueueTest, ShedsByEffectiveUrgency) {
  WaitQueue queue(options());
  push(queue, 1, 7);
  dispatcher_.advance(500ms); // id 1 is now at effective urgency 2
  push(queue, 2, 4);
  push(queue, 3, 3);
  push(queue, 4, 3);

  const PushResult result = push(queue, 5, 1);
  ASSERT_TRUE(result.displaced);
  EXPECT_EQ(result.displaced->id, 2u);
}

TEST_F(WaitQueueTest, ZeroLengthShedsEverything) {
  QueueOptions none = options();
  none.max_length = 0;
  WaitQueue queue(none);
  EXPECT_FALSE(push(queue, 1, 0).queued);
  EXPECT_TRUE(queue.empty());
}

TEST_F(WaitQueueTest, TimesOutAtMaxWaitOrDeadline) {
  WaitQueue queue(options());
  push(queue, 1, 3);
  push(queue, 2, 3, dispatcher_.now() + 300ms);
  push(queue, 3, 3, dispatcher_.now() + 5s);
  ASSERT_TRUE(queue.nextTimeout());
  EXPECT_EQ(*queue.nextTimeout(), dispatcher_.now() + 295ms);

  dispatcher_.advance(294ms);
  EXPECT_FALSE(queue.popTimedOut(dispatcher_.now()));
  dispatcher_.advance(1ms);
  auto first = queue.popTimedOut(dispatcher_.now());
  ASSERT_TRUE(first);
  EXPECT_EQ(first->waiter.id, 2u);
  EXPECT_EQ(first->kind, TimeoutKind::kDeadline);
  EXPECT_FALSE(queue.popTimedOut(dispatcher_.now()));

  dispatcher_.advance(705ms);
  auto second = queue.popTimedOut(dispatcher_.now());
  auto third = queue.popTimedOut(dispatcher_.now());
  ASSERT_TRUE(second);
  ASSERT_TRUE(third);
  EXPECT_EQ(second->kind, TimeoutKind::kMaxWait);
  EXPECT_EQ(third->kind, TimeoutKind::kMaxWait);
  EXPECT_TRUE(queue.empty());
  EXPECT_FALSE(queue.nextTimeout());
}

TEST_F(WaitQueueTest, RemovesById) {
  WaitQueue queue(options());
  push(queue, 1, 3);
  push(queue, 2, 3);
  EXPECT_TRUE(queue.remove(1));
  EXPECT_FALSE(queue.remove(1));
  EXPECT_FALSE(queue.remove(99));
  EXPECT_EQ(drain(queue), (std::vector<uint64_t>{2}));
  dispatcher_.advance(2s);
  EXPECT_FALSE(queue.popTimedOut(dispatcher_.now()));
}

TEST_F(WaitQueueTest, CountsDepthByUrgency) {
  WaitQueue queue(options());
  push(queue, 1, 0);
  push(queue, 2, 7);
  push(queue, 3, 7);
  push(queue, 4, 42); // clamped to 7
  const auto depth = queue.depthByUrgency();
  EXPECT_EQ(depth[0], 1u);
  EXPECT_EQ(depth[3], 0u);
  EXPECT_EQ(depth[7], 3u);
}

} // namespace
} // namespace deferd::filters::backpressure
