#include "config/loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "config/sources.h"
#include "config/values.h"
#include "config/yaml_reader.h"

// The loader walks the YAML tree once, section by section. Each section first checks its map
// (type, unknown keys, duplicate keys), then reads its values. A value with a problem records a
// Diagnostic and keeps its default, so the walk continues and one run reports every problem.
// Cross-references (route to cluster, route to policy) are checked after the walk, once every
// cluster and policy name is known. Diagnostics are sorted by position before they are returned.

namespace deferd::config {

namespace {

// Writes control characters as \xNN, so a value quoted in a message can neither cut the line
// short (NUL), nor start a line that looks like another diagnostic (CR, LF), nor send terminal
// escapes.
std::string escapeControlCharacters(const std::string& text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      escaped.append("\\x");
      escaped.push_back(kHex[c >> 4]);
      escaped.push_back(kHex[c & 0xf]);
    } else {
      escaped.push_back(static_cast<char>(c));
    }
  }
  return escaped;
}

} // namespace

std::string Diagnostic::toString() const {
  std::string text = escapeControlCharacters(message);
  if (location.line <= 0) {
    return location.file + ": " + text;
  }
  return location.file + ":" + std::to_string(location.line) + ":" +
         std::to_string(location.column) + ": " + text;
}

namespace {

const Keys kRootKeys = {"node",     "admin",      "workers",      "drain_timeout",
                        "log",      "access_log", "listeners",    "clusters",
                        "policies", "templates",  "policy_files", "inheritance"};
const Keys kPolicyFileKeys = {"policies", "templates"};
const Keys kNodeKeys = {"service"};
const Keys kAdminKeys = {"address", "token_file"};
const Keys kLogKeys = {"level"};
const Keys kAccessLogKeys = {"path"};
const Keys kListenerKeys = {
    "name",   "address", "direction",     "trust",          "routes",
    "limits", "http2",   "trusted_cidrs", "priority_floor", "generate_request_id"};
const Keys kHttp2Keys = {"max_concurrent_streams",
                         "initial_window_size",
                         "connection_window_size",
                         "reset_burst",
                         "reset_rate",
                         "max_control_frames",
                         "max_continuations",
                         "max_empty_frames"};
const Keys kLimitsKeys = {"max_connections", "max_header_bytes", "max_header_count",
                          "header_timeout",  "idle_timeout",     "stream_idle_timeout"};
const Keys kRouteKeys = {"match",   "cluster",         "policy",          "priority",
                         "timeout", "request_headers", "response_headers"};
const Keys kMatchKeys = {"prefix", "authority", "headers"};
const Keys kHeaderMatcherKeys = {"name", "exact", "invert"};
const Keys kMutationKeys = {"add", "remove"};
const Keys kClusterKeys = {
    "name",          "endpoints",       "protocol",     "lb",      "connect_timeout",
    "resolve_every", "max_connections", "idle_timeout", "capacity"};
const Keys kCapacityKeys = {"max_concurrent", "max_rps"};
const Keys kPolicyKeys = {
    "extends",      "mode",    "rollout", "request_headers", "response_headers", "priority",
    "backpressure", "breaker", "fault"};

// Maximum number of templates in an `extends:` chain, from a policy to its farthest template.
constexpr size_t kMaxExtendsDepth = 8;

const Keys kPriorityKeys = {"header", "default", "classes", "inherit", "boost"};
const Keys kInheritKeys = {"from", "max_depth", "ttl"};
const Keys kBoostKeys = {"after"};
const Keys kInheritanceKeys = {"max_entries", "ttl", "release_grace"};

const Keys kFaultKeys = {"delay", "abort", "header_control"};
const Keys kFaultDelayKeys = {"percent", "duration"};
const Keys kFaultAbortKeys = {"percent", "status", "grpc_status"};

const Keys kBackpressureKeys = {
    "limiter", "initial_limit",   "min_limit", "max_limit",   "gradient",           "aimd",
    "queue",   "deadline_header", "signal",    "emit_signal", "all_deferring_scale"};
const Keys kGradientKeys = {"tolerance", "smoothing"};
const Keys kAimdKeys = {"increase", "backoff", "latency_threshold"};
const Keys kQueueKeys = {"max_length", "max_wait", "aging", "on_max_wait", "predict_wait"};
const Keys kSignalKeys = {"ttl",        "ewma_half_life", "defer_above",
                          "hold_above", "resume_below",   "hold_below"};

const Keys kBreakerKeys = {
    "window", "open_when", "failure",  "cooldown", "max_cooldown", "cooldown_multiplier",
    "jitter", "half_open", "fallback", "outlier"};
const Keys kBreakerWindowKeys = {"type", "size", "min_requests"};
const Keys kOpenWhenKeys = {"failure_rate", "slow_call_rate", "slow_call", "consecutive_failures"};
const Keys kFailureKeys = {"status", "connect_failure", "reset", "timeout", "grpc"};
const Keys kHalfOpenKeys = {"probes", "timeout"};
const Keys kFallbackKeys = {"cluster", "on_loop", "when_deferring"};
const Keys kOutlierKeys = {"consecutive_failures", "base_ejection", "max_ejection",
                           "max_ejection_percent"};

const std::vector<std::pair<std::string_view, BreakerWindowType>> kWindowTypes = {
    {"count", BreakerWindowType::kCount}, {"time", BreakerWindowType::kTime}};
const std::vector<std::pair<std::string_view, LoopAction>> kLoopActions = {
    {"reject", LoopAction::kReject}, {"primary", LoopAction::kPrimary}};
// gRPC status codes by their canonical names.
const std::vector<std::pair<std::string_view, int>> kGrpcCodes = {{"OK", 0},
                                                                  {"CANCELLED", 1},
                                                                  {"UNKNOWN", 2},
                                                                  {"INVALID_ARGUMENT", 3},
                                                                  {"DEADLINE_EXCEEDED", 4},
                                                                  {"NOT_FOUND", 5},
                                                                  {"ALREADY_EXISTS", 6},
                                                                  {"PERMISSION_DENIED", 7},
                                                                  {"RESOURCE_EXHAUSTED", 8},
                                                                  {"FAILED_PRECONDITION", 9},
                                                                  {"ABORTED", 10},
                                                                  {"OUT_OF_RANGE", 11},
                                                                  {"UNIMPLEMENTED", 12},
                                                                  {"INTERNAL", 13},
                                                                  {"UNAVAILABLE", 14},
                                                                  {"DATA_LOSS", 15},
                                                                  {"UNAUTHENTICATED", 16}};

const std::vector<std::pair<std::string_view, LimiterKind>> kLimiters = {
    {"gradient", LimiterKind::kGradient},
    {"aimd", LimiterKind::kAimd},
    {"fixed", LimiterKind::kFixed}};
const std::vector<std::pair<std::string_view, MaxWaitAction>> kMaxWaitActions = {
    {"reject", MaxWaitAction::kReject}, {"proceed", MaxWaitAction::kProceed}};

// Urgency names every listener understands, whatever classes the policies define.
const std::map<std::string, int, std::less<>> kStandardClasses = {
    {"critical", 0}, {"high", 1}, {"normal", 3}, {"low", 5}, {"sheddable", 7}};

// Headers that the proxy derives from the connection or the message framing. A mutation that
// changed them could make deferd and its peers disagree on where a message ends.
const Keys kProtectedHeaders = {"connection", "content-length",    "host",
                                "keep-alive", "proxy-connection",  "te",
                                "trailer",    "transfer-encoding", "upgrade"};

const std::vector<std::pair<std::string_view, Direction>> kDirections = {
    {"inbound", Direction::kInbound}, {"outbound", Direction::kOutbound}};
const std::vector<std::pair<std::string_view, Trust>> kTrustLevels = {
    {"trusted", Trust::kTrusted}, {"untrusted", Trust::kUntrusted}};
const std::vector<std::pair<std::string_view, UpstreamProtocol>> kProtocols = {
    {"http1", UpstreamProtocol::kHttp1}, {"http2", UpstreamProtocol::kHttp2}};
const std::vector<std::pair<std::string_view, LbPolicy>> kLbPolicies = {
    {"round_robin", LbPolicy::kRoundRobin}, {"least_request", LbPolicy::kLeastRequest}};
const std::vector<std::pair<std::string_view, PolicyMode>> kPolicyModes = {
    {"enforce", PolicyMode::kEnforce}, {"shadow", PolicyMode::kShadow}, {"off", PolicyMode::kOff}};
const std::vector<std::pair<std::string_view, std::string_view>> kLogLevels = {
    {"trace", "trace"}, {"debug", "debug"},       {"info", "info"}, {"warn", "warn"},
    {"error", "error"}, {"critical", "critical"}, {"off", "off"}};

template <typename T, typename U> void setIfValid(const std::optional<T>& value, U* target) {
  if (value) {
    *target = *value;
  }
}

class Loader : private YamlReader {
public:
  explicit Loader(const ConfigSources& sources)
      : YamlReader(sources.files.at(0).path), sources_(sources) {}

