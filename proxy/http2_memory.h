#pragma once

// A per-thread free-list allocator for nghttp2's sessions.
//
// nghttp2 allocates for every stream, frame and header field it handles: callgrind counted
// about fifteen malloc calls per request from nghttp2 for h2c to an h2c upstream, across the
// two sessions that a request crosses. With a hundred and more streams in flight, the
// per-thread cache of glibc 2.36 (seven blocks a size) overflows and most of those calls take
// malloc's slower shared paths. Over 20,000 such requests, callgrind counted about a tenth
// fewer instructions when glibc's cache was made large enough, so the same idea is applied
// here, to nghttp2 alone. The deferd binary links jemalloc, whose per-thread cache is large
// enough, and these lists still save about 5% of the instructions of such a request: a block
// comes back without the size lookup that free() makes.
//
// Blocks up to kMaxPooledBytes are rounded up to a multiple of 64 bytes and, when freed, kept
// on the calling thread's list for their size instead of going back to malloc. Each block has
// a 16-byte header in front that records its size, because nghttp2's free() does not pass one.
// A thread keeps at most kMaxCachedBytes of free blocks; beyond that, free() returns blocks to
// malloc. Larger blocks (nghttp2's 16 KiB frame buffers, for example) go straight to malloc.
//
// Threads: the lists are thread_local, so no lock is taken. A block may be freed on another
// thread than the one that allocated it and then joins that thread's list, which is safe
// because every list is touched by its own thread only.

#include <cstddef>

#include <nghttp2/nghttp2.h>

namespace deferd {

inline constexpr size_t kMaxPooledBytes = 4096;
inline constexpr size_t kMaxCachedBytes = 4 * 1024 * 1024;

// The allocator to pass to nghttp2_session_*_new3(). It lives for the whole process.
nghttp2_mem* http2Allocator();

// Free bytes the calling thread keeps on its lists, for tests.
size_t http2AllocatorCachedBytes();

} // namespace deferd
