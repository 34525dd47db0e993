#pragma once

// Runs one request's filters in order and routes their decisions back to the stream.
//
// The chain is Beast-free so its outcomes (continue, hold, local reply, client gone while held)
// are unit-tested without sockets. It calls the owning stream through ChainOwner; the stream
// owns the chain and destroys it only after endStream().

#include <memory>
#include <vector>

#include "filters/filter.h"

namespace deferd {

class ChainOwner {
public:
  virtual ~ChainOwner() = default;
  // Every filter continued: the stream goes on to the upstream.
  virtual void onChainContinue() = 0;
  // A filter asked for a local reply.
  virtual void onChainLocalReply(LocalReplyReason reason) = 0;
  virtual RequestInfo& requestInfo() = 0;
  virtual Dispatcher& dispatcher() = 0;
  // A filter redirects the request to another cluster; see FilterCallbacks::routeToCluster.
  virtual bool onChainRouteToCluster(size_t /*cluster_index*/) { return false; }
};

class FilterChain : private FilterCallbacks {
public:
  FilterChain(ChainOwner& owner, std::vector<std::unique_ptr<StreamFilter>> filters);
  ~FilterChain() override;

  FilterChain(const FilterChain&) = delete;
  FilterChain& operator=(const FilterChain&) = delete;

  // Starts the request headers through the chain. `headers` must outlive the chain's hold.
  void runRequestHeaders(HeaderMap& headers);

  // Runs the response headers through every filter that saw the request, in reverse order.
  void runResponseHeaders(int status, HeaderMap& headers);

  // Tells every filter the stream ended. Idempotent, and called by the destructor if it was
  // not called before.
  void endStream(StreamEnd end);

  bool held() const { return held_; }

private:
  void continueRequest() override;
  void sendLocalReply(LocalReplyReason reason) override;
  RequestInfo& requestInfo() override { return owner_.requestInfo(); }
  Dispatcher& dispatcher() override { return owner_.dispatcher(); }
  bool routeToCluster(size_t cluster_index) override;

  void iterate();

  ChainOwner& owner_;
  std::vector<std::unique_ptr<StreamFilter>> filters_;
  HeaderMap* request_headers_ = nullptr;
  size_t next_ = 0;      // index of the next filter to run on the request
  bool held_ = false;    // a filter returned kStop and has not resumed yet
  bool decided_ = false; // the chain continued or replied; further calls are ignored
  bool ended_ = false;
};

} // namespace deferd
