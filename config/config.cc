#include "config/config.h"

namespace deferd::config {

std::string Address::toString() const {
  // An IPv6 literal contains colons, so it needs brackets to keep the port separable.
  if (host.find(':') != std::string::npos) {
    return "[" + host + "]:" + std::to_string(port);
  }
  return host + ":" + std::to_string(port);
}

const Cluster* Config::findCluster(const std::string& name) const {
  for (const Cluster& cluster : clusters) {
    if (cluster.name == name) {
      return &cluster;
    }
  }
  return nullptr;
}

} // namespace deferd::config
