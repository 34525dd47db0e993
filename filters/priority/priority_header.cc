#include "filters/priority/priority_header.h"

#include <algorithm>
#include <cctype>

#include "filters/priority/structured_fields.h"

namespace deferd::filters::priority {
namespace {

// RFC 8941 section 4.2: several field lines are one value, joined with commas.
std::string combineFieldLines(std::span<const std::string_view> field_lines) {
  std::string combined;
  for (std::string_view line : field_lines) {
    if (!combined.empty()) {
      combined += ", ";
    }
    combined += line;
  }
  return combined;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

PriorityParseResult malformed(std::string error) {
  PriorityParseResult result;
  result.status = PriorityParseStatus::kMalformed;
  result.error = std::move(error);
  return result;
}

bool isUrgency(const StructuredValue& value) {
  return value.type == StructuredValue::Type::kInteger && value.integer >= kMostUrgent &&
         value.integer <= kLeastUrgent;
}

} // namespace

Priority PriorityParseResult::resolve(int default_urgency) const {
  if (status != PriorityParseStatus::kValid) {
    return Priority{.urgency = default_urgency, .hop = 0};
  }
  return Priority{.urgency = urgency.value_or(default_urgency), .hop = hop};
}

PriorityParseResult parsePriority(std::span<const std::string_view> field_lines) {
  if (field_lines.empty()) {
    return PriorityParseResult{};
  }

  DictionaryParseResult parsed = parseDictionary(combineFieldLines(field_lines));
  if (!parsed.dictionary) {
    return malformed(std::move(parsed.error));
  }

  PriorityParseResult result;
  result.status = PriorityParseStatus::kValid;
  if (const DictionaryMember* u = findMember(*parsed.dictionary, "u")) {
    if (!isUrgency(u->value)) {
      return malformed("u is not an integer from 0 to 7");
    }
    result.urgency = static_cast<int>(u->value.integer);
  }
  if (const DictionaryMember* hop = findMember(*parsed.dictionary, "hop")) {
    if (hop->value.type != StructuredValue::Type::kInteger || hop->value.integer < 0) {
      return malformed("hop is not a non-negative integer");
    }
    result.hop = static_cast<int>(std::min<int64_t>(hop->value.integer, kMaxHop));
  }
  return result;
}

PriorityParseResult parseRfc9218Priority(std::span<const std::string_view> field_lines) {
  if (field_lines.empty()) {
    return PriorityParseResult{};
  }

  DictionaryParseResult parsed = parseDictionary(combineFieldLines(field_lines));
  if (!parsed.dictionary) {
    return malformed(std::move(parsed.error));
  }

  // RFC 9218 section 4: a parameter with an unexpected type or an out-of-range value is
  // ignored, as if it were absent.
  PriorityParseResult result;
  result.status = PriorityParseStatus::kValid;
  const DictionaryMember* u = findMember(*parsed.dictionary, "u");
  if (u != nullptr && isUrgency(u->value)) {
    result.urgency = static_cast<int>(u->value.integer);
  }
  return result;
}

std::vector<std::string_view> fieldLines(const HeaderMap& headers, std::string_view name) {
  std::vector<std::string_view> lines;
  headers.forEach([&](std::string_view field_name, std::string_view value) {
    if (equalsIgnoreCase(field_name, name)) {
      lines.push_back(value);
    }
  });
  return lines;
}

std::string serializePriority(const Priority& priority) {
  return "u=" + std::to_string(priority.urgency) + ", hop=" + std::to_string(priority.hop);
}

} // namespace deferd::filters::priority