  LoadResult load();

private:
  struct Reference {
    std::string name;
    Field field;
  };

  // A policy or template as written, before its `extends:` chain is merged in.
  struct Definition {
    Field key; // the name
    Field value;
  };
  using Definitions = std::map<std::string, Definition>;

  void parseRoot(const Field& root);
  void parseNode(const Field& field);
  void parseAdmin(const Field& field);
  void parseWorkers(const Field& field);
  void parseLog(const Field& field);
  void parseAccessLog(const Field& field);
  void parseListener(const Field& field);
  void parseListenerName(const Field& field, Listener* listener);
  void parseListenerAddress(const Field& field, Listener* listener);
  void parseLimits(const Field& field, ListenerLimits* limits);
  void parseHttp2Limits(const Field& field, Http2Limits* limits);
  void parseRoute(const Field& field, Route* route);
  void parseMatch(const Field& field, RouteMatch* match);
  void parseHeaderMatcher(const Field& field, std::vector<HeaderMatcher>* matchers);
  void parseHeaderMutation(const Field& field, HeaderMutation* mutation);
  // Records the line of each added name in `added`, for the conflict check of removals.
  void parseHeaderAdditions(const Field& field,
                            std::vector<std::pair<std::string, std::string>>* headers,
                            std::map<std::string, Location>* added);
  void parseHeaderRemovals(const Field& field, const std::map<std::string, Location>& added,
                           std::vector<std::string>* names);
  // Reports and returns true when `name` is one of kProtectedHeaders.
  bool rejectProtectedHeader(const Field& field, const std::string& name);
  void parseCluster(const Field& field);
  void parseClusterName(const Field& field, Cluster* cluster);
  void parseEndpoints(const Field& field, std::vector<Address>* endpoints);
  void parseCapacity(const Field& field, Capacity* capacity);
  // Parses the YAML of the file table's `file`. Returns its root, or nothing after reporting
  // why it contains no document; an empty file is reported only when `allow_empty` is false.
  std::optional<Field> parseDocument(const std::string& yaml, size_t file, bool allow_empty);
  void parsePolicyFiles(const Field& field);
  void parsePolicyFile(size_t source);
  // Records each policy or template of the map in `definitions`.
  void collectDefinitions(const Field& field, std::string_view kind, Definitions* definitions);
  // Returns the definition's body with the bodies of its `extends:` chain as bases.
  Field inherit(const Definition& definition);
  // Returns the template that `extends` names, or reports why there is none.
  // `chain` lists the definitions from the one being merged on. A policy at its start is not a
  // template and takes no part in a cycle, so `cycle_from` is 1 for a policy and 0 otherwise.
  const Definition* findParent(const Field& extends, const std::vector<std::string>& chain,
                               size_t cycle_from);
  void parseDefinitions();
  void parsePolicy(const Field& field, Policy* policy);
  void parsePriority(const Field& field, PriorityPolicy* priority);
  void parseClasses(const Field& field, std::map<std::string, int>* classes);
  void parseInherit(const Field& field, PriorityPolicy* priority);
  void parseInheritance(const Field& field);
  void parseBackpressure(const Field& field, BackpressurePolicy* backpressure);
  std::string setElsewhere(const Field* other, const Field& reported) const;
  void parseFault(const Field& field, FaultPolicy* fault);
  void parseSignal(const Field& field, SignalPolicy* signal);
  void parseBreaker(const Field& field, BreakerPolicy* breaker);
  void parseBreakerWindow(const Field& field, BreakerPolicy* breaker);
  void parseBreakerFailure(const Field& field, BreakerPolicy* breaker);
  void parseBreakerFallback(const Field& field, BreakerPolicy* breaker);
  void parseOutlier(const Field& field, OutlierPolicy* outlier);
  // Reads a plain number within [min, max].
  std::optional<double> readNumber(const Field& field, double min, double max);
  void parseTrustedCidrs(const Field& field, Listener* listener);
  void parsePriorityFloor(const Field& field, Listener* listener);
  void parseRoutePriority(const Field& field, Route* route);
  // Reads an urgency given as a class name of `classes` or as a number from 0 to 7.
  std::optional<int> readUrgency(const Field& field, const std::map<std::string, int>& classes);
  // A route whose policy falls back to the route's own cluster would redirect to itself.
  void checkBreakerFallback(const Route& route, const Field& field);
  void checkReferences();

  const ConfigSources& sources_;
  std::vector<bool> sources_read_; // per source file: parsed already
  Definitions templates_;
  Definitions policies_;
  Config config_;

  // First occurrences, for messages about the second one.
  std::map<std::string, Location> listener_names_;
  std::map<std::string, std::pair<std::string, Location>> listener_addresses_;
  std::map<std::string, Location> cluster_names_;
  enum class AdminState { kDefault, kGiven, kInvalid };
  AdminState admin_state_ = AdminState::kDefault; // kInvalid skips the listener comparison
  int admin_line_ = 0;

  std::vector<Reference> cluster_references_;
  std::vector<Reference> policy_references_;
};

LoadResult Loader::load() {
  config_.source = file();
  sources_read_.assign(sources_.files.size(), false);
  sources_read_[0] = true;

  const SourceFile& main = sources_.files[0];
  if (!main.error.empty()) {
    error(Location{file(), 0, 0}, main.error);
  } else if (std::optional<Field> root = parseDocument(main.text, 0, false)) {
    try {
      parseRoot(*root);
      checkReferences();
    } catch (const YAML::Exception& e) {
      // The walk only uses yaml-cpp accessors that do not throw on a parsed tree, so reaching
      // this is a bug in the loader.
      error(0, e.mark, std::string("internal error while reading the configuration: ") + e.what());
    }
  }

  LoadResult result;
  if (hasErrors()) {
    result.diagnostics = takeDiagnostics();
  } else {
    result.config = std::make_shared<const Config>(std::move(config_));
  }
  return result;
}

std::optional<Field> Loader::parseDocument(const std::string& yaml, size_t file, bool allow_empty) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml);
  } catch (const YAML::ParserException& e) {
    error(file, e.mark, "invalid YAML: " + e.msg);
    return std::nullopt;
  } catch (const YAML::Exception& e) {
    error(Location{fileName(file), 0, 0}, std::string("invalid YAML: ") + e.what());
    return std::nullopt;
  }

  if (documents.empty() || documents[0].IsNull()) {
    if (!allow_empty) {
      error(Location{fileName(file), 1, 1}, "the file contains no configuration");
    }
    return std::nullopt;
  }
  if (documents.size() > 1) {
    error(file, documents[1].Mark(),
          "the file contains " + std::to_string(documents.size()) +
              " YAML documents; a configuration is exactly one document");
    // The first document is still checked, so one run reports its problems too.
  }
  return Field{documents[0], documents[0].Mark(), "", documents[0].Mark(), file, {}};
}

// --- Top level -------------------------------------------------------------------------------

void Loader::parseRoot(const Field& root) {
  std::optional<Section> section = openSection(root, kRootKeys);
  if (!section) {
    return;
  }

  // The admin address comes first so listener addresses can be compared with it.
  if (const Field* field = section->find("admin")) {
    parseAdmin(*field);
  }
  if (const Field* field = require(*section, "node")) {
    parseNode(*field);
  }
  if (const Field* field = section->find("workers")) {
    parseWorkers(*field);
  }
  if (const Field* field = section->find("drain_timeout")) {
    setIfValid(readDuration(*field), &config_.drain_timeout);
  }
  if (const Field* field = section->find("log")) {
    parseLog(*field);
  }
  if (const Field* field = section->find("access_log")) {
    parseAccessLog(*field);
  }
  if (const Field* field = section->find("inheritance")) {
    parseInheritance(*field);
  }

  if (const Field* field = section->find("clusters")) {
    if (auto items = listItems(*field, "clusters")) {
      for (const Field& item : *items) {
        parseCluster(item);
      }
    }
  }
  // Every policy and template is known before any is parsed, so `extends:` may name a template
  // defined further down or in another file. Listeners come after, so routes find policies.
  if (const Field* field = section->find("policies")) {
    collectDefinitions(*field, "policy", &policies_);
  }
  if (const Field* field = section->find("templates")) {
    collectDefinitions(*field, "template", &templates_);
  }
  if (const Field* field = section->find("policy_files")) {
    parsePolicyFiles(*field);
  }
  parseDefinitions();

  if (const Field* field = require(*section, "listeners")) {
    if (auto items = listItems(*field, "listeners")) {
      if (items->empty()) {
        error(*field, "must contain at least one listener");
      }
      for (const Field& item : *items) {
        parseListener(item);
      }
    }
  }
}

