#include "filters/breaker/loop_guard.h"

#include <algorithm>

namespace deferd::filters::breaker {

namespace {

bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

bool isDigit(char c) { return c >= '0' && c <= '9'; }

// tchar of RFC 9110 section 5.6.2.
bool isTchar(char c) {
  static constexpr std::string_view kSymbols = "!#$%&'*+-.^_`|~";
  return isAlpha(c) || isDigit(c) || kSymbols.find(c) != std::string_view::npos;
}

// The characters of an sf-token after the first.
bool isTokenChar(char c) { return isTchar(c) || c == ':' || c == '/'; }

bool isToken(std::string_view text) {
  if (text.empty() || !(isAlpha(text[0]) || text[0] == '*')) {
    return false;
  }
  return std::all_of(text.begin() + 1, text.end(), isTokenChar);
}

bool isOws(char c) { return c == ' ' || c == '\t'; }

class PathParser {
public:
  explicit PathParser(std::string_view input) : input_(input) {}

  FallbackPath parse() {
    FallbackPath path;
    skipOws();
    if (atEnd()) {
      return path;
    }

    while (true) {
      if (path.services.size() == kMaxFallbackPathEntries) {
        path.status = FallbackPathStatus::kTooLong;
        return path;
      }

      std::string item;
      FallbackPathStatus status = parseItem(item);
      if (status != FallbackPathStatus::kValid) {
        path.status = status;
        return path;
      }
      path.services.push_back(std::move(item));

      skipOws();
      if (atEnd()) {
        return path;
      }
      if (input_[pos_] != ',') {
        path.status = FallbackPathStatus::kMalformed;
        return path;
      }
      pos_++;
      skipOws();
      if (atEnd()) {
        // A trailing comma.
        path.status = FallbackPathStatus::kMalformed;
        return path;
      }
    }
  }

private:
  bool atEnd() const { return pos_ >= input_.size(); }

  void skipOws() {
    while (!atEnd() && isOws(input_[pos_])) {
      pos_++;
    }
  }

  FallbackPathStatus parseItem(std::string& item) {
    char first = input_[pos_];
    if (first == '"') {
      return parseString(item);
    }
    if (isAlpha(first) || first == '*') {
      return parseToken(item);
    }
    return FallbackPathStatus::kMalformed;
  }

  FallbackPathStatus parseToken(std::string& item) {
    size_t start = pos_++;
    while (!atEnd() && isTokenChar(input_[pos_])) {
      pos_++;
    }
    if (pos_ - start > kMaxServiceNameLength) {
      return FallbackPathStatus::kTooLong;
    }
    item.assign(input_.substr(start, pos_ - start));
    return FallbackPathStatus::kValid;
  }

  FallbackPathStatus parseString(std::string& item) {
    pos_++;
    while (!atEnd()) {
      char c = input_[pos_++];
      if (c == '"') {
        return item.empty() ? FallbackPathStatus::kMalformed : FallbackPathStatus::kValid;
      }
      if (c == '\\') {
        if (atEnd() || (input_[pos_] != '"' && input_[pos_] != '\\')) {
          return FallbackPathStatus::kMalformed;
        }
        c = input_[pos_++];
      } else if (c < 0x20 || c > 0x7e) {
        return FallbackPathStatus::kMalformed;
      }
      if (item.size() == kMaxServiceNameLength) {
        return FallbackPathStatus::kTooLong;
      }
      item.push_back(c);
    }
    // No closing quote.
    return FallbackPathStatus::kMalformed;
  }

  std::string_view input_;
  size_t pos_ = 0;
};

void appendSerialized(std::string& out, std::string_view service) {
  if (isToken(service)) {
    out.append(service);
    return;
  }
  out.push_back('"');
  for (char c : service) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
}

} // namespace

bool FallbackPath::contains(std::string_view service) const {
  if (status != FallbackPathStatus::kValid) {
    return true;
  }
  return std::find(services.begin(), services.end(), service) != services.end();
}

bool isValidServiceName(std::string_view service) {
  if (service.empty() || service.size() > kMaxServiceNameLength) {
    return false;
  }
  return std::all_of(service.begin(), service.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

FallbackPath parseFallbackPath(std::string_view field_value) {
  if (field_value.size() > kMaxFallbackPathBytes) {
    return FallbackPath{.status = FallbackPathStatus::kTooLong, .services = {}};
  }
  return PathParser(field_value).parse();
}

FallbackPath readFallbackPath(const HeaderMap& headers) {
  std::string joined;
  bool any = false;
  bool too_long = false;
  headers.forEach([&](std::string_view name, std::string_view value) {
    if (too_long || name.size() != kFallbackPathHeader.size() ||
        !std::equal(name.begin(), name.end(), kFallbackPathHeader.begin(), [](char a, char b) {
          return (a >= 'A' && a <= 'Z' ? a - 'A' + 'a' : a) == b;
        })) {
      return;
    }
    if (any) {
      joined.append(", ");
    }
    any = true;
    if (joined.size() + value.size() > kMaxFallbackPathBytes) {
      too_long = true;
      return;
    }
    joined.append(value);
  });

  if (too_long) {
    return FallbackPath{.status = FallbackPathStatus::kTooLong, .services = {}};
  }
  return parseFallbackPath(joined);
}

std::optional<std::string> appendToFallbackPath(const FallbackPath& path,
                                                std::string_view service) {
  if (path.status != FallbackPathStatus::kValid ||
      path.services.size() >= kMaxFallbackPathEntries || !isValidServiceName(service)) {
    return std::nullopt;
  }

  std::string out;
  for (const std::string& entry : path.services) {
    appendSerialized(out, entry);
    out.append(", ");
  }
  appendSerialized(out, service);
  return out;
}

LoopCheck checkFallbackLoop(const HeaderMap& headers, std::string_view service, LoopPolicy policy) {
  FallbackPath path = readFallbackPath(headers);
  std::optional<std::string> appended;
  if (!path.contains(service)) {
    appended = appendToFallbackPath(path, service);
  }

  if (appended) {
    return LoopCheck{.verdict = LoopVerdict::kRedirect, .fallback_path = std::move(*appended)};
  }
  LoopVerdict stopped =
      policy == LoopPolicy::kReject ? LoopVerdict::kReject : LoopVerdict::kSendToPrimary;
  return LoopCheck{.verdict = stopped, .fallback_path = {}};
}

} // namespace deferd::filters::breaker
