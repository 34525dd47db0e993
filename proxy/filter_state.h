#pragma once

// Filter state that outlives config snapshots.
//
// A reload builds a new Snapshot with new filter factories, but some filter state must carry
// over: the priority inheritance table holds the priorities of requests in flight, which the
// app's sub-calls still need after the reload. FilterState owns such state for the life of the
// process. Snapshot::build asks it for each shared object; it returns the object it already
// has when the options that shape it are unchanged, and a new one otherwise.
//
// Threading: build() runs on the main thread only; the objects it hands out are safe to use
// from every worker. tick() also runs on the main thread, once a second.

#include <memory>
#include <optional>

#include "config/config.h"
#include "filters/common/endpoint.h"
#include "filters/priority/inheritance_table.h"
#include "proxy/metrics.h"

namespace deferd {

class FilterState {
public:
  // Returns the process-wide inheritance table, created for these options.
  std::shared_ptr<filters::priority::InheritanceTable>
  inheritanceTable(const config::InheritanceConfig& options);

  // Removes expired state and exports gauges that are read rather than counted.
  void tick(Metrics& metrics);

  // Shared endpoint state; the registry locks itself, so workers call it directly.
  filters::EndpointRegistry& endpoints() { return endpoints_; }

private:
  filters::EndpointRegistry endpoints_;
  std::shared_ptr<filters::priority::InheritanceTable> table_;
  std::optional<config::InheritanceConfig> table_options_;
};

} // namespace deferd