void Loader::parseNode(const Field& field) {
  std::optional<Section> section = openSection(field, kNodeKeys);
  if (!section) {
    return;
  }
  if (const Field* service = require(*section, "service")) {
    setIfValid(readName(*service), &config_.service);
  }
}

void Loader::parseAdmin(const Field& field) {
  std::optional<Section> section = openSection(field, kAdminKeys);
  if (!section) {
    return;
  }
  if (const Field* address = section->find("address")) {
    std::optional<Address> admin = readAddress(*address, AddressUse::kBind);
    setIfValid(admin, &config_.admin.address);
    admin_state_ = admin ? AdminState::kGiven : AdminState::kInvalid;
    admin_line_ = locate(*address).line;
  }
  if (const Field* token_file = section->find("token_file")) {
    std::optional<std::string> path = readString(*token_file);
    if (path && path->empty()) {
      error(*token_file, "must not be empty; give the path of a file that contains the token");
    } else if (path) {
      config_.admin.token_file = *path;
    }
  }
}

void Loader::parseWorkers(const Field& field) {
  if (isPlainScalar(field.value) && field.value.Scalar() == "auto") {
    config_.workers = 0;
    return;
  }
  std::string problem;
  std::optional<uint64_t> workers;
  if (isPlainScalar(field.value)) {
    workers = parseUnsigned(field.value.Scalar(), 0, 256, &problem);
  }
  if (!workers) {
    error(field,
          "expected 'auto' or a whole number from 0 to 256, found " + describeNode(field.value));
    return;
  }
  config_.workers = static_cast<uint32_t>(*workers);
}

void Loader::parseLog(const Field& field) {
  std::optional<Section> section = openSection(field, kLogKeys);
  if (!section) {
    return;
  }
  if (const Field* level = section->find("level")) {
    setIfValid(readEnum(*level, kLogLevels), &config_.log.level);
  }
}

void Loader::parseAccessLog(const Field& field) {
  if (field.value.IsScalar()) {
    std::optional<bool> enabled = readBool(field);
    setIfValid(enabled, &config_.access_log.enabled);
    return;
  }
  if (!field.value.IsMap()) {
    error(field, "expected true, false or a map with 'path', found " + describeNode(field.value));
    return;
  }

  std::optional<Section> section = openSection(field, kAccessLogKeys);
  if (!section) {
    return;
  }
  config_.access_log.enabled = true;
  if (const Field* path = require(*section, "path")) {
    std::optional<std::string> text = readString(*path);
    if (text && text->empty()) {
      error(*path, "must not be empty; write '-' for standard output");
    } else {
      setIfValid(text, &config_.access_log.path);
    }
  }
}

// --- Listeners -------------------------------------------------------------------------------

void Loader::parseListener(const Field& field) {
  std::optional<Section> section = openSection(field, kListenerKeys);
  if (!section) {
    return;
  }
  Listener listener;
  listener.location = locate(field);

  if (const Field* name = require(*section, "name")) {
    parseListenerName(*name, &listener);
  }
  if (const Field* address = require(*section, "address")) {
    parseListenerAddress(*address, &listener);
  }
  if (const Field* direction = section->find("direction")) {
    setIfValid(readEnum(*direction, kDirections), &listener.direction);
  }
  if (const Field* trust = section->find("trust")) {
    setIfValid(readEnum(*trust, kTrustLevels), &listener.trust);
  }
  if (const Field* limits = section->find("limits")) {
    parseLimits(*limits, &listener.limits);
  }
  if (const Field* http2 = section->find("http2")) {
    parseHttp2Limits(*http2, &listener.http2);
  }
  if (const Field* cidrs = section->find("trusted_cidrs")) {
    parseTrustedCidrs(*cidrs, &listener);
  }
  if (const Field* floor = section->find("priority_floor")) {
    parsePriorityFloor(*floor, &listener);
  }
  if (const Field* generate = section->find("generate_request_id")) {
    setIfValid(readBool(*generate), &listener.generate_request_id);
  }

  if (const Field* routes = require(*section, "routes")) {
    if (auto items = listItems(*routes, "routes")) {
      if (items->empty()) {
        error(*routes, "must contain at least one route");
      }
      for (const Field& item : *items) {
        Route route;
        parseRoute(item, &route);
        listener.routes.push_back(std::move(route));
      }
    }
  }
  config_.listeners.push_back(std::move(listener));
}

void Loader::parseListenerName(const Field& field, Listener* listener) {
  std::optional<std::string> name = readName(field);
  if (!name) {
    return;
  }
  listener->name = *name;
  auto [first, inserted] = listener_names_.emplace(*name, locate(field));
  if (!inserted) {
    error(field,
          "duplicate listener name '" + *name + "'; " + firstLine(first->second, field.file));
  }
}

void Loader::parseListenerAddress(const Field& field, Listener* listener) {
  std::optional<Address> address = readAddress(field, AddressUse::kBind);
  if (!address) {
    return;
  }
  listener->address = *address;
  if (address->port == 0) {
    return; // each listener on port 0 gets its own ephemeral port, so they never collide
  }

  // Only identical addresses are detected. 0.0.0.0:80 next to 127.0.0.1:80 fails at bind time.
  std::string key = address->toString();
  auto [first, inserted] =
      listener_addresses_.emplace(key, std::pair(listener->name, locate(field)));
  if (!inserted) {
    error(field, "address " + key + " is already used by listener '" + first->second.first +
                     "' at line " + std::to_string(first->second.second.line));
  } else if (admin_state_ != AdminState::kInvalid && key == config_.admin.address.toString()) {
    std::string admin_at = admin_state_ == AdminState::kGiven
                               ? " at line " + std::to_string(admin_line_)
                               : std::string(" (the default)");
    error(field, "address " + key + " is also the admin address" + admin_at);
  }
}

void Loader::parseLimits(const Field& field, ListenerLimits* limits) {
  std::optional<Section> section = openSection(field, kLimitsKeys);
  if (!section) {
    return;
  }
  constexpr uint64_t kMax = UINT32_MAX;
  if (const Field* value = section->find("max_connections")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_connections);
  }
  if (const Field* value = section->find("max_header_bytes")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_header_bytes);
  }
  if (const Field* value = section->find("max_header_count")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_header_count);
  }
  if (const Field* value = section->find("header_timeout")) {
    setIfValid(readDuration(*value), &limits->header_timeout);
  }
  if (const Field* value = section->find("idle_timeout")) {
    setIfValid(readDuration(*value), &limits->idle_timeout);
  }
  if (const Field* value = section->find("stream_idle_timeout")) {
    setIfValid(readDuration(*value), &limits->stream_idle_timeout);
  }
}

void Loader::parseHttp2Limits(const Field& field, Http2Limits* limits) {
  std::optional<Section> section = openSection(field, kHttp2Keys);
  if (!section) {
    return;
  }
  // RFC 9113 section 6.5.2: a window above 2^31-1 is a flow-control error. A window below the
  // protocol's default of 65535 would only slow request bodies, so it is rejected too.
  constexpr uint64_t kMaxWindow = 2147483647;
  constexpr uint64_t kMax = UINT32_MAX;
  if (const Field* value = section->find("max_concurrent_streams")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_concurrent_streams);
  }
  if (const Field* value = section->find("initial_window_size")) {
    setIfValid(readUnsigned(*value, 65535, kMaxWindow), &limits->initial_window_size);
  }
  if (const Field* value = section->find("connection_window_size")) {
    setIfValid(readUnsigned(*value, 65535, kMaxWindow), &limits->connection_window_size);
  }
  if (const Field* value = section->find("reset_burst")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->reset_burst);
  }
  if (const Field* value = section->find("reset_rate")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->reset_rate);
  }
  if (const Field* value = section->find("max_control_frames")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_control_frames);
  }
  if (const Field* value = section->find("max_continuations")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_continuations);
  }
  if (const Field* value = section->find("max_empty_frames")) {
    setIfValid(readUnsigned(*value, 1, kMax), &limits->max_empty_frames);
  }
}

