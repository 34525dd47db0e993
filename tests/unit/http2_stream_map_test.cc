#include "proxy/http2_stream_map.h"

#include <memory>

#include <gtest/gtest.h>

namespace deferd {
namespace {

struct FakeStream {
  int value = 0;
};

TEST(Http2StreamMapTest, FindsInsertedStreams) {
  Http2StreamMap<FakeStream> streams;
  auto first = std::make_shared<FakeStream>(FakeStream{1});
  auto second = std::make_shared<FakeStream>(FakeStream{3});
  streams.insert(1, first);
  streams.insert(3, second);

  EXPECT_EQ(streams.find(1), first.get());
  EXPECT_EQ(streams.find(1), first.get()); // from the last-found entry
  EXPECT_EQ(streams.find(3), second.get());
  EXPECT_EQ(streams.find(5), nullptr);
  EXPECT_EQ(streams.size(), 2u);
  EXPECT_TRUE(streams.contains(3));
  EXPECT_FALSE(streams.contains(5));
}

TEST(Http2StreamMapTest, TakeForgetsTheLastFound) {
  Http2StreamMap<FakeStream> streams;
  streams.insert(1, std::make_shared<FakeStream>(FakeStream{1}));
  ASSERT_NE(streams.find(1), nullptr);

  std::shared_ptr<FakeStream> removed = streams.take(1);

  ASSERT_NE(removed, nullptr);
  EXPECT_EQ(removed->value, 1);
  EXPECT_EQ(streams.find(1), nullptr);
  EXPECT_EQ(streams.take(1), nullptr);
  EXPECT_TRUE(streams.empty());
}

TEST(Http2StreamMapTest, TakeAllEmptiesTheMap) {
  Http2StreamMap<FakeStream> streams;
  streams.insert(1, std::make_shared<FakeStream>(FakeStream{1}));
  streams.insert(3, std::make_shared<FakeStream>(FakeStream{3}));
  ASSERT_NE(streams.find(3), nullptr);

  auto all = streams.takeAll();

  EXPECT_EQ(all.size(), 2u);
  EXPECT_TRUE(streams.empty());
  EXPECT_EQ(streams.find(3), nullptr);
}

TEST(Http2StreamMapTest, CopyOutlivesRemoval) {
  Http2StreamMap<FakeStream> streams;
  streams.insert(1, std::make_shared<FakeStream>(FakeStream{7}));

  auto copy = streams.copy();
  streams.take(1);

  ASSERT_EQ(copy.size(), 1u);
  EXPECT_EQ(copy[0]->value, 7);
}

} // namespace
} // namespace deferd
