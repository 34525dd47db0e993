#include "filters/priority/priority_header.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "filters/priority/structured_fields.h"
#include "tests/unit/test_support.h"

namespace deferd::filters::priority {
namespace {

using deferd::testing::TestHeaderMap;

PriorityParseResult parseLines(std::vector<std::string_view> lines) { return parsePriority(lines); }

PriorityParseResult parseOne(std::string_view line) { return parseLines({line}); }

struct ValidCase {
  std::string_view value;
  std::optional<int> urgency;
  int hop;
};

TEST(PriorityHeaderTest, ParsesValidValues) {
  const ValidCase cases[] = {
      {"u=1, hop=2", 1, 2},
      {"u=0", 0, 0},
      {"u=7", 7, 0},
      {"hop=1", std::nullopt, 1},
      {"hop=2, u=5", 5, 2},
      {"", std::nullopt, 0},
      {"   ", std::nullopt, 0},
      {"u=1,hop=2", 1, 2},
      {"u=1 ,\thop=2", 1, 2},
      {"  u=1, hop=2  ", 1, 2},
      {"u=1\t", 1, 0},
      {"u=1;src=app, hop=2;x;y=?0", 1, 2},
      {"u=4, i", 4, 0},
      {"u=2, x=\"text\", t=tok/en:1, b=:aGk=:, d=1.5, l=(1 2 \"a\");p, *k=?1", 2, 0},
      {"u=6, hop=0", 6, 0},
      {"u=3, hop=999999999999999", 3, kMaxHop},
      {"u=3, hop=255", 3, 255},
      {"u=3, hop=256", 3, kMaxHop},
  };
  for (const ValidCase& c : cases) {
    SCOPED_TRACE(std::string(c.value));
    PriorityParseResult result = parseOne(c.value);
    EXPECT_EQ(result.status, PriorityParseStatus::kValid) << result.error;
    EXPECT_EQ(result.urgency, c.urgency);
    EXPECT_EQ(result.hop, c.hop);
    EXPECT_TRUE(result.error.empty());
  }
}

TEST(PriorityHeaderTest, RejectsMalformedValues) {
  const std::string_view cases[] = {
      "u=8",                // above the least urgent
      "u=-1",               // below the most urgent
      "u=9999999999999999", // 16 digits: not an Integer at all
      "u=1.0",              // Decimal, not Integer
      "u=\"1\"",            // String
      "u=one",              // Token
      "u",                  // Boolean true
      "u=?1",               // Boolean
      "u=(1)",              // Inner List
      "hop=-1",             // negative hop
      "hop=1.5",            // Decimal hop
      "hop",                // Boolean hop
      "U=1",                // keys are lowercase
      "1u=1",               // keys start with a letter or '*'
      "u=1,",               // trailing comma
      ",u=1",               // leading comma
      "u=1,,hop=2",         // empty member
      "u=1 hop=2",          // missing comma
      "u=1;",               // parameter without key
      "u=1; P=2",           // uppercase parameter key
      "u=",                 // missing value
      "u==1",               // stray '='
      "\tu=1",              // leading tab: only spaces may lead the field
      "x=\"unterminated",   // broken unknown member still fails the field
      "x=\"bad\\escape\"",  // only \" and \\ escapes
      "x=:not base64!:",    // invalid byte sequence
      "x=?2",               // invalid boolean
      "x=1.",               // decimal ending in '.'
      "x=1.2345",           // more than 3 fraction digits
      "x=1234567890123.1",  // more than 12 integer digits in a decimal
      "x=(1 2",             // unterminated inner list
      "x=@1659578233",      // RFC 9651 Date is not RFC 8941
      "u=1, caf\xc3\xa9=1", // non-ASCII
      "u=1, x=\"a\x01\"",   // control character in a string
  };
  for (std::string_view value : cases) {
    SCOPED_TRACE(std::string(value));
    PriorityParseResult result = parseOne(value);
    EXPECT_EQ(result.status, PriorityParseStatus::kMalformed);
    EXPECT_FALSE(result.error.empty());
    EXPECT_EQ(result.urgency, std::nullopt);
    EXPECT_EQ(result.hop, 0);
  }
}

TEST(PriorityHeaderTest, AbsentWithoutFieldLines) {
  PriorityParseResult result = parseLines({});
  EXPECT_EQ(result.status, PriorityParseStatus::kAbsent);
  EXPECT_EQ(result.urgency, std::nullopt);
  EXPECT_EQ(result.hop, 0);
}

TEST(PriorityHeaderTest, LastDuplicateWins) {
  EXPECT_EQ(parseOne("u=1, u=5").urgency, 5);
  EXPECT_EQ(parseOne("hop=1, u=2, hop=3").hop, 3);

  // Only the last value of a key counts, valid or not.
  EXPECT_EQ(parseOne("u=9, u=2").urgency, 2);
  EXPECT_EQ(parseOne("u=2, u=9").status, PriorityParseStatus::kMalformed);
}

TEST(PriorityHeaderTest, CombinesFieldLines) {
  PriorityParseResult result = parseLines({"u=1", "hop=2"});
  EXPECT_EQ(result.status, PriorityParseStatus::kValid);
  EXPECT_EQ(result.urgency, 1);
  EXPECT_EQ(result.hop, 2);

  // A later line overrides an earlier one, as a duplicate key does.
  EXPECT_EQ(parseLines({"u=1, hop=2", "u=6"}).urgency, 6);

  // A malformed line spoils the combined field.
  EXPECT_EQ(parseLines({"u=1", "u="}).status, PriorityParseStatus::kMalformed);

  // An empty line adds an empty member, which RFC 8941 rejects.
  EXPECT_EQ(parseLines({"u=1", ""}).status, PriorityParseStatus::kMalformed);
}

TEST(PriorityHeaderTest, CollectsFieldLinesFromHeaderMap) {
  TestHeaderMap headers{
      {"Deferd-Priority", "u=1"}, {"x-other", "u=7"}, {"deferd-priority", "hop=2"}};
  std::vector<std::string_view> lines = fieldLines(headers, kPriorityHeader);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "u=1");
  EXPECT_EQ(lines[1], "hop=2");

