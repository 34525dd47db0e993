#include "proxy/http2_memory.h"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace deferd {

namespace {

constexpr size_t kGranule = 64;
constexpr size_t kClasses = kMaxPooledBytes / kGranule; // blocks of class c are (c + 1) * 64 bytes
constexpr size_t kHeaderBytes = 16;                     // keeps the user pointer 16-aligned
constexpr uint32_t kUnpooled = UINT32_MAX;

// Under AddressSanitizer every block goes back to malloc at once, so a use after free or an
// overflow in nghttp2 is still reported instead of landing in a reused block.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPoolEnabled = true;
#else
constexpr bool kPoolEnabled = true;
#endif

struct Header {
  size_t usable;       // bytes the caller may use
  uint32_t size_class; // kUnpooled for blocks from malloc directly
  uint32_t unused;
};
static_assert(sizeof(Header) == kHeaderBytes);

struct FreeBlock {
  FreeBlock* next;
};

// Set once the calling thread's pool is destroyed at thread exit. Trivially destructible, so it
// stays readable by the destructors that run after the pool's.
thread_local bool t_pool_destroyed = false;

// One thread's lists of free pooled blocks, by size class.
class ThreadPool {
public:
  ~ThreadPool() {
    t_pool_destroyed = true;
    for (FreeBlock*& head : lists_) {
      while (head) {
        FreeBlock* next = head->next;
        std::free(head);
        head = next;
      }
    }
  }

  void* take(uint32_t size_class) {
    FreeBlock* block = lists_[size_class];
    if (!block) {
      return nullptr;
    }
    lists_[size_class] = block->next;
    cached_bytes_ -= blockBytes(size_class);
    return block;
  }

  // Returns false when the thread already keeps kMaxCachedBytes, so the caller frees it.
  bool keep(void* raw, uint32_t size_class) {
    size_t bytes = blockBytes(size_class);
    if (cached_bytes_ + bytes > kMaxCachedBytes) {
      return false;
    }
    auto* block = static_cast<FreeBlock*>(raw);
    block->next = lists_[size_class];
    lists_[size_class] = block;
    cached_bytes_ += bytes;
    return true;
  }

  size_t cachedBytes() const { return cached_bytes_; }

  static size_t blockBytes(uint32_t size_class) { return (size_class + 1) * kGranule; }

private:
  std::array<FreeBlock*, kClasses> lists_{};
  size_t cached_bytes_ = 0;
};

ThreadPool& threadPool() {
  thread_local ThreadPool pool;
  return pool;
}

Header* headerOf(void* ptr) {
  return reinterpret_cast<Header*>(static_cast<char*>(ptr) - kHeaderBytes);
}

void* allocate(size_t size, void*) {
  size_t total = size + kHeaderBytes;
  void* raw = nullptr;
  uint32_t size_class = kUnpooled;
  size_t usable = size;
  if (total <= kMaxPooledBytes) {
    size_class = static_cast<uint32_t>((total - 1) / kGranule);
    usable = ThreadPool::blockBytes(size_class) - kHeaderBytes;
    raw = t_pool_destroyed ? nullptr : threadPool().take(size_class);
    if (!raw) {
      raw = std::malloc(ThreadPool::blockBytes(size_class));
    }
  } else {
    raw = std::malloc(total);
  }
  if (!raw) {
    return nullptr;
  }
  auto* header = static_cast<Header*>(raw);
  header->usable = usable;
  header->size_class = size_class;
  return static_cast<char*>(raw) + kHeaderBytes;
}

void release(void* ptr, void*) {
  if (!ptr) {
    return;
  }
  Header* header = headerOf(ptr);
  if (!kPoolEnabled || header->size_class == kUnpooled || t_pool_destroyed ||
      !threadPool().keep(header, header->size_class)) {
    std::free(header);
  }
}

void* allocateZeroed(size_t count, size_t size, void* user_data) {
  if (size != 0 && count > SIZE_MAX / size) {
    return nullptr;
  }
  void* ptr = allocate(count * size, user_data);
  if (ptr) {
    std::memset(ptr, 0, count * size);
  }
  return ptr;
}

void* reallocate(void* ptr, size_t size, void* user_data) {
  if (!ptr) {
    return allocate(size, user_data);
  }
  Header* header = headerOf(ptr);
  if (size <= header->usable) {
    return ptr;
  }
  void* grown = allocate(size, user_data);
  if (!grown) {
    return nullptr;
  }
  std::memcpy(grown, ptr, header->usable);
  release(ptr, user_data);
  return grown;
}

nghttp2_mem allocator{nullptr, &allocate, &release, &allocateZeroed, &reallocate};

} // namespace

nghttp2_mem* http2Allocator() { return &allocator; }

size_t http2AllocatorCachedBytes() { return t_pool_destroyed ? 0 : threadPool().cachedBytes(); }

} // namespace deferd
