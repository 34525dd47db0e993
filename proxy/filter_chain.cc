#include "proxy/filter_chain.h"

#include <utility>

namespace deferd {

FilterChain::FilterChain(ChainOwner& owner, std::vector<std::unique_ptr<StreamFilter>> filters)
    : owner_(owner), filters_(std::move(filters)) {
  for (auto& filter : filters_) {
    filter->setCallbacks(*this);
  }
}

FilterChain::~FilterChain() { endStream(StreamEnd::kDownstreamClosed); }

void FilterChain::runRequestHeaders(HeaderMap& headers) {
  request_headers_ = &headers;
  next_ = 0;
  iterate();
}

void FilterChain::iterate() {
  while (next_ < filters_.size()) {
    StreamFilter& filter = *filters_[next_];
    next_++;
    FilterStatus status = filter.onRequestHeaders(*request_headers_);

    // The filter may have replied from inside onRequestHeaders.
    if (decided_) {
      return;
    }
    if (status == FilterStatus::kStop) {
      held_ = true;
      return;
    }
  }
  decided_ = true;
  owner_.onChainContinue();
}

void FilterChain::continueRequest() {
  if (decided_ || ended_ || !held_) {
    return;
  }
  held_ = false;
  iterate();
}

void FilterChain::sendLocalReply(LocalReplyReason reason) {
  if (decided_ || ended_) {
    return;
  }
  decided_ = true;
  held_ = false;
  owner_.onChainLocalReply(reason);
}

bool FilterChain::routeToCluster(size_t cluster_index) {
  if (decided_ || ended_) {
    return false;
  }
  return owner_.onChainRouteToCluster(cluster_index);
}

void FilterChain::runResponseHeaders(int status, HeaderMap& headers) {
  // Only filters that saw the request see the response: a filter after the one that
  // replied locally never ran.
  for (size_t i = next_; i > 0; i--) {
    filters_[i - 1]->onResponseHeaders(status, headers);
  }
}

void FilterChain::endStream(StreamEnd end) {
  if (ended_) {
    return;
  }
  ended_ = true;
  held_ = false;
  for (auto& filter : filters_) {
    filter->onStreamEnd(end);
  }
}

} // namespace deferd
