#pragma once

// The open streams of one HTTP/2 connection, by stream id.
//
// nghttp2 calls back for one stream several times in a row: once per field of a header block,
// then for the frame. find() therefore keeps the last stream it found, and a lookup of the
// same id skips the hash. take() and takeAll() drop that entry with the streams, so it never
// outlives its stream.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace deferd {

template <typename Stream> class Http2StreamMap {
public:
  using Map = std::unordered_map<int32_t, std::shared_ptr<Stream>>;

  // Returns the stream with this id, or null when there is none.
  Stream* find(int32_t id) {
    if (id == last_id_) {
      return last_;
    }
    auto found = streams_.find(id);
    if (found == streams_.end()) {
      return nullptr;
    }
    last_id_ = id;
    last_ = found->second.get();
    return last_;
  }

  void insert(int32_t id, std::shared_ptr<Stream> stream) {
    streams_.emplace(id, std::move(stream));
  }

  // Removes the stream with this id and returns it, or null when there is none.
  std::shared_ptr<Stream> take(int32_t id) {
    auto found = streams_.find(id);
    if (found == streams_.end()) {
      return nullptr;
    }
    std::shared_ptr<Stream> stream = std::move(found->second);
    streams_.erase(found);
    forgetLast();
    return stream;
  }

  // Removes every stream and returns them.
  Map takeAll() {
    Map streams = std::move(streams_);
    streams_.clear();
    forgetLast();
    return streams;
  }

  // Returns copies of the stream pointers, for a loop whose calls may add or remove streams.
  std::vector<std::shared_ptr<Stream>> copy() const {
    std::vector<std::shared_ptr<Stream>> streams;
    streams.reserve(streams_.size());
    for (const auto& [id, stream] : streams_) {
      streams.push_back(stream);
    }
    return streams;
  }

  bool contains(int32_t id) const { return streams_.count(id) > 0; }
  bool empty() const { return streams_.empty(); }
  size_t size() const { return streams_.size(); }

private:
  void forgetLast() {
    last_id_ = 0;
    last_ = nullptr;
  }

  Map streams_;
  int32_t last_id_ = 0; // id 0 names no stream
  Stream* last_ = nullptr;
};

} // namespace deferd
