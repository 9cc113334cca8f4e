#include "base/env_flags.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "base/error.h"

namespace epwa {
namespace {

TEST(EnvFlags, AcceptsEveryTrueSpelling) {
  for (const char* v : {"1", "true", "yes", "on", "TRUE", "True", "YES", "Yes", "ON", "On", "tRuE"}) {
    EXPECT_EQ(ParseEnvBool("X", v), std::optional<bool>(true)) << v;
  }
}

TEST(EnvFlags, AcceptsEveryFalseSpelling) {
  for (const char* v : {"0", "false", "no", "off", "FALSE", "False", "NO", "No", "OFF", "Off", "fAlSe"}) {
    EXPECT_EQ(ParseEnvBool("X", v), std::optional<bool>(false)) << v;
  }
}

TEST(EnvFlags, IgnoresSurroundingWhitespace) {
  EXPECT_EQ(ParseEnvBool("X", " 1 "), std::optional<bool>(true));
  EXPECT_EQ(ParseEnvBool("X", "\ttrue\n"), std::optional<bool>(true));
  EXPECT_EQ(ParseEnvBool("X", "  Off\r\n"), std::optional<bool>(false));
}

TEST(EnvFlags, UnsetEmptyAndBlankAreNullopt) {
  EXPECT_EQ(ParseEnvBool("X", nullptr), std::nullopt);
  EXPECT_EQ(ParseEnvBool("X", ""), std::nullopt);
  EXPECT_EQ(ParseEnvBool("X", "   "), std::nullopt);
}

TEST(EnvFlags, RejectsOtherValues) {
  for (const char* v : {"yes please", "2", "tru", "-1", "01", "y", "n", "t", "f", "enable",
                        "disabled", "1.0", "on off", "\"true\""}) {
    EXPECT_THROW(ParseEnvBool("X", v), Error) << v;
  }
}

TEST(EnvFlags, MessageNamesVariableQuotesValueListsChoices) {
  try {
    ParseEnvBool("EPW_LOAD_IN_4BIT", "yes please");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "EPW_LOAD_IN_4BIT=\"yes please\" is not a boolean "
                 "(use true/false, 1/0, yes/no, on/off)");
  }
}

TEST(EnvFlags, MessageEscapesQuotesAndControlBytes) {
  try {
    ParseEnvBool("V", "a\"b\nc");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "V=\"a\\\"b\\x0ac\" is not a boolean (use true/false, 1/0, yes/no, on/off)");
  }
}

TEST(EnvFlags, EnvBoolReadsTheEnvironment) {
  const char* name = "EPWA_ENV_FLAGS_TEST_VARIABLE";
  unsetenv(name);
  EXPECT_EQ(EnvBool(name), std::nullopt);
  setenv(name, "", 1);
  EXPECT_EQ(EnvBool(name), std::nullopt);
  setenv(name, " On ", 1);
  EXPECT_EQ(EnvBool(name), std::optional<bool>(true));
  setenv(name, "no", 1);
  EXPECT_EQ(EnvBool(name), std::optional<bool>(false));
  setenv(name, "2", 1);
  try {
    EnvBool(name);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("EPWA_ENV_FLAGS_TEST_VARIABLE=\"2\""), std::string::npos)
        << e.what();
  }
  unsetenv(name);
}

}  // namespace
}  // namespace epwa