// --- Routes ----------------------------------------------------------------------------------

void Loader::parseRoute(const Field& field, Route* route) {
  std::optional<Section> section = openSection(field, kRouteKeys);
  if (!section) {
    return;
  }
  route->location = locate(field);

  if (const Field* match = section->find("match")) {
    parseMatch(*match, &route->match);
  }
  if (const Field* cluster = require(*section, "cluster")) {
    if (std::optional<std::string> name = readString(*cluster)) {
      route->cluster = *name;
      cluster_references_.push_back(Reference{*name, *cluster});
    }
  }
  if (const Field* policy = section->find("policy")) {
    if (std::optional<std::string> name = readString(*policy)) {
      route->policy = *name;
      policy_references_.push_back(Reference{*name, *policy});
    }
  }
  if (const Field* priority = section->find("priority")) {
    parseRoutePriority(*priority, route);
  }
  checkBreakerFallback(*route, field);
  if (const Field* timeout = section->find("timeout")) {
    setIfValid(readDuration(*timeout), &route->timeout);
  }
  if (const Field* headers = section->find("request_headers")) {
    parseHeaderMutation(*headers, &route->request_headers);
  }
  if (const Field* headers = section->find("response_headers")) {
    parseHeaderMutation(*headers, &route->response_headers);
  }
}

void Loader::parseMatch(const Field& field, RouteMatch* match) {
  std::optional<Section> section = openSection(field, kMatchKeys);
  if (!section) {
    return;
  }

  if (const Field* prefix = section->find("prefix")) {
    std::optional<std::string> text = readString(*prefix);
    bool has_forbidden =
        text && std::any_of(text->begin(), text->end(), [](char c) {
          return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '?' || c == '#';
        });
    if (text && !text->starts_with('/')) {
      error(*prefix, "invalid prefix '" + *text + "': must start with '/'");
    } else if (has_forbidden) {
      error(*prefix, "invalid prefix '" + *text +
                         "': must not contain whitespace, control characters, '?' or '#'");
    } else {
      setIfValid(text, &match->prefix);
    }
  }

  if (const Field* authority = section->find("authority")) {
    if (std::optional<std::string> text = readString(*authority)) {
      std::string problem = text->find(':') != std::string::npos
                                ? "invalid authority '" + *text + "': write the host without port"
                                : checkHost(*text);
      if (problem.empty()) {
        match->authority = toLower(*text);
      } else {
        error(*authority, problem);
      }
    }
  }

  if (const Field* headers = section->find("headers")) {
    if (auto items = listItems(*headers, "header matchers")) {
      for (const Field& item : *items) {
        parseHeaderMatcher(item, &match->headers);
      }
    }
  }
}

void Loader::parseHeaderMatcher(const Field& field, std::vector<HeaderMatcher>* matchers) {
  std::optional<Section> section = openSection(field, kHeaderMatcherKeys);
  if (!section) {
    return;
  }
  HeaderMatcher matcher;
  if (const Field* name = require(*section, "name")) {
    setIfValid(readHeaderName(*name), &matcher.name);
  }
  if (const Field* exact = section->find("exact")) {
    if (std::optional<std::string> value = readString(*exact)) {
      std::string problem = checkHeaderValue(*value);
      if (problem.empty()) {
        matcher.exact = *value;
      } else {
        error(*exact, "invalid header value: " + problem);
      }
    }
  }
  if (const Field* invert = section->find("invert")) {
    setIfValid(readBool(*invert), &matcher.invert);
  }
  matchers->push_back(std::move(matcher));
}

void Loader::parseHeaderMutation(const Field& field, HeaderMutation* mutation) {
  std::optional<Section> section = openSection(field, kMutationKeys);
  if (!section) {
    return;
  }
  std::map<std::string, Location> added;
  if (const Field* add = section->find("add")) {
    parseHeaderAdditions(*add, &mutation->add, &added);
  }
  if (const Field* remove = section->find("remove")) {
    parseHeaderRemovals(*remove, added, &mutation->remove);
  }
}

bool Loader::rejectProtectedHeader(const Field& field, const std::string& name) {
  if (std::find(kProtectedHeaders.begin(), kProtectedHeaders.end(), name) ==
      kProtectedHeaders.end()) {
    return false;
  }
  error(field.file, field.mark,
        field.path + ": header '" + name +
            "' is set by the proxy from the connection or the framing and cannot be "
            "changed by a header mutation");
  return true;
}

void Loader::parseHeaderAdditions(const Field& field,
                                  std::vector<std::pair<std::string, std::string>>* headers,
                                  std::map<std::string, Location>* added) {
  if (!field.value.IsMap()) {
    error(field, "expected a map of header names to values, found " + describeNode(field.value));
    return;
  }
  for (const MapEntry& entry : mapEntries(field)) {
    std::optional<std::string> name = readHeaderName(entry.key);
    if (!name) {
      continue;
    }
    auto [first, inserted] = added->emplace(*name, locate(entry.key));
    if (!inserted) {
      error(entry.key.file, entry.key.mark,
            entry.key.path + ": header '" + *name + "' is added twice; " +
                firstLine(first->second, entry.key.file));
      continue;
    }
    if (rejectProtectedHeader(entry.key, *name)) {
      continue;
    }

    const Field& value = entry.value;
    if (!value.value.IsScalar()) {
      error(value, "expected a string, found " + describeNode(value.value) +
                       "; write \"\" for an empty value");
      continue;
    }
    std::string problem = checkHeaderValue(value.value.Scalar());
    if (!problem.empty()) {
      error(value, "invalid header value: " + problem);
      continue;
    }
    headers->emplace_back(*name, value.value.Scalar());
  }
}

void Loader::parseHeaderRemovals(const Field& field, const std::map<std::string, Location>& added,
                                 std::vector<std::string>* names) {
  std::optional<std::vector<Field>> items = listItems(field, "header names");
  if (!items) {
    return;
  }
  std::map<std::string, Location> removed;
  for (const Field& item : *items) {
    std::optional<std::string> name = readHeaderName(item);
    if (!name) {
      continue;
    }
    auto [first, inserted] = removed.emplace(*name, locate(item));
    auto added_at = added.find(*name);
    if (!inserted) {
      error(item, "header '" + *name + "' is listed twice; " + firstLine(first->second, item.file));
    } else if (rejectProtectedHeader(item, *name)) {
      continue;
    } else if (added_at != added.end()) {
      error(item, "header '" + *name + "' is both added (at line " +
                      std::to_string(added_at->second.line) +
                      ") and removed; adding already replaces its value");
    } else {
      names->push_back(*name);
    }
  }
}

// --- Clusters --------------------------------------------------------------------------------

void Loader::parseCluster(const Field& field) {
  std::optional<Section> section = openSection(field, kClusterKeys);
  if (!section) {
    return;
  }
  Cluster cluster;
  cluster.location = locate(field);

  if (const Field* name = require(*section, "name")) {
    parseClusterName(*name, &cluster);
  }
  if (const Field* endpoints = require(*section, "endpoints")) {
    parseEndpoints(*endpoints, &cluster.endpoints);
  }
  if (const Field* protocol = section->find("protocol")) {
    setIfValid(readEnum(*protocol, kProtocols), &cluster.protocol);
  }
  if (const Field* lb = section->find("lb")) {
    if (lb->value.IsScalar() && lb->value.Scalar() == "ewma") {
      error(*lb, "'ewma' is not supported yet; use round_robin or least_request");
    } else {
      setIfValid(readEnum(*lb, kLbPolicies), &cluster.lb);
    }
  }
  if (const Field* value = section->find("connect_timeout")) {
    setIfValid(readDuration(*value), &cluster.connect_timeout);
  }
  if (const Field* value = section->find("resolve_every")) {
    setIfValid(readDuration(*value), &cluster.resolve_every);
  }
  if (const Field* value = section->find("max_connections")) {
    setIfValid(readUnsigned(*value, 1, UINT32_MAX), &cluster.max_connections);
  }
  if (const Field* value = section->find("idle_timeout")) {
    setIfValid(readDuration(*value), &cluster.pool_idle_timeout);
  }
  if (const Field* capacity = section->find("capacity")) {
    parseCapacity(*capacity, &cluster.capacity);
  }
  config_.clusters.push_back(std::move(cluster));
}

