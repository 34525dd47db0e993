#pragma once

// Reading one sample out of a Prometheus text exposition, for tests of the metrics deferd
// exports.

#include <optional>
#include <sstream>
#include <string>

namespace deferd::testing {

// Returns the value of the sample whose name and labels are exactly `series`, for example
// `deferd_ready` or `deferd_requests_total{cluster="c",listener="l",status_class="2xx"}`.
// prometheus-cpp writes labels sorted by name.
inline std::optional<double> sampleValue(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

} // namespace deferd::testing
