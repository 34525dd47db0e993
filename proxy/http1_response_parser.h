#pragma once

// An incremental HTTP/1.1 response parser for the HTTP/2 data path, free of Beast so the
// HTTP/2 translation units stay small.
//
// The caller keeps the received bytes and calls parse() on those not yet consumed. Each call
// returns one event and the number of bytes it used. Body data is returned as a view into the
// caller's bytes, valid until the caller consumes them. Framing follows RFC 9112 section 6:
// no body for 1xx, 204, 304 and responses to HEAD; chunked when Transfer-Encoding is exactly
// "chunked"; else Content-Length; else the body ends when the upstream closes. A response that
// peers could frame differently (two differing Content-Length values, Content-Length with
// Transfer-Encoding, bare LF in chunk framing) is an error, never relayed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "proxy/http_translation.h"

namespace deferd {

class Http1ResponseParser {
public:
  enum class Event {
    kNeedMore, // every byte passed was used; call again with more
    kHead,     // status and headers are ready (status() < 200 for an interim response)
    kData,     // `data` is a piece of the body
    kDone,     // the response is complete, and trailers() returns its trailers
    kError,    // the response is malformed, and error() returns the cause
  };

  struct Step {
    Event event = Event::kNeedMore;
    size_t consumed = 0;
    std::string_view data;
  };

  // Bytes of status line plus headers, and of trailers, that a response may have.
  static constexpr size_t kMaxHeadBytes = 64 * 1024;

  // `head_request`: the request was HEAD, so the response has no body whatever its framing.
  explicit Http1ResponseParser(bool head_request) : head_request_(head_request) {}

  Step parse(std::string_view input);

  // The upstream closed the connection. Returns kDone when that ends a close-delimited body,
  // else kError.
  Event onEof();

  unsigned status() const { return status_; }
  const HeaderList& headers() const { return headers_; }
  // Moves the fields out after kHead, leaving headers() empty.
  HeaderList takeHeaders() { return std::move(headers_); }
  const HeaderList& trailers() const { return trailers_; }
  // Whether the connection may carry another request once this response is done.
  bool keepAlive() const { return keep_alive_; }
  // The body is delimited by Content-Length or chunked (not by the connection closing).
  bool framed() const { return framing_ != Framing::kClose; }
  bool hasBody() const { return framing_ != Framing::kNone; }
  std::string_view error() const { return error_; }

private:
  enum class State { kHead, kBody, kChunkSize, kChunkData, kChunkEnd, kTrailers, kDone, kError };
  enum class Framing { kNone, kLength, kChunked, kClose };

  Step parseHead(std::string_view input);
  Step parseChunkSize(std::string_view input);
  Step parseTrailers(std::string_view input);
  Step fail(std::string_view message);

  bool head_request_;
  State state_ = State::kHead;
  Framing framing_ = Framing::kNone;
  unsigned status_ = 0;
  bool keep_alive_ = true;
  uint64_t remaining_ = 0; // body or chunk bytes left
  size_t trailer_bytes_ = 0;
  HeaderList headers_;
  HeaderList trailers_;
  std::string_view error_;
};

} // namespace deferd