void Loader::parseClusterName(const Field& field, Cluster* cluster) {
  std::optional<std::string> name = readString(field);
  if (!name) {
    return;
  }
  cluster->name = *name;

  // Registered even when invalid, so routes naming it do not also report it missing.
  auto [first, inserted] = cluster_names_.emplace(*name, locate(field));
  std::string problem = checkName(*name);
  if (!problem.empty()) {
    error(field, problem);
  } else if (!inserted) {
    error(field, "duplicate cluster name '" + *name + "'; " + firstLine(first->second, field.file));
  }
}

void Loader::parseEndpoints(const Field& field, std::vector<Address>* endpoints) {
  std::optional<std::vector<Field>> items = listItems(field, "host:port endpoints");
  if (!items) {
    return;
  }
  if (items->empty()) {
    error(field, "must contain at least one endpoint");
  }
  std::map<std::string, Location> seen;
  for (const Field& item : *items) {
    std::optional<Address> address = readAddress(item, AddressUse::kEndpoint);
    if (!address) {
      continue;
    }
    auto [first, inserted] = seen.emplace(address->toString(), locate(item));
    if (!inserted) {
      error(item, "duplicate endpoint " + address->toString() + "; " +
                      firstLine(first->second, item.file));
      continue;
    }
    endpoints->push_back(*address);
  }
}

void Loader::parseCapacity(const Field& field, Capacity* capacity) {
  std::optional<Section> section = openSection(field, kCapacityKeys);
  if (!section) {
    return;
  }
  if (const Field* value = section->find("max_concurrent")) {
    std::optional<uint64_t> max_concurrent = readUnsigned(*value, 1, UINT32_MAX);
    if (max_concurrent) {
      capacity->max_concurrent = static_cast<uint32_t>(*max_concurrent);
    }
  }
  if (const Field* value = section->find("max_rps")) {
    std::string problem;
    std::optional<double> max_rps;
    if (isPlainScalar(value->value)) {
      max_rps = parseDecimal(value->value.Scalar(), &problem);
    } else {
      problem = "expected a number such as 200 or 0.5, found " + describeNode(value->value);
    }
    if (max_rps && *max_rps <= 0) {
      max_rps.reset();
      problem = "must be greater than 0";
    }
    if (max_rps) {
      capacity->max_rps = *max_rps;
    } else {
      error(*value, problem);
    }
  }
}

// --- Policies --------------------------------------------------------------------------------

void Loader::parsePolicyFiles(const Field& field) {
  std::optional<std::vector<Field>> items = listItems(field, "file or directory paths");
  if (!items) {
    return;
  }
  for (size_t i = 0; i < items->size(); ++i) {
    const Field& item = (*items)[i];
    std::optional<std::string> path = readString(item);
    if (!path) {
      continue;
    }
    if (path->empty()) {
      error(item, "must not be empty; give a file or a directory of *.yaml files");
      continue;
    }
    // readConfigSources() resolved the same list from the same text, item by item.
    if (i >= sources_.entries.size()) {
      error(item, "'" + *path + "' was not read; reload to read it");
      continue;
    }
    const PolicyFileEntry& entry = sources_.entries[i];
    if (!entry.error.empty()) {
      error(item, entry.error);
      continue;
    }
    for (size_t source : entry.files) {
      if (sources_read_[source]) {
        error(item, "'" + sources_.files[source].path +
                        "' is read twice; list each file or directory once");
        continue;
      }
      parsePolicyFile(source);
    }
  }
}

void Loader::parsePolicyFile(size_t source) {
  sources_read_[source] = true;
  const SourceFile& input = sources_.files[source];
  size_t file = addFile(input.path);
  if (!input.error.empty()) {
    error(Location{input.path, 0, 0}, input.error);
    return;
  }

  std::optional<Field> root = parseDocument(input.text, file, true);
  if (!root) {
    return;
  }
  std::optional<Section> section = openSection(*root, kPolicyFileKeys);
  if (!section) {
    return;
  }
  if (const Field* field = section->find("policies")) {
    collectDefinitions(*field, "policy", &policies_);
  }
  if (const Field* field = section->find("templates")) {
    collectDefinitions(*field, "template", &templates_);
  }
}

void Loader::collectDefinitions(const Field& field, std::string_view kind,
                                Definitions* definitions) {
  if (!field.value.IsMap()) {
    std::string plural = kind == "policy" ? "policies" : std::string(kind) + "s";
    error(field, "expected a map of " + std::string(kind) + " names to " + plural + ", found " +
                     describeNode(field.value));
    return;
  }
  // The map is read directly, not through mapEntries(), so a name repeated in one file gets
  // the same message as a name repeated across files.
  for (const auto& pair : field.value) {
    const YAML::Mark& key_mark = pair.first.Mark();
    Field key{pair.first, key_mark, field.path, key_mark, field.file, {}};
    std::optional<std::string> name = readName(key);
    if (!name) {
      continue;
    }
    Field value{pair.second,
                pair.second.IsNull() ? key_mark : pair.second.Mark(),
                joinPath(field.path, *name),
                key_mark,
                field.file,
                {}};
    auto [first, inserted] = definitions->emplace(*name, Definition{key, value});
    if (!inserted) {
      error(field.file, key_mark,
            "duplicate " + std::string(kind) + " name '" + *name + "'; " +
                firstLine(locate(first->second.key.file, first->second.key.mark), field.file));
    }
  }
}

const Loader::Definition*
Loader::findParent(const Field& extends, const std::vector<std::string>& chain, size_t cycle_from) {
  std::optional<std::string> name = readName(extends);
  if (!name) {
    return nullptr;
  }
  auto report = [&](const std::string& message) {
    error(extends.file, extends.key_mark, extends.path + ": " + message);
  };

  auto parent = templates_.find(*name);
  if (parent == templates_.end()) {
    std::string message = "template '" + *name + "' not found in 'templates'";
    if (policies_.count(*name) != 0) {
      message += "; '" + *name + "' is a policy, and only a template can be extended";
    } else {
      std::vector<std::string_view> names;
      for (const auto& [known, definition] : templates_) {
        names.push_back(known);
      }
      if (std::optional<std::string> suggestion = nearestWord(*name, names)) {
        message += "; did you mean '" + *suggestion + "'?";
      }
    }
    report(message);
    return nullptr;
  }

  auto links = chain.begin() + static_cast<std::ptrdiff_t>(cycle_from);
  auto repeated = std::find(links, chain.end(), *name);
  if (repeated != chain.end()) {
    std::string cycle;
    for (auto link = repeated; link != chain.end(); ++link) {
      cycle += *link + " -> ";
    }
    report("extends cycle: " + cycle + *name);
    return nullptr;
  }
  if (chain.size() > kMaxExtendsDepth) {
    report("extends chain is longer than " + std::to_string(kMaxExtendsDepth) +
           " templates; flatten some of them");
    return nullptr;
  }
  return &parent->second;
}

Field Loader::inherit(const Definition& definition) {
  Field merged = definition.value;
  std::vector<std::string> chain = {definition.key.value.Scalar()};
  auto as_template = templates_.find(chain.front());
  size_t cycle_from =
      as_template != templates_.end() && &as_template->second == &definition ? 0 : 1;
  const Field* body = &definition.value;

  // Only a definition's own `extends:` counts. The one its template inherits is read at the
  // next step, from the template's own map.
  while (body->value.IsMap()) {
    const YAML::Node& map = body->value;
    std::optional<Field> extends;
    for (const auto& pair : map) {
      if (pair.first.IsScalar() && pair.first.Scalar() == "extends") {
        YAML::Mark mark = pair.second.IsNull() ? pair.first.Mark() : pair.second.Mark();
        extends = Field{pair.second,       mark,       joinPath(body->path, "extends"),
                        pair.first.Mark(), body->file, {}};
        break;
      }
    }
    if (!extends) {
      break;
    }
    const Definition* parent = findParent(*extends, chain, cycle_from);
    if (parent == nullptr) {
      break;
    }
    chain.push_back(parent->key.value.Scalar());
    merged.bases.push_back(parent->value);
    body = &parent->value;
  }
  return merged;
}

void Loader::parseDefinitions() {
  // A template is checked on its own as well, so a mistake in one that no policy uses yet is
  // found now. The same mistake found again through a policy is reported once.
  for (const auto& [name, definition] : templates_) {
    Policy unused;
    parsePolicy(inherit(definition), &unused);
  }
  for (const auto& [name, definition] : policies_) {
    Policy policy;
    policy.name = name;
    parsePolicy(inherit(definition), &policy);
    config_.policies.emplace(name, std::move(policy));
  }
}

