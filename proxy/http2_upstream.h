#pragma once

// Multiplexed HTTP/2 cleartext connections to the endpoints of `protocol: http2` clusters.
//
// Each worker keeps, per endpoint, a pool of nghttp2 client sessions driven from its
// io_context like the downstream sessions: reads go to nghttp2_session_mem_recv(), and the
// output of nghttp2_session_mem_send() is written one async_write at a time. A request goes to
// the first connection with a free stream slot (the peer's SETTINGS_MAX_CONCURRENT_STREAMS,
// taken as 100 until its SETTINGS arrives) that has not received GOAWAY. When every connection
// is full, a new one is opened, up to the endpoint's per-worker connection limit. Past that,
// requests share the least busy connection, and nghttp2 queues what the peer does not yet
// allow. Connections without streams are closed after the cluster's idle_timeout.
//
// GOAWAY and REFUSED_STREAM: the peer did not process streams above the GOAWAY's last stream id
// (RFC 9113 section 6.8), so their owners get the request back as retryable. The owner retries
// only if it has sent no request body byte yet.
//
// Flow control: automatic WINDOW_UPDATE is off. The owner calls consumeResponse() once it has
// passed response bytes on to its client, so a slow client slows the upstream server through
// the stream window instead of filling deferd's memory.
//
// Threading and lifetime: everything belongs to one worker thread. A connection lives while the
// pool or a pending handler holds it. An Http2UpstreamRequest belongs to the downstream stream.
// Destroying or cancelling it resets the upstream stream and guarantees that the handler is not
// called again.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

#include "filters/filter.h"
#include "proxy/http_translation.h"
#include "proxy/metrics.h"

namespace deferd {

// The receiver of an upstream HTTP/2 exchange's events: the stream that owns it. Every call
// happens on the worker's thread, from inside the connection's nghttp2 processing, so the
// handler must not destroy its Http2UpstreamRequest from inside a call (it may cancel it).
class Http2UpstreamHandler {
public:
  virtual ~Http2UpstreamHandler() = default;

  // Final response headers (status 200 or above), names lower-case, no pseudo-header fields.
  virtual void onUpstreamHeaders(unsigned status, HeaderList fields, bool end_stream) = 0;
  virtual void onUpstreamData(const uint8_t* data, size_t size) = 0;
  // The response ended, with its trailers if it had any.
  virtual void onUpstreamComplete(HeaderList trailers) = 0;
  // The exchange failed. `retryable`: the upstream did not process the request (REFUSED_STREAM,
  // above a GOAWAY's last stream id, or the connection failed before the request was sent).
  virtual void onUpstreamFailed(UpstreamFailure failure, bool retryable,
                                std::string_view cause) = 0;
  // Fills `out` with up to `length` request body bytes, as nghttp2's data source read callback
  // does. At the end of the body it sets NGHTTP2_DATA_FLAG_EOF, and stores request trailers in
  // `trailers` if there are any.
  virtual ssize_t readUpstreamBody(uint8_t* out, size_t length, uint32_t* flags,
                                   HeaderList* trailers) = 0;
};

class Http2UpstreamConnection;
struct Http2Exchange;

// One request on an upstream HTTP/2 connection.
class Http2UpstreamRequest {
public:
  Http2UpstreamRequest(std::shared_ptr<Http2UpstreamConnection> connection,
                       std::shared_ptr<Http2Exchange> exchange);
  ~Http2UpstreamRequest();

  Http2UpstreamRequest(const Http2UpstreamRequest&) = delete;
  Http2UpstreamRequest& operator=(const Http2UpstreamRequest&) = delete;

  // More request body (or its end) is available to readUpstreamBody().
  void resumeBody();
  // The owner has passed `size` response body bytes on: let the upstream send more.
  void consumeResponse(size_t size);
  // Resets the upstream stream (CANCEL). The handler is not called afterwards.
  void cancel();

private:
  std::shared_ptr<Http2UpstreamConnection> connection_;
  std::shared_ptr<Http2Exchange> exchange_;
};

// One endpoint's HTTP/2 connections on one worker.
class Http2ConnectionPool {
public:
  Http2ConnectionPool(boost::asio::io_context& io, boost::asio::ip::tcp::endpoint address,
                      std::string label, ClusterStats* stats, uint32_t max_connections);
  ~Http2ConnectionPool();

  // Sends `head` as a request, with a body if `has_body`, on a connection with a free stream
  // slot. The handler learns the outcome through its callbacks, never from inside this call.
  std::unique_ptr<Http2UpstreamRequest> startRequest(const Http2RequestHead& head, bool has_body,
                                                     Http2UpstreamHandler& handler,
                                                     std::chrono::milliseconds connect_timeout);

  // Closes connections without streams that have been idle for `idle_timeout`.
  void closeIdle(MonotonicTime now, std::chrono::milliseconds idle_timeout);
  // Closes connections without streams, and sends GOAWAY on the others (drain).
  void closeAllIdle();

private:
  boost::asio::io_context& io_;
  boost::asio::ip::tcp::endpoint address_;
  std::string label_;
  ClusterStats* stats_;
  uint32_t max_connections_;
  std::vector<std::shared_ptr<Http2UpstreamConnection>> connections_;
};

} // namespace deferd
