#pragma once

// Runtime switches: policy modes set through the admin listener, without a config change.
//
// An override replaces one policy's `mode` until the next successful reload, which clears every
// override so the file is again the whole truth. The daemon applies overrides by building a
// copy of the file's Config with the modes replaced, and a new snapshot from that copy. Filters
// therefore read a switched mode on the next request as if the file contained it.
//
// Thread model: used only on the main thread, like the rest of the reload path.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/admin.h"

namespace deferd {

// Parses `enforce`, `shadow` or `off`; surrounding whitespace (such as a trailing newline from
// `curl -d`) is ignored.
std::optional<config::PolicyMode> parsePolicyMode(std::string_view text);

std::string_view policyModeName(config::PolicyMode mode);

// Reads the admin bearer token from `path`, without surrounding whitespace. Returns nothing and
// sets `error` when the file cannot be read or contains no token.
std::optional<std::string> readAdminToken(const std::string& path, std::string* error);

class RuntimeSwitches {
public:
  // Validates and records a switch of `policy` to the mode in `body`. Returns the admin reply:
  // 404 for a policy the file does not define, 400 for an invalid mode, 200 otherwise.
  // `changed` is set when the effective mode changed, so the caller rebuilds the snapshot.
  AdminReply setMode(const config::Config& file_config, const std::string& policy,
                     std::string_view body, const std::string& peer, bool* changed);

  // The file's config with every override applied; `file_config` itself when there is none.
  std::shared_ptr<const config::Config>
  apply(const std::shared_ptr<const config::Config>& file_config) const;

  // YAML comment lines that list the overrides for /config; empty when there is none.
  std::string describe(const config::Config& file_config) const;

  // Drops every override, after a reload. Returns how many there were.
  size_t clear();

private:
  std::map<std::string, config::PolicyMode> modes_; // policy name -> mode set at runtime
};

} // namespace deferd