// Returns where `other` is set, for a message about two keys that are wrong only together and
// that points at `reported`. A policy and the template it extends may set the two apart.
// Returns an empty string when both come from one definition, so an error a template makes on
// its own reads the same through each policy and is reported once.
std::string Loader::setElsewhere(const Field* other, const Field& reported) const {
  if (other == nullptr) {
    return "";
  }
  // Template names may contain dots, so the two are compared by the section of `other`:
  // "templates.t.a.backpressure" for "templates.t.a.backpressure.min_limit". `reported` is
  // that section's key, or the section itself.
  auto parent = [](const std::string& path) { return path.substr(0, path.rfind('.')); };
  std::string section = parent(other->path);
  if (section == reported.path || section == parent(reported.path)) {
    return "";
  }
  Location location = locate(*other);
  return " (" + other->path + ", set at " + location.file + ":" + std::to_string(location.line) +
         ")";
}

void Loader::parsePolicy(const Field& field, Policy* policy) {
  std::optional<Section> section = openSection(field, kPolicyKeys);
  if (!section) {
    return;
  }
  policy->location = locate(field);

  if (const Field* mode = section->find("mode")) {
    setIfValid(readEnum(*mode, kPolicyModes), &policy->mode);
  }
  if (const Field* rollout = section->find("rollout")) {
    setIfValid(readPercent(*rollout), &policy->rollout);
  }
  if (const Field* headers = section->find("request_headers")) {
    parseHeaderMutation(*headers, &policy->request_headers);
  }
  if (const Field* headers = section->find("response_headers")) {
    parseHeaderMutation(*headers, &policy->response_headers);
  }
  if (const Field* priority = section->find("priority")) {
    policy->priority.emplace();
    parsePriority(*priority, &*policy->priority);
  }
  if (const Field* backpressure = section->find("backpressure")) {
    policy->backpressure.emplace();
    parseBackpressure(*backpressure, &*policy->backpressure);
  }
  if (const Field* breaker = section->find("breaker")) {
    policy->breaker.emplace();
    parseBreaker(*breaker, &*policy->breaker);
  }
  if (const Field* fault = section->find("fault")) {
    policy->fault.emplace();
    parseFault(*fault, &*policy->fault);
  }
}

// --- Priority --------------------------------------------------------------------------------

void Loader::parsePriority(const Field& field, PriorityPolicy* priority) {
  if (field.value.IsNull()) {
    return; // `priority:` alone turns the filter on with every default
  }
  std::optional<Section> section = openSection(field, kPriorityKeys);
  if (!section) {
    return;
  }

  if (const Field* header = section->find("header")) {
    setIfValid(readHeaderName(*header), &priority->header);
  }
  // Classes first: the default may name one of them.
  if (const Field* classes = section->find("classes")) {
    parseClasses(*classes, &priority->classes);
  }
  if (const Field* fallback = section->find("default")) {
    setIfValid(readUrgency(*fallback, priority->classes), &priority->default_urgency);
  }
  if (const Field* inherit = section->find("inherit")) {
    parseInherit(*inherit, priority);
  }
  if (const Field* boost = section->find("boost")) {
    if (std::optional<Section> boost_section = openSection(*boost, kBoostKeys)) {
      if (const Field* after = require(*boost_section, "after")) {
        std::optional<Duration> duration = readDuration(*after);
        if (duration) {
          priority->boost_after = *duration;
        }
      }
    }
  }
}

void Loader::parseClasses(const Field& field, std::map<std::string, int>* classes) {
  if (!field.value.IsMap()) {
    error(field,
          "expected a map of class names to urgencies 0 to 7, found " + describeNode(field.value));
    return;
  }
  classes->clear();
  for (const MapEntry& entry : mapEntries(field)) {
    std::optional<std::string> name = readName(entry.key);
    if (!name) {
      continue;
    }
    // mapEntries() has reported a name repeated in one map, so each name comes once.
    std::optional<uint64_t> urgency = readUnsigned(entry.value, kMostUrgent, kLeastUrgent);
    if (urgency) {
      classes->emplace(*name, static_cast<int>(*urgency));
    }
  }
  if (classes->empty()) {
    error(field, "must name at least one class");
  }
}

void Loader::parseInherit(const Field& field, PriorityPolicy* priority) {
  if (field.value.IsScalar()) {
    setIfValid(readBool(field), &priority->inherit);
    return;
  }
  std::optional<Section> section = openSection(field, kInheritKeys);
  if (!section) {
    return;
  }
  priority->inherit = true;

  if (const Field* from = section->find("from")) {
    if (auto items = listItems(*from, "correlation sources")) {
      if (items->empty()) {
        error(*from, "must name at least one source, such as traceparent or x-request-id");
      }
      priority->correlation.clear();
      for (const Field& item : *items) {
        std::optional<std::string> source = readHeaderName(item);
        if (source) {
          priority->correlation.push_back(*source);
        }
      }
    }
  }
  if (const Field* depth = section->find("max_depth")) {
    setIfValid(readUnsigned(*depth, 0, 64), &priority->max_depth);
  }
  if (const Field* ttl = section->find("ttl")) {
    error(ttl->file, ttl->key_mark,
          ttl->path + ": one inheritance table serves every policy; set its ttl in the "
                      "top-level 'inheritance' section");
  }
}

void Loader::parseInheritance(const Field& field) {
  std::optional<Section> section = openSection(field, kInheritanceKeys);
  if (!section) {
    return;
  }
  InheritanceConfig& table = config_.inheritance;
  if (const Field* value = section->find("max_entries")) {
    setIfValid(readUnsigned(*value, 1, 16 * 1024 * 1024), &table.max_entries);
  }
  if (const Field* value = section->find("ttl")) {
    setIfValid(readDuration(*value), &table.ttl);
  }
  if (const Field* value = section->find("release_grace")) {
    setIfValid(readDuration(*value), &table.release_grace);
  }
}

void Loader::parseTrustedCidrs(const Field& field, Listener* listener) {
  auto items = listItems(field, "CIDR ranges");
  if (!items) {
    return;
  }
  for (const Field& item : *items) {
    std::optional<std::string> text = readString(item);
    if (!text) {
      continue;
    }
    std::string problem;
    if (std::optional<CidrRange> range = CidrRange::parse(*text, problem)) {
      listener->trusted_cidrs.push_back(*range);
    } else {
      error(item, problem);
    }
  }
}

void Loader::parsePriorityFloor(const Field& field, Listener* listener) {
  if (field.value.IsScalar() && field.value.Scalar() == "strip") {
    listener->priority_floor.reset();
    return;
  }
  std::optional<int> floor = readUrgency(field, {kStandardClasses.begin(), kStandardClasses.end()});
  if (floor) {
    listener->priority_floor = *floor;
  }
}

void Loader::parseRoutePriority(const Field& field, Route* route) {
  // The route's policy names the classes. Policies are parsed before listeners, so the policy
  // is known here unless its name is wrong, which checkReferences reports.
  const PriorityPolicy* priority = nullptr;
  if (route->policy) {
    auto policy = config_.policies.find(*route->policy);
    if (policy == config_.policies.end()) {
      return;
    }
    if (policy->second.priority) {
      priority = &*policy->second.priority;
    }
  }
  if (!priority) {
    error(field.file, field.key_mark,
          field.path + ": a route's priority needs a policy with a 'priority' "
                       "section, which reads and uses it");
    return;
  }
  setIfValid(readUrgency(field, priority->classes), &route->urgency);
}

std::optional<int> Loader::readUrgency(const Field& field,
                                       const std::map<std::string, int>& classes) {
  // A class name may be quoted like any string; a number must be plain, as YAML types it.
  if (field.value.IsScalar()) {
    const std::string& text = field.value.Scalar();
    if (auto found = classes.find(text); found != classes.end()) {
      return found->second;
    }
    std::string problem;
    std::optional<uint64_t> number;
    if (isPlainScalar(field.value)) {
      number = parseUnsigned(text, kMostUrgent, kLeastUrgent, &problem);
    }
    if (number) {
      return static_cast<int>(*number);
    }
  }
  std::string names;
  for (const auto& [name, urgency] : classes) {
    names += (names.empty() ? "" : ", ") + name;
  }
  error(field, "expected a class (" + names + ") or an urgency from 0 to 7, found " +
                   describeNode(field.value));
  return std::nullopt;
}

// --- Backpressure ----------------------------------------------------------------------------