  PriorityParseResult result = parsePriority(lines);
  EXPECT_EQ(result.urgency, 1);
  EXPECT_EQ(result.hop, 2);

  EXPECT_TRUE(fieldLines(headers, "priority").empty());
}

TEST(PriorityHeaderTest, ResolvesRouteDefault) {
  EXPECT_EQ(parseOne("u=1, hop=2").resolve(5), (Priority{.urgency = 1, .hop = 2}));
  EXPECT_EQ(parseOne("hop=2").resolve(5), (Priority{.urgency = 5, .hop = 2}));
  EXPECT_EQ(parseOne("u=9, hop=2").resolve(5), (Priority{.urgency = 5, .hop = 0}));
  EXPECT_EQ(parseLines({}).resolve(5), (Priority{.urgency = 5, .hop = 0}));
}

TEST(PriorityHeaderTest, SerializesBothMembers) {
  EXPECT_EQ(serializePriority(Priority{.urgency = 1, .hop = 2}), "u=1, hop=2");
  EXPECT_EQ(serializePriority(Priority{}), "u=3, hop=0");
}

TEST(PriorityHeaderTest, SerializationRoundTrips) {
  for (int urgency = kMostUrgent; urgency <= kLeastUrgent; ++urgency) {
    for (int hop : {0, 1, 3, kMaxHop}) {
      Priority priority{.urgency = urgency, .hop = hop};
      std::string value = serializePriority(priority);
      SCOPED_TRACE(value);
      PriorityParseResult result = parseOne(value);
      ASSERT_EQ(result.status, PriorityParseStatus::kValid) << result.error;
      EXPECT_EQ(result.resolve(kDefaultUrgency), priority);
    }
  }
}

TEST(PriorityHeaderTest, Rfc9218FormIgnoresInvalidUrgency) {
  auto parse = [](std::string_view value) {
    std::vector<std::string_view> lines{value};
    return parseRfc9218Priority(lines);
  };

  EXPECT_EQ(parse("u=0, i").urgency, 0);
  EXPECT_EQ(parse("u=5").urgency, 5);
  EXPECT_EQ(parse("u=5").status, PriorityParseStatus::kValid);

  // RFC 9218 section 4: out-of-range and mistyped parameters are ignored.
  EXPECT_EQ(parse("u=9").status, PriorityParseStatus::kValid);
  EXPECT_EQ(parse("u=9").urgency, std::nullopt);
  EXPECT_EQ(parse("u=?1").urgency, std::nullopt);

  // There is no hop count in RFC 9218.
  EXPECT_EQ(parse("u=1, hop=2").hop, 0);

  EXPECT_EQ(parse("u=1,").status, PriorityParseStatus::kMalformed);
  EXPECT_EQ(parseRfc9218Priority({}).status, PriorityParseStatus::kAbsent);
}

TEST(PriorityStructuredFieldsTest, KeepsFirstPositionOfDuplicate) {
  DictionaryParseResult result = parseDictionary("a=1, b=2, a=3");
  ASSERT_TRUE(result.dictionary) << result.error;
  ASSERT_EQ(result.dictionary->size(), 2u);
  EXPECT_EQ((*result.dictionary)[0].key, "a");
  EXPECT_EQ((*result.dictionary)[0].value.integer, 3);
  EXPECT_EQ((*result.dictionary)[1].key, "b");
}

TEST(PriorityStructuredFieldsTest, ReportsItemTypes) {
  DictionaryParseResult result =
      parseDictionary("i=-42, d=-1.5, s=\"a\\\"b\", t=*tok, b=:AQID:, y=?0, n, l=()");
  ASSERT_TRUE(result.dictionary) << result.error;
  using Type = StructuredValue::Type;
  const std::pair<std::string_view, Type> expected[] = {
      {"i", Type::kInteger}, {"d", Type::kDecimal},      {"s", Type::kString},
      {"t", Type::kToken},   {"b", Type::kByteSequence}, {"y", Type::kBoolean},
      {"n", Type::kBoolean}, {"l", Type::kInnerList},
  };
  for (const auto& [key, type] : expected) {
    SCOPED_TRACE(std::string(key));
    const DictionaryMember* member = findMember(*result.dictionary, key);
    ASSERT_NE(member, nullptr);
    EXPECT_EQ(member->value.type, type);
  }
  EXPECT_EQ(findMember(*result.dictionary, "i")->value.integer, -42);
  EXPECT_FALSE(findMember(*result.dictionary, "y")->value.boolean);
  EXPECT_TRUE(findMember(*result.dictionary, "n")->value.boolean);
  EXPECT_EQ(findMember(*result.dictionary, "missing"), nullptr);
}

TEST(PriorityStructuredFieldsTest, AcceptsIntegerLimits) {
  DictionaryParseResult result = parseDictionary("max=999999999999999, min=-999999999999999");
  ASSERT_TRUE(result.dictionary) << result.error;
  EXPECT_EQ(findMember(*result.dictionary, "max")->value.integer, 999999999999999);
  EXPECT_EQ(findMember(*result.dictionary, "min")->value.integer, -999999999999999);

  EXPECT_FALSE(parseDictionary("x=-").dictionary);
  EXPECT_FALSE(parseDictionary("x=-a").dictionary);
}

TEST(PriorityStructuredFieldsTest, ErrorNamesOffset) {
  DictionaryParseResult result = parseDictionary("u=1, hop=");
  ASSERT_FALSE(result.dictionary);
  EXPECT_EQ(result.error, "missing value at offset 9");
}

} // namespace
} // namespace deferd::filters::priority
