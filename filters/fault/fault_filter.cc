#include "filters/fault/fault_filter.h"

#include <charconv>
#include <string>

namespace deferd::filters::fault {

namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

std::optional<uint64_t> parseNumber(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    return std::nullopt;
  }
  return value;
}

// "250ms" or "2s".
std::optional<std::chrono::milliseconds> parseDelay(std::string_view text) {
  uint64_t scale = 0;
  if (text.ends_with("ms")) {
    text.remove_suffix(2);
    scale = 1;
  } else if (text.ends_with("s")) {
    text.remove_suffix(1);
    scale = 1000;
  } else {
    return std::nullopt;
  }
  std::optional<uint64_t> count = parseNumber(text);
  if (!count || *count > static_cast<uint64_t>(kMaxHeaderDelay.count()) / scale) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(*count * scale);
}

bool isGrpc(const HeaderMap& headers) {
  std::optional<std::string_view> type = headers.get("content-type");
  return type && type->starts_with("application/grpc");
}

class FaultFilter : public StreamFilter {
public:
  explicit FaultFilter(std::shared_ptr<const FaultRouteConfig> config)
      : config_(std::move(config)) {}

  FilterStatus onRequestHeaders(HeaderMap& headers) override {
    FaultRequest plan = choose(headers);
    if (!plan.delay && !plan.abort_status) {
      return FilterStatus::kContinue;
    }
    grpc_ = isGrpc(headers);
    abort_status_ = plan.abort_status;

    if (!config_->enforce) {
      if (plan.delay) {
        record(FaultDecision::kDelayShadow);
      }
      if (plan.abort_status) {
        record(FaultDecision::kAbortShadow);
      }
      return FilterStatus::kContinue;
    }
    if (plan.delay && plan.delay->count() > 0) {
      record(FaultDecision::kDelay);
      timer_ = callbacks().dispatcher().createTimer([this] { onDelayDone(); });
      timer_->enableTimer(*plan.delay);
      return FilterStatus::kStop;
    }
    if (abort_status_) {
      abort();
      return FilterStatus::kStop;
    }
    return FilterStatus::kContinue;
  }

  void onStreamEnd(StreamEnd) override { timer_.reset(); }

private:
  // The header wins over the configured shares when header control is on and it is present.
  FaultRequest choose(HeaderMap& headers) {
    if (config_->header_control) {
      if (std::optional<std::string_view> value = headers.get(kFaultHeader)) {
        std::optional<FaultRequest> requested = parseFaultHeader(*value);
        headers.remove(kFaultHeader);
        if (requested) {
          return *requested;
        }
        record(FaultDecision::kHeaderInvalid);
        return {};
      }
    }

    FaultRequest plan;
    if (config_->delay_share > 0 && config_->random() < config_->delay_share) {
      plan.delay = config_->delay;
    }
    if (config_->abort_share > 0 && config_->random() < config_->abort_share) {
      plan.abort_status = config_->abort_status;
    }
    return plan;
  }

  void onDelayDone() {
    timer_.reset();
    if (abort_status_) {
      abort();
      return;
    }
    callbacks().continueRequest();
  }

  void abort() {
    record(FaultDecision::kAbort);
    RequestInfo& info = callbacks().requestInfo();
    info.local_reply_status = *abort_status_;
    if (grpc_) {
      // A configured grpc_status applies to configured aborts; a header abort is mapped.
      bool configured = config_->grpc_status && *abort_status_ == config_->abort_status;
      info.grpc_status = configured ? *config_->grpc_status : grpcStatusForHttp(*abort_status_);
    }
    callbacks().sendLocalReply(LocalReplyReason::kFaultInjected);
  }

  // Counts the decision and sets the access log's decision, which a later call replaces.
  void record(FaultDecision decision) {
    callbacks().requestInfo().decision = faultDecisionName(decision);
    if (config_->stats != nullptr) {
      if (prometheus::Counter* counter = config_->stats->decisions[static_cast<size_t>(decision)]) {
        counter->Increment();
      }
    }
  }

  std::shared_ptr<const FaultRouteConfig> config_;
  std::unique_ptr<Timer> timer_; // set while a delay is pending
  std::optional<uint16_t> abort_status_;
  bool grpc_ = false;
};

} // namespace

std::string_view faultDecisionName(FaultDecision decision) {
  switch (decision) {
  case FaultDecision::kDelay:
    return "fault-delay";
  case FaultDecision::kAbort:
    return "fault-abort";
  case FaultDecision::kDelayShadow:
    return "fault-delay-shadow";
  case FaultDecision::kAbortShadow:
    return "fault-abort-shadow";
  case FaultDecision::kHeaderInvalid:
    return "fault-header-invalid";
  case FaultDecision::kCount:
    break;
  }
  return "unknown";
}

std::optional<FaultRequest> parseFaultHeader(std::string_view value) {
  FaultRequest request;
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = trim(value.substr(0, comma));
    value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
    if (comma != std::string_view::npos && trim(value).empty()) {
      return std::nullopt; // a trailing comma
    }

    size_t equals = item.find('=');
    if (equals == std::string_view::npos) {
      return std::nullopt;
    }
    std::string_view key = trim(item.substr(0, equals));
    std::string_view argument = trim(item.substr(equals + 1));
    if (key == "abort" && !request.abort_status) {
      std::optional<uint64_t> status = parseNumber(argument);
      if (!status || *status < 400 || *status > 599) {
        return std::nullopt;
      }
      request.abort_status = static_cast<uint16_t>(*status);
    } else if (key == "delay" && !request.delay) {
      request.delay = parseDelay(argument);
      if (!request.delay) {
        return std::nullopt;
      }
    } else {
      return std::nullopt; // an unknown or repeated key
    }
  }
  if (!request.delay && !request.abort_status) {
    return std::nullopt;
  }
  return request;
}

uint32_t grpcStatusForHttp(uint16_t status) {
  switch (status) {
  case 400:
    return 13;
  case 401:
    return 16;
  case 403:
    return 7;
  case 404:
    return 12;
  case 429:
  case 502:
  case 503:
  case 504:
    return 14;
  default:
    return 2;
  }
}

FaultFilterFactory::FaultFilterFactory(FaultRouteConfig config)
    : config_(std::make_shared<const FaultRouteConfig>(std::move(config))) {}

std::unique_ptr<StreamFilter> FaultFilterFactory::createFilter() const {
  return std::make_unique<FaultFilter>(config_);
}

} // namespace deferd::filters::fault