void Loader::parseFault(const Field& field, FaultPolicy* fault) {
  std::optional<Section> section = openSection(field, kFaultKeys);
  if (!section) {
    return;
  }
  if (const Field* delay = section->find("delay")) {
    if (std::optional<Section> values = openSection(*delay, kFaultDelayKeys)) {
      if (const Field* percent = require(*values, "percent")) {
        setIfValid(readPercent(*percent), &fault->delay_share);
      }
      if (const Field* duration = require(*values, "duration")) {
        setIfValid(readDuration(*duration), &fault->delay);
      }
    }
  }
  if (const Field* abort = section->find("abort")) {
    if (std::optional<Section> values = openSection(*abort, kFaultAbortKeys)) {
      if (const Field* percent = require(*values, "percent")) {
        setIfValid(readPercent(*percent), &fault->abort_share);
      }
      if (const Field* status = values->find("status")) {
        setIfValid(readUnsigned(*status, 400, 599), &fault->abort_status);
      }
      if (const Field* grpc_status = values->find("grpc_status")) {
        std::optional<uint64_t> code = readUnsigned(*grpc_status, 1, 16);
        if (code) {
          fault->grpc_status = static_cast<uint32_t>(*code);
        }
      }
    }
  }
  if (const Field* header_control = section->find("header_control")) {
    setIfValid(readBool(*header_control), &fault->header_control);
  }
}

void Loader::parseBackpressure(const Field& field, BackpressurePolicy* backpressure) {
  if (field.value.IsNull()) {
    return; // `backpressure:` alone turns the filter on with every default
  }
  std::optional<Section> section = openSection(field, kBackpressureKeys);
  if (!section) {
    return;
  }
  BackpressurePolicy& bp = *backpressure;
  constexpr uint64_t kMaxLimit = 1000000;

  if (const Field* value = section->find("limiter")) {
    setIfValid(readEnum(*value, kLimiters), &bp.limiter);
  }
  const Field* initial = section->find("initial_limit");
  if (initial) {
    setIfValid(readUnsigned(*initial, 1, kMaxLimit), &bp.initial_limit);
  }
  const Field* min = section->find("min_limit");
  if (min) {
    setIfValid(readUnsigned(*min, 1, kMaxLimit), &bp.min_limit);
  }
  const Field* max = section->find("max_limit");
  if (max) {
    setIfValid(readUnsigned(*max, 1, kMaxLimit), &bp.max_limit);
  }
  if (bp.min_limit > bp.max_limit) {
    const Field& reported = max ? *max : field;
    error(reported, "max_limit " + std::to_string(bp.max_limit) + " is below min_limit " +
                        std::to_string(bp.min_limit) + setElsewhere(min, reported));
  } else if (initial && (bp.initial_limit < bp.min_limit || bp.initial_limit > bp.max_limit)) {
    const Field* bound = bp.initial_limit < bp.min_limit ? min : max;
    error(*initial, "initial_limit " + std::to_string(bp.initial_limit) + " is outside " +
                        std::to_string(bp.min_limit) + " to " + std::to_string(bp.max_limit) +
                        setElsewhere(bound, *initial));
  } else if (!initial) {
    bp.initial_limit = std::clamp(bp.initial_limit, bp.min_limit, bp.max_limit);
  }

  if (const Field* gradient = section->find("gradient")) {
    if (std::optional<Section> options = openSection(*gradient, kGradientKeys)) {
      if (const Field* value = options->find("tolerance")) {
        setIfValid(readNumber(*value, 1.0, 100.0), &bp.tolerance);
      }
      if (const Field* value = options->find("smoothing")) {
        setIfValid(readNumber(*value, 0.01, 1.0), &bp.smoothing);
      }
    }
  }
  if (const Field* aimd = section->find("aimd")) {
    if (std::optional<Section> options = openSection(*aimd, kAimdKeys)) {
      if (const Field* value = options->find("increase")) {
        setIfValid(readUnsigned(*value, 1, kMaxLimit), &bp.increase);
      }
      if (const Field* value = options->find("backoff")) {
        setIfValid(readNumber(*value, 0.1, 0.99), &bp.backoff);
      }
      if (const Field* value = options->find("latency_threshold")) {
        if (std::optional<Duration> threshold = readDuration(*value)) {
          bp.latency_threshold = *threshold;
        }
      }
    }
  }
  if (const Field* queue = section->find("queue")) {
    if (std::optional<Section> options = openSection(*queue, kQueueKeys)) {
      if (const Field* value = options->find("max_length")) {
        setIfValid(readUnsigned(*value, 0, kMaxLimit), &bp.queue_max_length);
      }
      if (const Field* value = options->find("max_wait")) {
        setIfValid(readDuration(*value), &bp.max_wait);
      }
      if (const Field* value = options->find("aging")) {
        setIfValid(readDuration(*value), &bp.aging);
      }
      if (const Field* value = options->find("on_max_wait")) {
        setIfValid(readEnum(*value, kMaxWaitActions), &bp.on_max_wait);
      }
      if (const Field* value = options->find("predict_wait")) {
        setIfValid(readBool(*value), &bp.predict_wait);
      }
    }
  }
  if (const Field* value = section->find("deadline_header")) {
    std::optional<std::string> name = readHeaderName(*value);
    if (name) {
      bp.deadline_header = *name;
    }
  }
  if (const Field* value = section->find("emit_signal")) {
    setIfValid(readBool(*value), &bp.emit_signal);
  }
  if (const Field* signal = section->find("signal")) {
    bp.signal.emplace();
    parseSignal(*signal, &*bp.signal);
  }
  if (const Field* value = section->find("all_deferring_scale")) {
    setIfValid(readNumber(*value, 0.01, 1.0), &bp.all_deferring_scale);
  }
}

void Loader::parseSignal(const Field& field, SignalPolicy* signal) {
  if (field.value.IsNull()) {
    return;
  }
  std::optional<Section> section = openSection(field, kSignalKeys);
  if (!section) {
    return;
  }
  if (const Field* value = section->find("ttl")) {
    setIfValid(readDuration(*value), &signal->ttl);
  }
  if (const Field* value = section->find("ewma_half_life")) {
    setIfValid(readDuration(*value), &signal->ewma_half_life);
  }
  if (const Field* value = section->find("defer_above")) {
    setIfValid(readNumber(*value, 0.0, 100.0), &signal->defer_above);
  }
  if (const Field* value = section->find("hold_above")) {
    setIfValid(readDuration(*value), &signal->hold_above);
  }
  const Field* resume = section->find("resume_below");
  if (resume) {
    setIfValid(readNumber(*resume, 0.0, 100.0), &signal->resume_below);
  }
  if (const Field* value = section->find("hold_below")) {
    setIfValid(readDuration(*value), &signal->hold_below);
  }
  if (signal->resume_below > signal->defer_above) {
    error(resume ? *resume : field, "resume_below " + formatDecimal(signal->resume_below) +
                                        " is above defer_above " +
                                        formatDecimal(signal->defer_above) +
                                        "; hysteresis needs resume_below <= defer_above");
  }
}

// --- Breaker ---------------------------------------------------------------------------------

void Loader::parseBreaker(const Field& field, BreakerPolicy* breaker) {
  if (field.value.IsNull()) {
    return; // `breaker:` alone turns the filter on with every default
  }
  std::optional<Section> section = openSection(field, kBreakerKeys);
  if (!section) {
    return;
  }
  BreakerPolicy& b = *breaker;
  constexpr uint64_t kMaxCount = 1000000;

  if (const Field* window = section->find("window")) {
    parseBreakerWindow(*window, breaker);
  }
  if (const Field* open_when = section->find("open_when")) {
    if (std::optional<Section> options = openSection(*open_when, kOpenWhenKeys)) {
      if (const Field* value = options->find("failure_rate")) {
        setIfValid(readPercent(*value), &b.failure_rate);
      }
      if (const Field* value = options->find("slow_call_rate")) {
        setIfValid(readPercent(*value), &b.slow_call_rate);
      }
      if (const Field* value = options->find("slow_call")) {
        if (std::optional<Duration> slow_call = readDuration(*value)) {
          b.slow_call = *slow_call;
        }
      }
      if (const Field* value = options->find("consecutive_failures")) {
        setIfValid(readUnsigned(*value, 0, kMaxCount), &b.consecutive_failures);
      }
    }
  }
  if (const Field* failure = section->find("failure")) {
    parseBreakerFailure(*failure, breaker);
  }
  const Field* cooldown = section->find("cooldown");
  if (cooldown) {
    setIfValid(readDuration(*cooldown), &b.cooldown);
  }
  const Field* max_cooldown = section->find("max_cooldown");
  if (max_cooldown) {
    setIfValid(readDuration(*max_cooldown), &b.max_cooldown);
  } else {
    b.max_cooldown = std::max(b.max_cooldown, b.cooldown);
  }
  if (b.max_cooldown < b.cooldown) {
    error(*max_cooldown, "max_cooldown " + formatDuration(b.max_cooldown) + " is below cooldown " +
                             formatDuration(b.cooldown) + setElsewhere(cooldown, *max_cooldown));
  }
  if (const Field* value = section->find("cooldown_multiplier")) {
    setIfValid(readNumber(*value, 1.0, 100.0), &b.cooldown_multiplier);
  }
  if (const Field* value = section->find("jitter")) {
    setIfValid(readPercent(*value), &b.jitter);
  }
  if (const Field* half_open = section->find("half_open")) {
    if (std::optional<Section> options = openSection(*half_open, kHalfOpenKeys)) {
      if (const Field* value = options->find("probes")) {
        setIfValid(readUnsigned(*value, 1, 1000), &b.probes);
      }
      if (const Field* value = options->find("timeout")) {
        setIfValid(readDuration(*value), &b.probe_timeout);
      }
    }
  }
  if (const Field* fallback = section->find("fallback")) {
    parseBreakerFallback(*fallback, breaker);
  }
  if (const Field* outlier = section->find("outlier")) {
    b.outlier.emplace();
    parseOutlier(*outlier, &*b.outlier);
  }
}

