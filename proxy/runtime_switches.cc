#include "proxy/runtime_switches.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

namespace deferd {

namespace {

constexpr std::string_view kWhitespace = " \t\r\n";

std::string_view trim(std::string_view text) {
  size_t first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) {
    return {};
  }
  size_t last = text.find_last_not_of(kWhitespace);
  return text.substr(first, last - first + 1);
}

} // namespace

std::optional<config::PolicyMode> parsePolicyMode(std::string_view text) {
  std::string_view word = trim(text);
  if (word == "enforce") {
    return config::PolicyMode::kEnforce;
  }
  if (word == "shadow") {
    return config::PolicyMode::kShadow;
  }
  if (word == "off") {
    return config::PolicyMode::kOff;
  }
  return std::nullopt;
}

std::string_view policyModeName(config::PolicyMode mode) {
  switch (mode) {
  case config::PolicyMode::kEnforce:
    return "enforce";
  case config::PolicyMode::kShadow:
    return "shadow";
  case config::PolicyMode::kOff:
    return "off";
  }
  return "unknown";
}

std::optional<std::string> readAdminToken(const std::string& path, std::string* error) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    *error = "admin.token_file " + path + ": failed to open file: " + std::strerror(errno);
    return std::nullopt;
  }
  std::ostringstream text;
  text << file.rdbuf();
  std::string token(trim(text.str()));
  if (token.empty()) {
    *error = "admin.token_file " + path + ": the file is empty; write the token into it";
    return std::nullopt;
  }
  return token;
}

AdminReply RuntimeSwitches::setMode(const config::Config& file_config, const std::string& policy,
                                    std::string_view body, const std::string& peer, bool* changed) {
  *changed = false;
  auto defined = file_config.policies.find(policy);
  if (defined == file_config.policies.end()) {
    spdlog::info("admin: {} requested a switch of policy {}, which is not defined", peer, policy);
    return {404, "policy " + policy + " not found in the running config\n"};
  }
  std::optional<config::PolicyMode> mode = parsePolicyMode(body);
  if (!mode) {
    spdlog::info("admin: {} sent an invalid mode for policy {}", peer, policy);
    return {400, "invalid mode '" + std::string(trim(body).substr(0, 32)) +
                     "': the body must be enforce, shadow or off\n"};
  }

  config::PolicyMode file_mode = defined->second.mode;
  auto current = modes_.find(policy);
  config::PolicyMode effective = current != modes_.end() ? current->second : file_mode;
  if (*mode == effective) {
    return {200, "policy " + policy + " is already " + std::string(policyModeName(*mode)) + "\n"};
  }

  // A switch back to the file's mode removes the override instead of storing a copy of it.
  if (*mode == file_mode) {
    modes_.erase(policy);
  } else {
    modes_[policy] = *mode;
  }
  *changed = true;
  spdlog::info("admin: {} switched policy {} from {} to {} (config file: {}) until the next reload",
               peer, policy, policyModeName(effective), policyModeName(*mode),
               policyModeName(file_mode));
  return {200, "policy " + policy + " is now " + std::string(policyModeName(*mode)) +
                   " until the next reload\n"};
}

std::shared_ptr<const config::Config>
RuntimeSwitches::apply(const std::shared_ptr<const config::Config>& file_config) const {
  if (modes_.empty()) {
    return file_config;
  }
  auto effective = std::make_shared<config::Config>(*file_config);
  for (const auto& [name, mode] : modes_) {
    auto policy = effective->policies.find(name);
    if (policy != effective->policies.end()) {
      policy->second.mode = mode;
    }
  }
  return effective;
}

std::string RuntimeSwitches::describe(const config::Config& file_config) const {
  if (modes_.empty()) {
    return {};
  }
  std::string text = "# runtime_overrides: policy modes set with POST /policies/NAME/mode; the\n"
                     "# next reload resets them. The policies below show the effective mode.\n";
  for (const auto& [name, mode] : modes_) {
    auto policy = file_config.policies.find(name);
    std::string_view file_mode =
        policy != file_config.policies.end() ? policyModeName(policy->second.mode) : "none";
    text += "#   " + name + ": " + std::string(policyModeName(mode)) +
            " (config file: " + std::string(file_mode) + ")\n";
  }
  return text;
}

size_t RuntimeSwitches::clear() {
  size_t count = modes_.size();
  modes_.clear();
  return count;
}

} // namespace deferd
