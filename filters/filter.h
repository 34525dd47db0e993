#pragma once

// The filter interface of deferd's request path.
//
// Each route has an ordered chain of filters. For one request, the chain is created when the
// request headers have been read and lives until the stream ends. A filter sees the request
// headers on the way up (onRequestHeaders) and the response headers on the way down
// (onResponseHeaders, in reverse order). On the way up a filter may:
//
//   - continue: return FilterStatus::kContinue;
//   - answer locally: call callbacks().sendLocalReply(reason) and return kStop;
//   - hold the request: return kStop and later, from the same worker thread, call either
//     callbacks().continueRequest() or callbacks().sendLocalReply(reason).
//
// Threading: a chain belongs to one worker and every call into it, including timer callbacks
// and continueRequest(), happens on that worker's thread. Filters that share state across
// workers (limits, tables) must make that state safe themselves.
//
// Lifetime: onStreamEnd() is called exactly once, when the stream ends for any reason. A
// held filter must treat it as the end of the hold: after it, the callbacks must not be used.
// This is how a client that disconnects while its request waits frees its place at once.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/local_reply.h"

namespace deferd {

namespace filters {
struct SharedEndpoint;
} // namespace filters

using MonotonicTime = std::chrono::steady_clock::time_point;

// A timer on the worker's event loop. Destroying it cancels it.
class Timer {
public:
  virtual ~Timer() = default;
  virtual void enableTimer(std::chrono::milliseconds delay) = 0;
  virtual void disableTimer() = 0;
  virtual bool enabled() const = 0;
};

// The worker's event loop as filters see it: a clock, timers, and a way in from other threads.
// Tests use a fake one.
class Dispatcher {
public:
  virtual ~Dispatcher() = default;
  virtual MonotonicTime now() const = 0;
  virtual std::unique_ptr<Timer> createTimer(std::function<void()> callback) = 0;
  // Runs `callback` on this worker's thread, later; safe to call from any thread. Shared state
  // that decides on one worker for a request of another (a released slot handed to a waiter)
  // wakes the waiter this way.
  virtual void post(std::function<void()> callback) = 0;
};

// Request or response headers. Names are compared case-insensitively.
class HeaderMap {
public:
  virtual ~HeaderMap() = default;
  virtual std::optional<std::string_view> get(std::string_view name) const = 0;
  // Replaces every field of that name with one field.
  virtual void set(std::string_view name, std::string_view value) = 0;
  virtual void append(std::string_view name, std::string_view value) = 0;
  virtual void remove(std::string_view name) = 0;
  virtual void forEach(
      const std::function<void(std::string_view name, std::string_view value)>& visit) const = 0;
};

enum class FilterStatus { kContinue, kStop };

// Why a stream ended, as passed to a filter's onStreamEnd().
enum class StreamEnd {
  kCompleted,        // the response was sent completely
  kLocalReply,       // deferd sent a local reply
  kDownstreamClosed, // the client went away before the response was complete
  kUpstreamFailed,   // the upstream failed after the response had started
};

// Facts about the request that filters read and the access log reports.
struct RequestInfo {
  std::string_view listener;
  std::string_view route_cluster;
  std::string_view method;
  std::string_view authority;
  std::string_view path;
  std::string_view request_id;
  std::string_view downstream_address; // the peer's IP address as text
  MonotonicTime start;

  // Set by the priority filter: the urgency the request runs at (0 most urgent .. 7), the
  // urgency its header asked for, where the effective one came from ("header", "inherited",
  // "boosted" or "default"), and its correlation id. Unset without a priority filter.
  std::optional<int> urgency;
  std::optional<int> requested_urgency;
  std::string_view priority_source;
  std::string correlation_id;

  // The endpoint the request was sent to, once one was picked; null before.
  filters::SharedEndpoint* upstream = nullptr;
  // Set when deferd made a local reply, before the response filters run.
  std::optional<LocalReplyReason> local_reply;
  // The retry-after of a 503 local reply, when a filter sets its own value (a
  // breaker's time until its next probe, for example).
  std::optional<std::chrono::seconds> retry_after;
  // Overrides of the local reply's status from the reason's table entry, set by the fault
  // filter: an HTTP status, or for gRPC requests a grpc-status sent with HTTP 200.
  std::optional<uint16_t> local_reply_status;
  std::optional<uint32_t> grpc_status;

  // Short code for the access log, set by the filter that decided something
  // (for example "queued" or "shed"). Empty when nothing was decided.
  std::string decision;
};

class FilterCallbacks {
public:
  virtual ~FilterCallbacks() = default;

  // Resumes a held request with the next filter.
  virtual void continueRequest() = 0;

  // Ends the chain with a local reply; the reply itself is built in one place (local_reply.h).
  virtual void sendLocalReply(LocalReplyReason reason) = 0;

  virtual RequestInfo& requestInfo() = 0;
  virtual Dispatcher& dispatcher() = 0;

  // Sends the request to another cluster of the snapshot (its index in the config's cluster
  // list) instead of the route's. Call it before continuing. Returns false when the stream
  // cannot be redirected, and then nothing changed.
  virtual bool routeToCluster(size_t /*cluster_index*/) { return false; }
};

class StreamFilter {
public:
  virtual ~StreamFilter() = default;

  void setCallbacks(FilterCallbacks& callbacks) { callbacks_ = &callbacks; }

  virtual FilterStatus onRequestHeaders(HeaderMap& headers) = 0;
  virtual void onResponseHeaders(int /*status*/, HeaderMap& /*headers*/) {}
  virtual void onStreamEnd(StreamEnd /*end*/) {}

protected:
  FilterCallbacks& callbacks() { return *callbacks_; }

private:
  FilterCallbacks* callbacks_ = nullptr;
};

// Creates one filter instance per request. Factories are built from the config when it loads
// and shared read-only by all workers.
class FilterFactory {
public:
  virtual ~FilterFactory() = default;
  virtual std::unique_ptr<StreamFilter> createFilter() const = 0;
};

} // namespace deferd
