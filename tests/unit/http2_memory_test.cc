#include "proxy/http2_memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace deferd {
namespace {

// AddressSanitizer builds return every block to malloc, so there is no pool to test.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPooled = false;
#else
constexpr bool kPooled = true;
#endif

void* allocate(size_t size) {
  nghttp2_mem* mem = http2Allocator();
  return mem->malloc(size, mem->mem_user_data);
}

void release(void* ptr) {
  nghttp2_mem* mem = http2Allocator();
  mem->free(ptr, mem->mem_user_data);
}

TEST(Http2AllocatorTest, ReusesFreedBlockOfSameClass) {
  if (!kPooled) {
    GTEST_SKIP() << "blocks are not pooled under AddressSanitizer";
  }
  void* first = allocate(100);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 16, 0u);
  size_t cached = http2AllocatorCachedBytes();
  release(first);
  EXPECT_GT(http2AllocatorCachedBytes(), cached);

  // 110 bytes fall in the same 64-byte class as 100, so the freed block comes back.
  void* second = allocate(110);
  EXPECT_EQ(second, first);
  EXPECT_EQ(http2AllocatorCachedBytes(), cached);
  release(second);
}

TEST(Http2AllocatorTest, LargeBlocksBypassPool) {
  size_t cached = http2AllocatorCachedBytes();
  void* large = allocate(kMaxPooledBytes * 4);
  ASSERT_NE(large, nullptr);
  std::memset(large, 0xab, kMaxPooledBytes * 4);
  release(large);
  EXPECT_EQ(http2AllocatorCachedBytes(), cached);
}

TEST(Http2AllocatorTest, CallocZeroes) {
  nghttp2_mem* mem = http2Allocator();
  auto* dirty = static_cast<unsigned char*>(allocate(200));
  std::memset(dirty, 0xff, 200);
  release(dirty);

  auto* zeroed = static_cast<unsigned char*>(mem->calloc(50, 4, mem->mem_user_data));
  ASSERT_NE(zeroed, nullptr);
  for (size_t i = 0; i < 200; i++) {
    ASSERT_EQ(zeroed[i], 0) << "byte " << i;
  }
  release(zeroed);
  EXPECT_EQ(mem->calloc(SIZE_MAX / 2, 4, mem->mem_user_data), nullptr);
}

TEST(Http2AllocatorTest, ReallocKeepsContents) {
  nghttp2_mem* mem = http2Allocator();
  auto* data = static_cast<char*>(allocate(10));
  std::memcpy(data, "0123456789", 10);

  // Within the block's class: the same block.
  EXPECT_EQ(mem->realloc(data, 40, mem->mem_user_data), data);

  // Past the pool's largest class: a new block with the old bytes.
  auto* grown = static_cast<char*>(mem->realloc(data, kMaxPooledBytes * 2, mem->mem_user_data));
  ASSERT_NE(grown, nullptr);
  EXPECT_EQ(std::memcmp(grown, "0123456789", 10), 0);
  release(grown);

  auto* fresh = static_cast<char*>(mem->realloc(nullptr, 30, mem->mem_user_data));
  ASSERT_NE(fresh, nullptr);
  release(fresh);
}

TEST(Http2AllocatorTest, CacheStaysWithinLimit) {
  if (!kPooled) {
    GTEST_SKIP() << "blocks are not pooled under AddressSanitizer";
  }
  std::vector<void*> blocks;
  for (size_t i = 0; i < kMaxCachedBytes / 1024 + 100; i++) {
    blocks.push_back(allocate(1000));
  }
  for (void* block : blocks) {
    release(block);
  }
  EXPECT_LE(http2AllocatorCachedBytes(), kMaxCachedBytes);
  EXPECT_GT(http2AllocatorCachedBytes(), kMaxCachedBytes - 1024);
}

} // namespace
} // namespace deferd
