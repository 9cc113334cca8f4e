#include "watermark/report.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/test_temp_dir.h"
#include "watermark/evaluate.h"

namespace epwa::wm {
namespace {

using nlohmann::json;

// A small `epwa eval watermark --report` output on models/tiny-moe: three
// schemes (gsg, kgw, epw2-et), 6 texts each, every z-score included.
constexpr const char* kFixture = "tests/data/watermark_eval_sample.json";

json LoadFixture() {
  std::ifstream in(kFixture);
  EXPECT_TRUE(in) << "cannot open " << kFixture << " (tests run from the source root)";
  return json::parse(in);
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t CountOf(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + needle.size()))
    ++n;
  return n;
}

std::string Fmt(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Count(const json& z) {
  return std::to_string(z["detected"].get<int>()) + "/" +
         std::to_string(z["n"].get<int>() + z.value("too_short", 0));
}

// The part of report.md under a "### " heading, up to the next heading.
std::string Section(const std::string& md, const std::string& heading) {
  const size_t start = md.find("### " + heading + "\n");
  if (start == std::string::npos) return "";
  const size_t end = md.find("\n#", start + 4);
  return md.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// The trapezoid area under ROC points.
double Area(const std::vector<std::pair<double, double>>& points) {
  double area = 0;
  for (size_t i = 1; i < points.size(); ++i)
    area += (points[i].first - points[i - 1].first) * (points[i].second + points[i - 1].second) / 2;
  return area;
}

TEST(RocPoints, HandMadeCase) {
  // Positives 3, 2; negatives 2, 1. Thresholds 3, 2, 1 (z >= t flagged):
  // t = 3 flags one positive, t = 2 both positives and one negative, t = 1 all.
  const auto points = RocPoints({3, 2}, {2, 1});
  const std::vector<std::pair<double, double>> want{{0, 0}, {0, 0.5}, {0.5, 1}, {1, 1}};
  EXPECT_EQ(points, want);
  EXPECT_DOUBLE_EQ(Area(points), RocAuc({3, 2}, {2, 1}));
}

TEST(RocPoints, TiesMakeADiagonalStepAndTheAreaCountsThemHalf) {
  const std::vector<double> pos{1, 2, 2}, neg{2, 0};
  const auto points = RocPoints(pos, neg);
  ASSERT_EQ(points.size(), 4u);
  EXPECT_DOUBLE_EQ(points[1].first, 0.5);
  EXPECT_DOUBLE_EQ(points[1].second, 2.0 / 3);
  EXPECT_DOUBLE_EQ(points[2].first, 0.5);
  EXPECT_DOUBLE_EQ(points[2].second, 1.0);
  EXPECT_EQ(points.back(), std::make_pair(1.0, 1.0));
  EXPECT_DOUBLE_EQ(Area(points), RocAuc(pos, neg));
  EXPECT_DOUBLE_EQ(Area(points), 2.0 / 3);
}

TEST(RocPoints, EmptySideGivesNoCurve) {
  EXPECT_TRUE(RocPoints({}, {1, 2}).empty());
  EXPECT_TRUE(RocPoints({1, 2}, {}).empty());
}

TEST(RocPoints, AreaMatchesTheEvaluationsAucOnTheFixture) {
  const json eval = LoadFixture();
  for (const json& s : eval["schemes"]) {
    const auto pos = s["full_with_prompt"]["z"].get<std::vector<double>>();
    const auto neg = s["null_human"]["z"].get<std::vector<double>>();
    EXPECT_NEAR(Area(RocPoints(pos, neg)), s["roc_auc"].get<double>(), 1e-12) << s["scheme"];
  }
}

TEST(ReportModelName, LastPathComponentMadeSafeForFileNames) {
  EXPECT_EQ(ReportModelName(json{{"model_dir", "models/tiny-moe"}}), "tiny-moe");
  EXPECT_EQ(ReportModelName(json{{"model_dir", "/x/Qwen3 30B/"}}), "Qwen3_30B");
  EXPECT_EQ(ReportModelName(json::object()), "model");
}

TEST(WatermarkReport, HeadlineTableHoldsTheFixturesValues) {
  const json eval = LoadFixture();
  epwa::testing::TempDir dir;
  WriteWatermarkReport({eval}, dir.path());
  const std::string md = ReadText(dir.File("report.md"));
  ASSERT_FALSE(md.empty());
  EXPECT_NE(md.find("## Model `tiny-moe`"), std::string::npos);
  EXPECT_NE(md.find("weights fp16"), std::string::npos);
  EXPECT_NE(md.find("key: public evaluation key"), std::string::npos);
  EXPECT_NE(md.find("60 human texts"), std::string::npos);

  const std::string headline = Section(md, "Headline");
  ASSERT_FALSE(headline.empty());
  EXPECT_NE(
      headline.find(
          "| scheme | version | detected, with prompt | detected, without prompt | median z |"),
      std::string::npos);
  const double plain_ppl = eval["plain_perplexity"].get<double>();
  for (const json& s : eval["schemes"]) {
    const double ppl = s["perplexity"].get<double>();
    const double change = 100 * (ppl / plain_ppl - 1);
    char size[32];
    std::snprintf(size, sizeof size, "%g", s["size_median_tokens"].get<double>());
    const std::string row =
        "| " + s["scheme"].get<std::string>() + " | " + s["version"].get<std::string>() + " | " +
        Count(s["full_with_prompt"]) + " | " + Count(s["full_without_prompt"]) + " | " +
        Fmt(s["full_with_prompt"]["median"].get<double>(), 2) + " | " +
        Fmt(s["roc_auc"].get<double>(), 3) + " | " +
        Fmt(100 * s["tpr_at_fpr_1pct"].get<double>(), 1) + "% | " +
        Fmt(100 * s["tpr_at_fpr_0.1pct"].get<double>(), 1) + "% | " + size + " | " + Fmt(ppl, 2) +
        " (" + (change >= 0 ? "+" : "") + Fmt(change, 1) + "%) | " +
        Fmt(s["distinct2"].get<double>(), 3) + " | " + Count(s["null_human"]) + " | " +
        Fmt(s["null_human"]["max"].get<double>(), 2) + " |";
    EXPECT_NE(headline.find(row), std::string::npos) << "missing row:\n"
                                                     << row << "\nin:\n"
                                                     << headline;
  }
  EXPECT_NE(headline.find("| unwatermarked |"), std::string::npos);
  // 60 human texts cannot measure a 1% false-alarm rate: the report says so.
  EXPECT_NE(headline.find("smallest measurable false-alarm rate is 1/60"), std::string::npos);
}

TEST(WatermarkReport, RobustnessAndLengthTables) {
  const json eval = LoadFixture();
  epwa::testing::TempDir dir;
  WriteWatermarkReport({eval}, dir.path());
  const std::string md = ReadText(dir.File("report.md"));
  const std::string robustness = Section(md, "Robustness");
  ASSERT_FALSE(robustness.empty());
  const json& gsg = eval["schemes"][0];
  ASSERT_EQ(gsg["scheme"], "gsg");
  EXPECT_NE(robustness.find(
                "| scheme | substitution 10% | substitution 30% | deletion 10% | deletion 30% | "
                "insertion 10% | insertion 30% | synonyms 50% | copy-paste 10% | copy-paste 25% | "
                "re-tokenized |"),
            std::string::npos)
      << robustness;
  const std::string gsg_row =
      "| gsg | " + Count(gsg["substituted_10pct"]) + " | " + Count(gsg["substituted_30pct"]) +
      " | " + Count(gsg["deleted_10pct"]) + " | " + Count(gsg["deleted_30pct"]) + " | " +
      Count(gsg["inserted_10pct"]) + " | " + Count(gsg["inserted_30pct"]) + " | " +
      Count(gsg["synonyms_50pct"]) + " | " + Count(gsg["copy_paste_10pct"]) + " | " +
      Count(gsg["copy_paste_25pct"]) + " | " + Count(gsg["retokenized"]) + " |";
  EXPECT_NE(robustness.find(gsg_row), std::string::npos) << gsg_row << "\n" << robustness;

  const std::string length = Section(md, "z against length");
  EXPECT_NE(
      length.find("| scheme | 25 tokens | 50 tokens | 100 tokens | 150 tokens | 200 tokens |"),
      std::string::npos)
      << length;
  std::string row = "| gsg |";
  for (const char* n : {"25", "50", "100", "150", "200"})
    row += " " + Fmt(gsg["z_by_length"][n]["median"].get<double>(), 2) + " |";
  EXPECT_NE(length.find(row), std::string::npos) << row << "\n" << length;
}

TEST(WatermarkReport, EverySvgIsWrittenWellFormedAndLinked) {
  const json eval = LoadFixture();
  epwa::testing::TempDir dir;
  WriteWatermarkReport({eval}, dir.path());
  const std::string md = ReadText(dir.File("report.md"));
  for (const char* name : {"roc_tiny-moe.svg", "z_hist_tiny-moe.svg", "z_length_tiny-moe.svg",
                           "attacks_tiny-moe.svg"}) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(std::filesystem::exists(dir.File(name)));
    std::string svg = ReadText(dir.File(name));
    while (!svg.empty() && std::isspace(static_cast<unsigned char>(svg.back()))) svg.pop_back();
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_GE(svg.size(), 6u);
    EXPECT_EQ(svg.substr(svg.size() - 6), "</svg>");
    EXPECT_EQ(CountOf(svg, "<svg"), 1u);
    EXPECT_EQ(CountOf(svg, "<g>") + CountOf(svg, "<g "), CountOf(svg, "</g>"));
    EXPECT_EQ(CountOf(svg, "<text"), CountOf(svg, "</text>"));
    EXPECT_EQ(svg.find("nan"), std::string::npos);
    EXPECT_EQ(svg.find("inf"), std::string::npos);
    EXPECT_NE(md.find(std::string("(") + name + ")"), std::string::npos);
  }
  const size_t schemes = eval["schemes"].size();
  const std::string roc = ReadText(dir.File("roc_tiny-moe.svg"));
  EXPECT_EQ(CountOf(roc, "<polyline") - CountOf(roc, "class=\"chance\""), schemes);
  EXPECT_EQ(CountOf(roc, "class=\"roc\""), schemes);
  for (const json& s : eval["schemes"])
    EXPECT_NE(roc.find("data-scheme=\"" + s["scheme"].get<std::string>() + "\""),
              std::string::npos);
  // One histogram panel per scheme, one attack panel per kind in the fixture.
  EXPECT_EQ(CountOf(ReadText(dir.File("z_hist_tiny-moe.svg")), "class=\"panel\""), schemes);
  EXPECT_EQ(CountOf(ReadText(dir.File("attacks_tiny-moe.svg")), "class=\"panel\""), 5u);
  EXPECT_EQ(CountOf(ReadText(dir.File("z_length_tiny-moe.svg")), "class=\"series\""), schemes);
}

TEST(WatermarkReport, MissingOrMistypedFieldsThrowNamingTheField) {
  const json eval = LoadFixture();
  epwa::testing::TempDir dir;
  auto message_of = [&](const json& j) -> std::string {
    try {
      WriteWatermarkReport({j}, dir.path());
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  json no_schemes = eval;
  no_schemes.erase("schemes");
  EXPECT_NE(message_of(no_schemes).find("'schemes'"), std::string::npos) << message_of(no_schemes);

  json no_full = eval;
  no_full["schemes"][1].erase("full_with_prompt");
  EXPECT_NE(message_of(no_full).find("'schemes[1].full_with_prompt'"), std::string::npos)
      << message_of(no_full);

  json bad_n = eval;
  bad_n["schemes"][0]["null_human"]["n"] = "sixty";
  EXPECT_NE(message_of(bad_n).find("'schemes[0].null_human.n'"), std::string::npos)
      << message_of(bad_n);

  json no_threshold = eval;
  no_threshold.erase("z_threshold");
  EXPECT_NE(message_of(no_threshold).find("'z_threshold'"), std::string::npos);

  EXPECT_THROW(WriteWatermarkReport({json::array()}, dir.path()), Error);
  EXPECT_THROW(WriteWatermarkReport({}, dir.path()), Error);
  // Inputs are checked before anything is written.
  EXPECT_TRUE(dir.List().empty());
}

TEST(WatermarkReport, RunWithoutZScoresOrAttacksLeavesThoseOut) {
  json eval = LoadFixture();
  for (json& s : eval["schemes"]) {
    std::vector<std::string> drop;
    for (auto& [key, value] : s.items()) {
      for (const char* attack :
           {"substituted_", "deleted_", "inserted_", "synonyms_", "copy_paste_"})
        if (key.rfind(attack, 0) == 0) drop.push_back(key);
      if (key == "retokenized") drop.push_back(key);
      if (value.is_object()) value.erase("z");
    }
    for (const std::string& key : drop) s.erase(key);
    s["size_median_tokens"] = nullptr;  // most texts never reached the p-value
  }
  epwa::testing::TempDir dir;
  WriteWatermarkReport({eval}, dir.path());
  EXPECT_EQ(dir.List(), (std::vector<std::string>{"report.md", "z_length_tiny-moe.svg"}));
  const std::string md = ReadText(dir.File("report.md"));
  EXPECT_EQ(md.find("### Robustness"), std::string::npos);
  EXPECT_EQ(md.find("roc_"), std::string::npos);
  EXPECT_NE(md.find("(z_length_tiny-moe.svg)"), std::string::npos);
  EXPECT_NE(Section(md, "Headline").find("| never |"), std::string::npos);
}

TEST(WatermarkReport, SeveralModelsGetSectionsFilesAndASideBySideTable) {
  const json a = LoadFixture();
  json b = a, c = a;
  b["model_dir"] = "models/other-moe/";
  c["quant"] = "q8";  // the same model at another weights level
  epwa::testing::TempDir dir;
  WriteWatermarkReport({a, b, c}, dir.path());
  const std::string md = ReadText(dir.File("report.md"));
  EXPECT_NE(md.find("## Models side by side"), std::string::npos);
  for (const char* model : {"tiny-moe", "other-moe", "tiny-moe-q8"}) {
    SCOPED_TRACE(model);
    EXPECT_NE(md.find("## Model `" + std::string(model) + "`"), std::string::npos);
    EXPECT_TRUE(std::filesystem::exists(dir.File("roc_" + std::string(model) + ".svg")));
    EXPECT_NE(md.find("| `" + std::string(model) + "` |"), std::string::npos);
  }
}

TEST(WatermarkReport, TextIsEscapedForXmlAndMarkdown) {
  json eval = LoadFixture();
  eval["schemes"][0]["scheme"] = "a<b&c|d";
  epwa::testing::TempDir dir;
  WriteWatermarkReport({eval}, dir.path());
  const std::string roc = ReadText(dir.File("roc_tiny-moe.svg"));
  EXPECT_NE(roc.find("a&lt;b&amp;c|d"), std::string::npos);
  EXPECT_EQ(roc.find("a<b"), std::string::npos);
  EXPECT_NE(ReadText(dir.File("report.md")).find("| a&lt;b&c\\|d |"), std::string::npos);
}

}  // namespace
}  // namespace epwa::wm

namespace epwa::wm {
namespace {

// `--steal` and `--emoji` results: a stealing table per model and an emoji
// column in the robustness table; a malformed stealing entry names its path.
TEST(WatermarkReport, StealingAndEmojiAreReported) {
  json eval = LoadFixture();
  eval["schemes"][0]["emoji"] = {{"n", 6}, {"detected", 0}, {"too_short", 0}, {"median", 0.2}};
  eval["stealing"] = json::parse(R"({"spoof_texts": 50, "schemes": [{"scheme": "kgw", "runs": [
      {"observed_outputs": 100, "spoofed": {"n": 50, "detected": 49, "too_short": 0, "median": 9.5},
       "learned_pairs": 1965, "learned_precision": 0.925}]}]})");
  const auto files = RenderWatermarkReport({eval});
  const std::string& md = files.at("report.md");
  EXPECT_NE(md.find("### Stealing"), std::string::npos);
  EXPECT_NE(md.find("| kgw | 100 | 49/50 | 9.50 | 1965 | 92.5% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| emoji |"), std::string::npos) << md;
  eval["stealing"]["schemes"][0]["runs"][0].erase("spoofed");
  try {
    RenderWatermarkReport({eval});
    ADD_FAILURE() << "a run without 'spoofed' was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stealing.schemes[0].runs[0].spoofed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace epwa::wm
