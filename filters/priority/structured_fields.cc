#include "filters/priority/structured_fields.h"

#include <utility>

namespace deferd::filters::priority {
namespace {

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isLowerAlpha(char c) { return c >= 'a' && c <= 'z'; }
bool isAlpha(char c) { return isLowerAlpha(c) || (c >= 'A' && c <= 'Z'); }

// tchar from RFC 9110 section 5.6.2.
bool isTokenChar(char c) {
  if (isAlpha(c) || isDigit(c)) {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool isKeyChar(char c) {
  return isLowerAlpha(c) || isDigit(c) || c == '_' || c == '-' || c == '.' || c == '*';
}

bool isBase64Char(char c) { return isAlpha(c) || isDigit(c) || c == '+' || c == '/' || c == '='; }

// Each parse step consumes input from the front and returns false on a syntax error, after
// recording what was wrong and where.
class Parser {
public:
  explicit Parser(std::string_view input) : input_(input) {}

  DictionaryParseResult parse() {
    DictionaryParseResult result;
    Dictionary dictionary;
    if (checkAscii() && parseTopLevel(dictionary)) {
      result.dictionary = std::move(dictionary);
    } else {
      result.error = std::move(error_);
    }
    return result;
  }

private:
  bool checkAscii() {
    for (size_t i = 0; i < input_.size(); ++i) {
      if (static_cast<unsigned char>(input_[i]) > 0x7f) {
        pos_ = i;
        return fail("non-ASCII byte");
      }
    }
    return true;
  }

  // RFC 8941 section 4.2: leading and trailing spaces are allowed around the dictionary.
  bool parseTopLevel(Dictionary& dictionary) {
    skipSpaces();
    if (!parseMembers(dictionary)) {
      return false;
    }
    skipSpaces();
    if (!atEnd()) {
      return fail("unexpected character after the dictionary");
    }
    return true;
  }

  // RFC 8941 section 4.2.2.
  bool parseMembers(Dictionary& dictionary) {
    while (!atEnd()) {
      std::string key;
      if (!parseKey(key)) {
        return false;
      }

      StructuredValue value;
      if (peek() == '=') {
        ++pos_;
        if (!parseItemOrInnerList(value)) {
          return false;
        }
      } else if (!parseParameters()) {
        return false;
      }
      store(dictionary, std::move(key), value);

      skipWhitespace();
      if (atEnd()) {
        return true;
      }
      if (peek() != ',') {
        return fail("expected ',' between members");
      }
      ++pos_;
      skipWhitespace();
      if (atEnd()) {
        return fail("trailing ','");
      }
    }
    return true;
  }

  // A repeated key overwrites the earlier value and keeps the earlier position.
  static void store(Dictionary& dictionary, std::string key, StructuredValue value) {
    for (DictionaryMember& member : dictionary) {
      if (member.key == key) {
        member.value = value;
        return;
      }
    }
    dictionary.push_back(DictionaryMember{std::move(key), value});
  }

  // RFC 8941 section 4.2.3.3.
  bool parseKey(std::string& key) {
    if (atEnd() || !(isLowerAlpha(peek()) || peek() == '*')) {
      return fail("invalid key: a key starts with a lowercase letter or '*'");
    }
    size_t start = pos_;
    while (!atEnd() && isKeyChar(peek())) {
      ++pos_;
    }
    key = std::string(input_.substr(start, pos_ - start));
    return true;
  }

  bool parseItemOrInnerList(StructuredValue& value) {
    if (peek() == '(') {
      value.type = StructuredValue::Type::kInnerList;
      return parseInnerList();
    }
    return parseItem(value);
  }

  // RFC 8941 section 4.2.1.2.
  bool parseInnerList() {
    ++pos_; // '('
    while (!atEnd()) {
      skipSpaces();
      if (peek() == ')') {
        ++pos_;
        return parseParameters();
      }
      StructuredValue item;
      if (!parseItem(item)) {
        return false;
      }
      if (atEnd() || (peek() != ' ' && peek() != ')')) {
        return fail("expected ' ' or ')' after an inner list item");
      }
    }
    return fail("unterminated inner list");
  }

  bool parseItem(StructuredValue& value) { return parseBareItem(value) && parseParameters(); }

  // RFC 8941 section 4.2.3.2. Parameter values are checked and dropped.
  bool parseParameters() {
    while (!atEnd() && peek() == ';') {
      ++pos_;
      skipSpaces();
      std::string key;
      if (!parseKey(key)) {
        return false;
      }
      if (peek() == '=') {
        ++pos_;
        StructuredValue ignored;
        if (!parseBareItem(ignored)) {
          return false;
        }
      }
    }
    return true;
  }

  // RFC 8941 section 4.2.3.1.
  bool parseBareItem(StructuredValue& value) {
    if (atEnd()) {
      return fail("missing value");
    }
    char c = peek();
    if (c == '-' || isDigit(c)) {
      return parseNumber(value);
    }
    if (c == '"') {
      value.type = StructuredValue::Type::kString;
      return parseString();
    }
    if (isAlpha(c) || c == '*') {
      value.type = StructuredValue::Type::kToken;
      return parseToken();
    }
    if (c == ':') {
      value.type = StructuredValue::Type::kByteSequence;
      return parseByteSequence();
    }
    if (c == '?') {
      value.type = StructuredValue::Type::kBoolean;
      return parseBoolean(value.boolean);
    }
    return fail("invalid value");
  }

  // RFC 8941 section 4.2.4: at most 15 integer digits, or 12 digits, '.' and 1 to 3 digits.
  bool parseNumber(StructuredValue& value) {
    bool negative = false;
    if (peek() == '-') {
      negative = true;
      ++pos_;
    }
    if (atEnd() || !isDigit(peek())) {
      return fail("expected a digit");
    }

    bool decimal = false;
    size_t integer_digits = 0;
    size_t fraction_digits = 0;
    int64_t magnitude = 0;
    while (!atEnd()) {
      char c = peek();
      if (isDigit(c)) {
        if (decimal) {
          ++fraction_digits;
        } else {
          ++integer_digits;
          magnitude = magnitude * 10 + (c - '0');
        }
      } else if (!decimal && c == '.') {
        if (integer_digits > 12) {
          return fail("decimal has more than 12 integer digits");
        }
        decimal = true;
      } else {
        break;
      }
      ++pos_;
      if (!decimal && integer_digits > 15) {
        return fail("integer has more than 15 digits");
      }
      if (decimal && integer_digits + 1 + fraction_digits > 16) {
        return fail("decimal is longer than 16 characters");
      }
    }

    if (!decimal) {
      value.type = StructuredValue::Type::kInteger;
      value.integer = negative ? -magnitude : magnitude;
      return true;
    }
    if (fraction_digits == 0) {
      return fail("decimal ends with '.'");
    }
    if (fraction_digits > 3) {
      return fail("decimal has more than 3 fraction digits");
    }
    value.type = StructuredValue::Type::kDecimal;
    return true;
  }

  // RFC 8941 section 4.2.5.
  bool parseString() {
    ++pos_; // opening '"'
    while (!atEnd()) {
      char c = input_[pos_++];
      if (c == '\\') {
        if (atEnd() || (peek() != '"' && peek() != '\\')) {
          return fail("invalid escape in string");
        }
        ++pos_;
      } else if (c == '"') {
        return true;
      } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        --pos_;
        return fail("control character in string");
      }
    }
    return fail("unterminated string");
  }

  // RFC 8941 section 4.2.6.
  bool parseToken() {
    while (!atEnd() && (isTokenChar(peek()) || peek() == ':' || peek() == '/')) {
      ++pos_;
    }
    return true;
  }

  // RFC 8941 section 4.2.7. The content is checked, not decoded.
  bool parseByteSequence() {
    ++pos_; // opening ':'
    size_t end = input_.find(':', pos_);
    if (end == std::string_view::npos) {
      return fail("unterminated byte sequence");
    }
    for (; pos_ < end; ++pos_) {
      if (!isBase64Char(peek())) {
        return fail("invalid base64 character in byte sequence");
      }
    }
    ++pos_; // closing ':'
    return true;
  }

  // RFC 8941 section 4.2.8.
  bool parseBoolean(bool& value) {
    ++pos_; // '?'
    if (!atEnd() && (peek() == '0' || peek() == '1')) {
      value = peek() == '1';
      ++pos_;
      return true;
    }
    return fail("a boolean is ?0 or ?1");
  }

  bool atEnd() const { return pos_ >= input_.size(); }
  char peek() const { return atEnd() ? '\0' : input_[pos_]; }

  void skipSpaces() {
    while (!atEnd() && peek() == ' ') {
      ++pos_;
    }
  }

  // OWS: spaces and horizontal tabs, allowed only around the commas between members.
  void skipWhitespace() {
    while (!atEnd() && (peek() == ' ' || peek() == '\t')) {
      ++pos_;
    }
  }

  bool fail(std::string_view what) {
    error_ = std::string(what) + " at offset " + std::to_string(pos_);
    return false;
  }

  std::string_view input_;
  size_t pos_ = 0;
  std::string error_;
};

} // namespace

DictionaryParseResult parseDictionary(std::string_view field_value) {
  return Parser(field_value).parse();
}

const DictionaryMember* findMember(const Dictionary& dictionary, std::string_view key) {
  for (const DictionaryMember& member : dictionary) {
    if (member.key == key) {
      return &member;
    }
  }
  return nullptr;
}

} // namespace deferd::filters::priority
