#pragma once

// Upstream endpoints and their keep-alive connection pools, one set per worker.
//
// Threading: everything here belongs to one worker and is used only on its thread, so no field
// needs a lock. Each worker may open at most ceil(max_connections / workers) connections to an
// endpoint, which keeps the cluster-wide limit without a shared counter.
//
// A request takes a connection with acquire(): an idle one if the endpoint has one (checked to
// be still open), else a new one once connected, else, at the limit, it waits for a release
// until connect_timeout runs out. release() returns a connection for reuse or closes it.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "filters/common/endpoint.h"
#include "filters/filter.h"
#include "proxy/metrics.h"
#include "proxy/net.h"

namespace deferd {

class UpstreamEndpoint;
class Http2ConnectionPool;

struct UpstreamConnection {
  // The read buffer is bounded so a peer that never finishes a framing element (a header or
  // a chunk-size line) cannot grow it without limit: 64 KiB of response head plus a body piece.
  static constexpr size_t kReadBufferLimit = 128 * 1024;

  explicit UpstreamConnection(boost::asio::io_context& io) : socket(io), buffer(kReadBufferLimit) {}

  Socket socket;
  boost::beast::flat_buffer buffer;
  std::shared_ptr<UpstreamEndpoint> endpoint;
  bool reused = false;      // it served a request before this one
  MonotonicTime idle_since; // when it was last released
};

using ConnectionPtr = std::unique_ptr<UpstreamConnection>;

// The outcome of acquire(): a connection, or why there is none.
struct AcquireResult {
  ConnectionPtr connection;
  UpstreamFailure failure = UpstreamFailure::kCount; // kCount when `connection` is set
};

using AcquireCallback = std::function<void(AcquireResult)>;

class UpstreamEndpoint : public std::enable_shared_from_this<UpstreamEndpoint> {
public:
  UpstreamEndpoint(boost::asio::io_context& io, boost::asio::ip::tcp::endpoint address,
                   std::string label, ClusterStats* stats, uint32_t max_connections);
  ~UpstreamEndpoint();

  // Returns an idle connection, or null. The fast path of acquire(), with no callback to build.
  //
  // A connection idle for over a second, or any connection when `verify` is set, is first
  // checked to be still open with one non-blocking peek. A connection used within the last
  // second skips that system call: if its upstream closed it in that second, the request fails
  // on it and, having no body, is retried on a new connection. Requests with a body cannot be
  // retried, so callers pass `verify` for them.
  ConnectionPtr takeIdle(MonotonicTime now, bool verify);

  // Returns an idle connection at once if one is open, else null and calls `callback` later,
  // on this worker's thread, with a new connection or the failure.
  ConnectionPtr acquire(std::chrono::milliseconds connect_timeout, AcquireCallback callback);

  static constexpr std::chrono::seconds kVerifyAfterIdle{1};

  // Returns a connection. A `reusable` one is kept idle or handed to a waiting request.
  void release(ConnectionPtr connection, bool reusable, MonotonicTime now);

  // Closes idle connections unused for `idle_timeout`.
  void closeIdle(MonotonicTime now, std::chrono::milliseconds idle_timeout);

  // Closes every idle connection (drain, or the endpoint left the cluster).
  void closeAllIdle();

  // This endpoint's multiplexed HTTP/2 connections (http2 clusters), created on first use.
  Http2ConnectionPool& http2Pool();

  const boost::asio::ip::tcp::endpoint& address() const { return address_; }
  const std::string& label() const { return label_; }

  uint32_t in_flight = 0; // requests using this endpoint on this worker

  // What every worker knows of this address; set by the worker when it creates the endpoint.
  std::shared_ptr<filters::SharedEndpoint> shared;

private:
  struct Waiter;

  void connect(std::chrono::milliseconds timeout, AcquireCallback callback);
  void onConnectionClosed();
  void serveWaiter();

  boost::asio::io_context& io_;
  boost::asio::ip::tcp::endpoint address_;
  std::string label_;
  ClusterStats* stats_;
  uint32_t max_connections_;
  uint32_t open_connections_ = 0;   // idle plus in use, plus connects in progress
  std::vector<ConnectionPtr> idle_; // most recently used last
  std::deque<std::shared_ptr<Waiter>> waiters_;
  std::unique_ptr<Http2ConnectionPool> http2_pool_;
};

} // namespace deferd
