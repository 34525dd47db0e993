#include "proxy/filter_state.h"

#include <chrono>

namespace deferd {

std::shared_ptr<filters::priority::InheritanceTable>
FilterState::inheritanceTable(const config::InheritanceConfig& options) {
  bool same = table_options_ && table_options_->max_entries == options.max_entries &&
              table_options_->ttl == options.ttl &&
              table_options_->release_grace == options.release_grace;
  if (table_ && same) {
    return table_;
  }

  filters::priority::InheritanceTableOptions table_options;
  table_options.max_entries = options.max_entries;
  table_options.ttl = options.ttl;
  table_options.release_grace = options.release_grace;
  // Each lookup passes its policy's depth limit, so the table's own is never used.
  table_options.max_depth = filters::priority::kMaxHop;
  // TODO: entries of requests in flight are lost when a reload changes the table's bounds.
  table_ = std::make_shared<filters::priority::InheritanceTable>(
      table_options, [] { return std::chrono::steady_clock::now(); });
  table_options_ = options;
  return table_;
}

void FilterState::tick(Metrics& metrics) {
  if (table_) {
    table_->removeExpired();
    metrics.recordInheritanceTable(table_->size(), table_->evictions());
  }
}

} // namespace deferd