void Loader::parseBreakerWindow(const Field& field, BreakerPolicy* breaker) {
  std::optional<Section> section = openSection(field, kBreakerWindowKeys);
  if (!section) {
    return;
  }
  if (const Field* value = section->find("type")) {
    setIfValid(readEnum(*value, kWindowTypes), &breaker->window_type);
  }
  if (const Field* value = section->find("size")) {
    if (breaker->window_type == BreakerWindowType::kTime) {
      setIfValid(readDuration(*value), &breaker->window_duration);
    } else {
      setIfValid(readUnsigned(*value, 1, 100000), &breaker->window_calls);
    }
  }
  if (const Field* value = section->find("min_requests")) {
    setIfValid(readUnsigned(*value, 1, 1000000), &breaker->min_requests);
  }
}

void Loader::parseBreakerFailure(const Field& field, BreakerPolicy* breaker) {
  std::optional<Section> section = openSection(field, kFailureKeys);
  if (!section) {
    return;
  }
  if (const Field* status = section->find("status")) {
    if (auto items = listItems(*status, "statuses")) {
      breaker->failure_status_classes.clear();
      breaker->failure_statuses.clear();
      for (const Field& item : *items) {
        std::optional<std::string> text = readString(item);
        if (!text) {
          continue;
        }
        if (text->size() == 3 && text->substr(1) == "xx" && (*text)[0] >= '1' &&
            (*text)[0] <= '5') {
          breaker->failure_status_classes.push_back((*text)[0] - '0');
        } else if (std::optional<uint64_t> code = readUnsigned(item, 100, 599)) {
          breaker->failure_statuses.push_back(static_cast<int>(*code));
        }
      }
    }
  }
  if (const Field* value = section->find("connect_failure")) {
    setIfValid(readBool(*value), &breaker->failure_connect_failure);
  }
  if (const Field* value = section->find("reset")) {
    setIfValid(readBool(*value), &breaker->failure_reset);
  }
  if (const Field* value = section->find("timeout")) {
    setIfValid(readBool(*value), &breaker->failure_timeout);
  }
  if (const Field* grpc = section->find("grpc")) {
    if (auto items = listItems(*grpc, "gRPC status names")) {
      breaker->failure_grpc.clear();
      for (const Field& item : *items) {
        if (std::optional<int> code = readEnum(item, kGrpcCodes)) {
          breaker->failure_grpc.push_back(*code);
        }
      }
    }
  }
}

void Loader::parseBreakerFallback(const Field& field, BreakerPolicy* breaker) {
  std::optional<Section> section = openSection(field, kFallbackKeys);
  if (!section) {
    return;
  }
  if (const Field* cluster = require(*section, "cluster")) {
    if (std::optional<std::string> name = readString(*cluster)) {
      breaker->fallback = *name;
      // Clusters are parsed before policies, so the fallback's capacity is known here.
      const Cluster* target = config_.findCluster(*name);
      if (target == nullptr) {
        cluster_references_.push_back(Reference{*name, *cluster});
      } else if (!target->capacity.max_concurrent && !target->capacity.max_rps) {
        error(*cluster, "fallback cluster '" + *name +
                            "' declares no capacity; give it 'capacity: { max_concurrent, "
                            "max_rps }' so the breaker knows how much traffic it may send there");
      }
    }
  }
  if (const Field* value = section->find("when_deferring")) {
    setIfValid(readBool(*value), &breaker->fallback_when_deferring);
  }
  if (const Field* value = section->find("on_loop")) {
    setIfValid(readEnum(*value, kLoopActions), &breaker->on_loop);
  }
}

void Loader::parseOutlier(const Field& field, OutlierPolicy* outlier) {
  if (field.value.IsNull()) {
    return;
  }
  std::optional<Section> section = openSection(field, kOutlierKeys);
  if (!section) {
    return;
  }
  if (const Field* value = section->find("consecutive_failures")) {
    setIfValid(readUnsigned(*value, 1, 1000000), &outlier->consecutive_failures);
  }
  if (const Field* value = section->find("base_ejection")) {
    setIfValid(readDuration(*value), &outlier->base_ejection);
  }
  const Field* max = section->find("max_ejection");
  if (max) {
    setIfValid(readDuration(*max), &outlier->max_ejection);
  } else {
    outlier->max_ejection = std::max(outlier->max_ejection, outlier->base_ejection);
  }
  if (outlier->max_ejection < outlier->base_ejection) {
    error(*max, "max_ejection " + formatDuration(outlier->max_ejection) +
                    " is below base_ejection " + formatDuration(outlier->base_ejection));
  }
  if (const Field* value = section->find("max_ejection_percent")) {
    setIfValid(readPercent(*value), &outlier->max_ejection_percent);
  }
}

std::optional<double> Loader::readNumber(const Field& field, double min, double max) {
  std::string problem;
  std::optional<double> number;
  if (isPlainScalar(field.value)) {
    number = parseDecimal(field.value.Scalar(), &problem);
  } else {
    problem = "expected a number such as 0.9, found " + describeNode(field.value);
  }
  if (number && (*number < min || *number > max)) {
    problem = formatDecimal(*number) + " is out of range; expected " + formatDecimal(min) + " to " +
              formatDecimal(max);
    number.reset();
  }
  if (!number) {
    error(field, problem);
  }
  return number;
}

void Loader::checkBreakerFallback(const Route& route, const Field& field) {
  if (!route.policy) {
    return;
  }
  // Policies are parsed before listeners, so the route's policy is known here.
  auto policy = config_.policies.find(*route.policy);
  if (policy == config_.policies.end() || !policy->second.breaker) {
    return;
  }
  const std::optional<std::string>& fallback = policy->second.breaker->fallback;
  if (fallback && *fallback == route.cluster) {
    error(field, "policy '" + *route.policy + "' falls back to cluster '" + route.cluster +
                     "', the route's own cluster; a fallback must be another cluster");
  }
}

void Loader::checkReferences() {
  std::vector<std::string_view> clusters;
  for (const auto& [name, location] : cluster_names_) {
    clusters.push_back(name);
  }
  for (const Reference& reference : cluster_references_) {
    if (cluster_names_.count(reference.name) == 0) {
      std::string message = "cluster '" + reference.name + "' not found in 'clusters'";
      if (std::optional<std::string> suggestion = nearestWord(reference.name, clusters)) {
        message += "; did you mean '" + *suggestion + "'?";
      }
      error(reference.field, message);
    }
  }

  std::vector<std::string_view> policies;
  for (const auto& [name, definition] : policies_) {
    policies.push_back(name);
  }
  for (const Reference& reference : policy_references_) {
    if (policies_.count(reference.name) == 0) {
      std::string message = "policy '" + reference.name + "' not found in 'policies'";
      if (std::optional<std::string> suggestion = nearestWord(reference.name, policies)) {
        message += "; did you mean '" + *suggestion + "'?";
      }
      error(reference.field, message);
    }
  }
}

} // namespace

LoadResult loadSources(const ConfigSources& sources) { return Loader(sources).load(); }

LoadResult loadString(const std::string& yaml, const std::string& name) {
  return loadSources(sourcesFromText(yaml, name));
}

LoadResult loadFile(const std::string& path) { return loadSources(readConfigSources(path)); }

} // namespace deferd::config
