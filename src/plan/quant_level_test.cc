#include "plan/quant_level.h"

#include <gtest/gtest.h>

#include <map>

#include "base/error.h"

namespace epwa {
namespace {

// A fake environment for ResolveLevel.
struct Env {
  std::map<std::string, std::string> vars;
  std::function<const char*(const char*)> Getter() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

TEST(QuantLevel, ParsesEveryNameAndRejectsOthers) {
  for (QuantLevel l : {QuantLevel::kAuto, QuantLevel::kNone, QuantLevel::kFp16, QuantLevel::kInt8,
                       QuantLevel::kMixed, QuantLevel::kInt4})
    EXPECT_EQ(ParseQuantLevel(QuantLevelName(l)), l);
  EXPECT_EQ(ParseQuantLevel("bf16"), QuantLevel::kFp16);
  try {
    ParseQuantLevel("int3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int3"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("int4"), std::string::npos);
  }
}

TEST(QuantLevel, DefaultIsAuto) {
  Env env;
  LevelRequest r = ResolveLevel(std::nullopt, env.Getter());
  EXPECT_EQ(r.level, QuantLevel::kAuto);
  EXPECT_EQ(r.source, "default");
  EXPECT_FALSE(r.fast_loading);
}

TEST(QuantLevel, OriginalPriorityOrder) {
  Env env;
  env.vars = {{"EPW_LOAD_IN_4BIT", "true"}, {"EPW_LOAD_IN_8BIT", "true"}, {"EPW_FAST_LOADING", "true"}};
  EXPECT_EQ(ResolveLevel(std::nullopt, env.Getter()).level, QuantLevel::kInt4);
  env.vars["EPW_LOAD_IN_4BIT"] = "false";
  LevelRequest r = ResolveLevel(std::nullopt, env.Getter());
  EXPECT_EQ(r.level, QuantLevel::kInt8);
  EXPECT_EQ(r.source, "EPW_LOAD_IN_8BIT=true");
  env.vars["EPW_LOAD_IN_8BIT"] = "0";
  r = ResolveLevel(std::nullopt, env.Getter());
  EXPECT_EQ(r.level, QuantLevel::kInt4);  // the fast path is 4-bit
  EXPECT_TRUE(r.fast_loading);
  env.vars["EPW_FAST_LOADING"] = "off";
  EXPECT_EQ(ResolveLevel(std::nullopt, env.Getter()).level, QuantLevel::kAuto);
}

TEST(QuantLevel, FlagOverridesEnvironment) {
  Env env;
  env.vars = {{"EPW_LOAD_IN_4BIT", "true"}};
  LevelRequest r = ResolveLevel(std::string("int8"), env.Getter());
  EXPECT_EQ(r.level, QuantLevel::kInt8);
  EXPECT_EQ(r.source, "--quant int8");
  // EPW_FAST_LOADING with an explicit level keeps the level.
  env.vars = {{"EPW_FAST_LOADING", "true"}};
  r = ResolveLevel(std::string("fp16"), env.Getter());
  EXPECT_EQ(r.level, QuantLevel::kFp16);
  EXPECT_TRUE(r.fast_loading);
}

TEST(QuantLevel, BadValuesAreErrorsEvenWhenOverridden) {
  Env env;
  env.vars = {{"EPW_LOAD_IN_8BIT", "yes please"}};
  EXPECT_THROW(ResolveLevel(std::nullopt, env.Getter()), Error);
  EXPECT_THROW(ResolveLevel(std::string("int4"), env.Getter()), Error);
  env.vars = {{"EPW_USE_CPU", "maybe"}};
  EXPECT_THROW(EnvForcesCpu(env.Getter()), Error);
  env.vars = {{"EPW_USE_CPU", "TRUE"}};
  EXPECT_TRUE(EnvForcesCpu(env.Getter()));
}

TEST(QuantLevel, NoMmapComesFromTheFlagOrEpwNoMmap) {
  Env env;
  EXPECT_FALSE(CopyWeightsRequested(false, env.Getter()));
  EXPECT_TRUE(CopyWeightsRequested(true, env.Getter()));
  env.vars = {{"EPW_NO_MMAP", "on"}};
  EXPECT_TRUE(CopyWeightsRequested(false, env.Getter()));
  env.vars = {{"EPW_NO_MMAP", "0"}};
  EXPECT_FALSE(CopyWeightsRequested(false, env.Getter()));
  EXPECT_TRUE(CopyWeightsRequested(true, env.Getter()));  // the flag wins
  env.vars = {{"EPW_NO_MMAP", "copy"}};
  EXPECT_THROW(CopyWeightsRequested(false, env.Getter()), Error);
  EXPECT_THROW(CopyWeightsRequested(true, env.Getter()), Error);  // validated even then
}

}  // namespace
}  // namespace epwa
