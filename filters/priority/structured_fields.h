#pragma once

// A parser for Dictionary fields in the Structured Field syntax of RFC 8941, as far as the
// priority filter needs it.
//
// The parser follows the algorithms of RFC 8941 section 4.2. The whole field fails to parse on
// any syntax error. Member keys are lowercase (`[a-z*][a-z0-9_\-.*]*`), and a key given without
// a value is Boolean true. A key that appears twice keeps its last value at its first position.
// Parameters are checked for syntax and then dropped. Every bare item type is parsed so
// that unknown members with any valid value are accepted, but only Integer and Boolean values
// are kept.
//
// NOTE: the Date (`@`) and Display String (`%`) types that RFC 9651 added later fail to parse.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deferd::filters::priority {

// The value of a dictionary member, reduced to its type plus the Integer or Boolean value.
struct StructuredValue {
  enum class Type { kInteger, kDecimal, kString, kToken, kByteSequence, kBoolean, kInnerList };

  Type type = Type::kBoolean;
  int64_t integer = 0;
  bool boolean = true;
};

struct DictionaryMember {
  std::string key;
  StructuredValue value;
};

// Members in order of their first appearance.
using Dictionary = std::vector<DictionaryMember>;

struct DictionaryParseResult {
  // Empty when the field failed to parse.
  std::optional<Dictionary> dictionary;
  // The syntax error, with its byte offset into the combined field value.
  std::string error;
};

// Parses one field value. Field lines are combined by joining them with ", " before parsing,
// which is what RFC 8941 section 4.2 prescribes for fields sent on several lines.
DictionaryParseResult parseDictionary(std::string_view field_value);

// Returns the member with that key, or nullptr.
const DictionaryMember* findMember(const Dictionary& dictionary, std::string_view key);

} // namespace deferd::filters::priority
