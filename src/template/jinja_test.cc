// Tests of the Jinja interpreter:
//  1. the language cases of tests/data/templates/language_cases.json, each a
//     small template exercising one construct, against what Python's jinja2
//     rendered for it (language_expected.json, written by make_expected.py
//     in transformers' environment; the CTest template_expectations_current
//     keeps that file in step with jinja2);
//  2. error reporting (line numbers, one-line messages);
//  3. the bounds that keep hostile templates from crashing or hanging.
#include "template/jinja.h"
#include "template/test_fixed_now.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "template/jinja_value.h"
#include "base/test_paths.h"

namespace epwa::jinja {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using epwa::testing::RepoRoot;

Json ReadJson(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return Json::parse(ss.str());
}


std::string Render(std::string_view source, const Json& context = Json::object(), const Limits& limits = Limits()) {
  RenderOptions options;
  options.now = FixedNow();
  options.limits = limits;
  return Template::Parse(source, "", limits).Render(context, options);
}

TEST(JinjaLanguage, MatchesJinja2OnEveryCase) {
  const fs::path dir = RepoRoot() / "tests" / "data" / "templates";
  const Json cases = ReadJson(dir / "language_cases.json");
  const Json expected = ReadJson(dir / "language_expected.json");
  int checked = 0;
  for (const Json& c : cases["cases"]) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE("case " + name + ": " + c["template"].get<std::string>());
    ASSERT_TRUE(expected.contains(name)) << "run tests/data/templates/make_expected.py";
    const Json& want = expected[name];
    Json context = cases["context"];
    if (c.contains("context"))
      for (const auto& [k, v] : c["context"].items()) context[k] = v;
    std::string output, error, type;
    bool failed = false;
    try {
      output = Render(c["template"].get<std::string>(), context);
    } catch (const TemplateError& e) {
      failed = true;
      error = e.message();
      type = e.type();
    }
    if (want.contains("output")) {
      EXPECT_FALSE(failed) << type << ": " << error;
      EXPECT_EQ(output, want["output"].get<std::string>());
    } else if (name.rfind("syntax_error", 0) == 0) {
      // Syntax errors are worded this interpreter's way (jinja2's wording
      // is checked for runtime errors only); that it fails is what matters.
      EXPECT_TRUE(failed);
      EXPECT_EQ(type, "TemplateSyntaxError");
    } else {
      EXPECT_TRUE(failed) << "rendered: " << output;
      EXPECT_EQ(error, want["error"].get<std::string>());
      EXPECT_EQ(type, want["type"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(JinjaErrors, NameTheTemplateLine) {
  try {
    Render("line one\n{{ 'two' }}\n{{ x | nosuchfilter }}\n");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.line(), 3);
    EXPECT_STREQ(e.what(), "template line 3: unknown filter 'nosuchfilter'");
  }
  try {
    Render("a\n\n{% for x in [1] %}\n{{ x.y.z }}\n{% endfor %}");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.line(), 4);
    EXPECT_EQ(e.message(), "'int object' has no attribute 'y'");
    EXPECT_EQ(e.type(), "UndefinedError");
  }
  try {
    Template::Parse("{% if x %}\n{% for y in z %}\n", "model/tokenizer_config.json");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("model/tokenizer_config.json: template line ", 0), 0u) << what;
    EXPECT_NE(what.find("'endfor'"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

TEST(JinjaErrors, RaiseExceptionCarriesTheMessage) {
  try {
    Render("{% if true %}\n  {{ raise_exception('Only user and assistant roles are supported!') }}\n{% endif %}");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.type(), "TemplateError");
    EXPECT_EQ(e.message(), "Only user and assistant roles are supported!");
    EXPECT_EQ(e.line(), 2);
  }
}

TEST(JinjaErrors, UnsupportedConstructsAreRefused) {
  for (const char* source : {"{% extends 'base.html' %}", "{% include 'x' %}", "{% import 'x' as y %}",
                             "{% call m() %}x{% endcall %}", "{% for x in y recursive %}{% endfor %}",
                             "{{ x|groupby('a') }}", "{{ f(*args) }}", "{% break %}",
                             "{% macro m() %}{% break %}{% endmacro %}", "{{ '\\N{BULLET}' }}"}) {
    SCOPED_TRACE(source);
    EXPECT_THROW(Template::Parse(source), TemplateError);
  }
}

TEST(JinjaErrors, InvalidUtf8IsRefused) {
  EXPECT_THROW(Template::Parse(std::string("ok\n\xff\xfe")), TemplateError);
  try {
    Template::Parse(std::string("a\nb\n\xc3("));
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.line(), 3);
  }
}

TEST(JinjaLimits, DeepNestingFailsCleanly) {
  const std::string parens = std::string(100000, '(') + "1" + std::string(100000, ')');
  EXPECT_THROW(Template::Parse("{{ " + parens + " }}"), TemplateError);
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_THROW(Template::Parse(ifs), TemplateError);
  std::string nots = "{{ " + std::string(0, ' ');
  for (int i = 0; i < 100000; ++i) nots += "not ";
  EXPECT_THROW(Template::Parse(nots + "x }}"), TemplateError);
  std::string chain = "{{ x";
  for (int i = 0; i < 100000; ++i) chain += "|trim";
  EXPECT_THROW(Template::Parse(chain + " }}"), TemplateError);
  std::string sum = "{{ 1";
  for (int i = 0; i < 100000; ++i) sum += "+1";
  EXPECT_THROW(Template::Parse(sum + " }}"), TemplateError);
}

TEST(JinjaLimits, RunawayRecursionFailsCleanly) {
  try {
    Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.type(), "LimitError");
  }
  // Nested lists built in a loop are bounded too, so printing them cannot
  // recurse without limit.
  EXPECT_THROW(Render("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"),
               TemplateError);
  // A namespace holding itself: printing it stops at the depth bound.
  EXPECT_THROW(Render("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}"), TemplateError);
}

TEST(JinjaLimits, HugeLoopsAndOutputFailCleanly) {
  Limits small;
  small.max_steps = 200000;
  small.max_output_bytes = 1 << 20;
  try {
    Render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", Json::object(), small);
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_EQ(e.type(), "LimitError");
  }
  EXPECT_THROW(Render("{{ 'x' * 100000000 }}", Json::object(), small), TemplateError);
  EXPECT_THROW(Render("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                      Json::object(), small),
               TemplateError);
  EXPECT_THROW(Render("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
                      Json::object(), small),
               TemplateError);
}

TEST(JinjaLimits, IntegerOverflowIsAnError) {
  EXPECT_THROW(Render("{{ 9223372036854775807 + 1 }}"), TemplateError);
  EXPECT_THROW(Render("{{ 2 ** 64 }}"), TemplateError);
  EXPECT_THROW(Render("{{ -(-9223372036854775807 - 1) }}"), TemplateError);
  EXPECT_THROW(Template::Parse("{{ 99999999999999999999 }}"), TemplateError);
  EXPECT_EQ(Render("{{ 2 ** 62 }}"), "4611686018427387904");
}

TEST(JinjaValues, FloatReprMatchesPython) {
  EXPECT_EQ(FloatRepr(1.0), "1.0");
  EXPECT_EQ(FloatRepr(0.1), "0.1");
  EXPECT_EQ(FloatRepr(1e16), "1e+16");
  EXPECT_EQ(FloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(FloatRepr(0.0001), "0.0001");
  EXPECT_EQ(FloatRepr(0.00001), "1e-05");
  EXPECT_EQ(FloatRepr(-2.5e-300), "-2.5e-300");
  EXPECT_EQ(FloatRepr(123.456), "123.456");
}

TEST(JinjaValues, JsonContextKeepsKeyOrder) {
  const Json context = Json::parse(R"({"d": {"z": 1, "a": 2}})");
  EXPECT_EQ(Render("{% for k, v in d.items() %}{{ k }}{% endfor %}|{{ d|tojson }}", context), "za|{\"z\": 1, \"a\": 2}");
}

TEST(JinjaValues, TemplatesAreReusable) {
  const Template t = Template::Parse("{{ x }}-{% set x = 2 %}{{ x }}");
  EXPECT_EQ(t.Render(Json{{"x", 1}}), "1-2");
  EXPECT_EQ(t.Render(Json{{"x", "a"}}), "a-2");
}

}  // namespace
}  // namespace epwa::jinja
