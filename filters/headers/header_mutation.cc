#include "filters/headers/header_mutation.h"

#include <utility>

namespace deferd::filters {

void applyHeaderMutation(const config::HeaderMutation& mutation, HeaderMap& headers) {
  for (const std::string& name : mutation.remove) {
    headers.remove(name);
  }
  for (const auto& [name, value] : mutation.add) {
    headers.set(name, value);
  }
}

HeaderMutationFilter::HeaderMutationFilter(const config::HeaderMutation& request,
                                           const config::HeaderMutation& response)
    : request_(request), response_(response) {}

FilterStatus HeaderMutationFilter::onRequestHeaders(HeaderMap& headers) {
  applyHeaderMutation(request_, headers);
  return FilterStatus::kContinue;
}

void HeaderMutationFilter::onResponseHeaders(int /*status*/, HeaderMap& headers) {
  applyHeaderMutation(response_, headers);
}

HeaderMutationFactory::HeaderMutationFactory(config::HeaderMutation request,
                                             config::HeaderMutation response)
    : request_(std::move(request)), response_(std::move(response)) {}

std::unique_ptr<StreamFilter> HeaderMutationFactory::createFilter() const {
  return std::make_unique<HeaderMutationFilter>(request_, response_);
}

} // namespace deferd::filters
