#pragma once

// The header mutation filter: removes, then adds, request headers on the way up and response
// headers on the way down, as a route or policy configures. Adding replaces any existing field
// of the same name, so a client cannot smuggle a second value past it.

#include <memory>

#include "config/config.h"
#include "filters/filter.h"

namespace deferd::filters {

class HeaderMutationFilter : public StreamFilter {
public:
  HeaderMutationFilter(const config::HeaderMutation& request,
                       const config::HeaderMutation& response);

  FilterStatus onRequestHeaders(HeaderMap& headers) override;
  void onResponseHeaders(int status, HeaderMap& headers) override;

private:
  const config::HeaderMutation& request_;
  const config::HeaderMutation& response_;
};

// Keeps the mutations it was built from alive; the factory outlives every filter it creates
// because the config snapshot that owns it outlives every stream that uses it.
class HeaderMutationFactory : public FilterFactory {
public:
  HeaderMutationFactory(config::HeaderMutation request, config::HeaderMutation response);

  std::unique_ptr<StreamFilter> createFilter() const override;

  static bool empty(const config::HeaderMutation& mutation) {
    return mutation.add.empty() && mutation.remove.empty();
  }

private:
  config::HeaderMutation request_;
  config::HeaderMutation response_;
};

// Applies one mutation to a header map.
void applyHeaderMutation(const config::HeaderMutation& mutation, HeaderMap& headers);

} // namespace deferd::filters
