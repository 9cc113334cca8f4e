#include "watermark/report.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <iterator>
#include <optional>
#include <set>
#include <string_view>

#include "base/error.h"
#include "io/atomic_file.h"

namespace epwa::wm {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------
// Reading the evaluation JSON
// ---------------------------------------------------------------------------

// Where a field sits, so that every error names the evaluation and the full
// path of the field at fault ("schemes[1].null_human.n").
struct Ctx {
  std::string source;  // "evaluation JSON #1"
  std::string path;    // the current object's path; empty at the top level

  std::string Name(const std::string& key) const { return path.empty() ? key : path + "." + key; }
  Ctx Child(const std::string& key) const { return {source, Name(key)}; }
  [[noreturn]] void Missing(const std::string& key) const {
    throw Error(source + " lacks the field '" + Name(key) + "'");
  }
  [[noreturn]] void Wrong(const std::string& key, const std::string& what) const {
    throw Error(source + ": the field '" + Name(key) + "' is not " + what);
  }
};

// The field, or nullptr when it is absent or null: the evaluation writes null
// for values it could not compute (a size no text reached), which the report
// shows as absent.
const json* Find(const json& object, const std::string& key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> OptNumber(const json& object, const std::string& key, const Ctx& ctx) {
  const json* v = Find(object, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) ctx.Wrong(key, "a number");
  return v->get<double>();
}

double NeedNumber(const json& object, const std::string& key, const Ctx& ctx) {
  const std::optional<double> v = OptNumber(object, key, ctx);
  if (!v) ctx.Missing(key);
  return *v;
}

std::optional<std::string> OptString(const json& object, const std::string& key, const Ctx& ctx) {
  const json* v = Find(object, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) ctx.Wrong(key, "a string");
  return v->get<std::string>();
}

// An object-valued field, or nullptr when absent; anything else is an error,
// since a summary that is present but malformed means a broken file.
const json* OptObject(const json& object, const std::string& key, const Ctx& ctx) {
  const json* v = Find(object, key);
  if (v != nullptr && !v->is_object()) ctx.Wrong(key, "an object");
  return v;
}

// One ZSet summary: how many texts were scored, how many were detected, and
// (in report mode) every z-score.
struct ZSummary {
  int64_t n = 0, too_short = 0, detected = 0;
  std::optional<double> median, max;
  std::vector<double> z;
  bool has_z = false;

  // Texts too short to score were not detected, so they count in the total:
  // the same denominator as the evaluation's TPR.
  int64_t total() const { return n + too_short; }
  double rate() const { return total() > 0 ? static_cast<double>(detected) / total() : 0.0; }
};

ZSummary ReadZ(const json& object, const Ctx& ctx) {
  ZSummary s;
  s.n = static_cast<int64_t>(NeedNumber(object, "n", ctx));
  s.detected = static_cast<int64_t>(NeedNumber(object, "detected", ctx));
  s.too_short = static_cast<int64_t>(OptNumber(object, "too_short", ctx).value_or(0));
  s.median = OptNumber(object, "median", ctx);
  s.max = OptNumber(object, "max", ctx);
  if (const json* z = Find(object, "z")) {
    if (!z->is_array()) ctx.Wrong("z", "an array");
    s.has_z = true;
    for (const json& v : *z) {
      // NaN is written as null by the JSON library: a score that does not
      // exist, so it is left out rather than failing the whole report.
      if (v.is_null()) continue;
      if (!v.is_number()) ctx.Wrong("z", "an array of numbers");
      s.z.push_back(v.get<double>());
    }
  }
  return s;
}

std::optional<ZSummary> OptZ(const json& object, const std::string& key, const Ctx& ctx) {
  const json* v = OptObject(object, key, ctx);
  if (v == nullptr) return std::nullopt;
  return ReadZ(*v, ctx.Child(key));
}

// The kinds of attack the evaluation runs, in the order the report shows
// them, with the prefix of their JSON keys ("substituted_10pct").
struct AttackKind {
  const char* prefix;
  const char* label;  // column heading and panel title
  const char* axis;   // what the strength measures, for the plot's x axis
};
constexpr AttackKind kAttackKinds[] = {
    {"substituted_", "substitution", "tokens substituted (%)"},
    {"deleted_", "deletion", "tokens deleted (%)"},
    {"inserted_", "insertion", "tokens inserted (%)"},
    {"synonyms_", "synonyms", "words replaced by synonyms (%)"},
    {"copy_paste_", "copy-paste", "watermarked share (%)"},
};
constexpr int kNumAttackKinds = static_cast<int>(std::size(kAttackKinds));
constexpr int kCopyPaste = 4;
constexpr int kSynonyms = 3;

struct Attack {
  int kind = 0;
  int percent = 0;
  ZSummary z;
};

// "substituted_10pct" -> (0, 10); nullopt for keys that are not attacks.
std::optional<std::pair<int, int>> ParseAttackKey(const std::string& key) {
  for (int k = 0; k < kNumAttackKinds; ++k) {
    const std::string_view prefix = kAttackKinds[k].prefix;
    if (key.size() <= prefix.size() + 3 || key.compare(0, prefix.size(), prefix) != 0) continue;
    if (key.compare(key.size() - 3, 3, "pct") != 0) continue;
    const char* first = key.data() + prefix.size();
    const char* last = key.data() + key.size() - 3;
    int percent = 0;
    const auto r = std::from_chars(first, last, percent);
    if (r.ec == std::errc() && r.ptr == last) return std::make_pair(k, percent);
  }
  return std::nullopt;
}

// The "other_level" block: detection by the same model at another weights
// level (cross-precision).
struct OtherLevel {
  std::string level;
  std::optional<ZSummary> full, full_min_margin;
  std::optional<double> min_margin, expert_agreement;
};

struct SchemeData {
  std::string name, version;
  ZSummary with_prompt;
  std::optional<ZSummary> without_prompt, human, unwatermarked, retokenized, cspv, emoji;
  std::vector<Attack> attacks;                      // by kind, then strength
  std::vector<std::pair<int, ZSummary>> by_length;  // by length
  std::optional<double> roc_auc, tpr_1pct, tpr_01pct, size_median, perplexity, distinct2;
  std::optional<double> mean_scored_pairs, decode_ms, recovery_prompt, recovery_no_prompt;
  std::optional<double> size_p_value;
  int64_t size_never = 0;
  std::optional<OtherLevel> other;
};

struct EvalData {
  std::string model;  // unique among the report's evaluations; used in file names
  std::optional<std::string> model_dir, quant, key, human_source;
  double z_threshold = 4;
  std::optional<double> gamma, delta, new_tokens, generations, human_texts;
  std::optional<double> plain_perplexity, plain_distinct2, plain_decode_ms;
  std::vector<SchemeData> schemes;
  // `eval watermark --steal`: per scheme, per number of observed outputs.
  struct StealRun {
    int64_t observed = 0;
    ZSummary spoofed;
    std::optional<double> learned_pairs, learned_precision;
  };
  std::vector<std::pair<std::string, std::vector<StealRun>>> stealing;
  std::optional<double> spoof_texts;
};

std::optional<OtherLevel> ReadOtherLevel(const json& scheme, const Ctx& ctx) {
  const json* o = OptObject(scheme, "other_level", ctx);
  if (o == nullptr) return std::nullopt;
  const Ctx c = ctx.Child("other_level");
  OtherLevel other;
  if (const json* level = Find(*o, "level"))
    other.level = level->is_string() ? level->get<std::string>() : level->dump();
  other.full = OptZ(*o, "full", c);
  other.full_min_margin = OptZ(*o, "full_min_margin", c);
  other.min_margin = OptNumber(*o, "min_margin", c);
  other.expert_agreement = OptNumber(*o, "expert_agreement", c);
  return other;
}

SchemeData ReadScheme(const json& j, const Ctx& ctx) {
  if (!j.is_object()) throw Error(ctx.source + ": '" + ctx.path + "' is not an object");
  SchemeData s;
  const std::optional<std::string> name = OptString(j, "scheme", ctx);
  if (!name) ctx.Missing("scheme");
  s.name = *name;
  s.version = OptString(j, "version", ctx).value_or("");
  const std::optional<ZSummary> with_prompt = OptZ(j, "full_with_prompt", ctx);
  if (!with_prompt) ctx.Missing("full_with_prompt");
  s.with_prompt = *with_prompt;
  s.without_prompt = OptZ(j, "full_without_prompt", ctx);
  s.human = OptZ(j, "null_human", ctx);
  s.unwatermarked = OptZ(j, "null_unwatermarked", ctx);
  s.retokenized = OptZ(j, "retokenized", ctx);
  s.emoji = OptZ(j, "emoji", ctx);
  s.cspv = OptZ(j, "cspv", ctx);
  for (const auto& [key, value] : j.items()) {
    if (const auto attack = ParseAttackKey(key)) {
      if (value.is_null()) continue;
      if (!value.is_object()) ctx.Wrong(key, "an object");
      s.attacks.push_back({attack->first, attack->second, ReadZ(value, ctx.Child(key))});
    }
  }
  std::sort(s.attacks.begin(), s.attacks.end(), [](const Attack& a, const Attack& b) {
    return std::make_pair(a.kind, a.percent) < std::make_pair(b.kind, b.percent);
  });
  if (const json* by_length = OptObject(j, "z_by_length", ctx)) {
    const Ctx c = ctx.Child("z_by_length");
    for (const auto& [key, value] : by_length->items()) {
      int length = 0;
      const auto r = std::from_chars(key.data(), key.data() + key.size(), length);
      if (r.ec != std::errc() || r.ptr != key.data() + key.size())
        c.Wrong(key, "named by a length");
      if (value.is_null()) continue;
      if (!value.is_object()) c.Wrong(key, "an object");
      s.by_length.emplace_back(length, ReadZ(value, c.Child(key)));
    }
    std::sort(s.by_length.begin(), s.by_length.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  s.roc_auc = OptNumber(j, "roc_auc", ctx);
  s.tpr_1pct = OptNumber(j, "tpr_at_fpr_1pct", ctx);
  s.tpr_01pct = OptNumber(j, "tpr_at_fpr_0.1pct", ctx);
  s.size_median = OptNumber(j, "size_median_tokens", ctx);
  s.size_never = static_cast<int64_t>(OptNumber(j, "size_never", ctx).value_or(0));
  s.size_p_value = OptNumber(j, "size_p_value", ctx);
  s.perplexity = OptNumber(j, "perplexity", ctx);
  s.distinct2 = OptNumber(j, "distinct2", ctx);
  s.mean_scored_pairs = OptNumber(j, "mean_scored_pairs", ctx);
  s.decode_ms = OptNumber(j, "decode_ms_per_token", ctx);
  s.recovery_prompt = OptNumber(j, "expert_recovery_with_prompt", ctx);
  s.recovery_no_prompt = OptNumber(j, "expert_recovery_without_prompt", ctx);
  s.other = ReadOtherLevel(j, ctx);
  return s;
}

EvalData ReadEval(const json& j, int index) {
  const Ctx ctx{"evaluation JSON #" + std::to_string(index + 1), ""};
  if (!j.is_object()) throw Error(ctx.source + " is not a JSON object");
  EvalData e;
  const json* schemes = Find(j, "schemes");
  if (schemes == nullptr) ctx.Missing("schemes");
  if (!schemes->is_array()) ctx.Wrong("schemes", "an array");
  if (schemes->empty()) throw Error(ctx.source + ": the field 'schemes' is empty");
  e.z_threshold = NeedNumber(j, "z_threshold", ctx);
  e.model = ReportModelName(j);
  e.model_dir = OptString(j, "model_dir", ctx);
  e.quant = OptString(j, "quant", ctx);
  e.key = OptString(j, "key", ctx);
  e.human_source = OptString(j, "human_source", ctx);
  e.gamma = OptNumber(j, "gamma", ctx);
  e.delta = OptNumber(j, "delta", ctx);
  e.new_tokens = OptNumber(j, "new_tokens", ctx);
  e.generations = OptNumber(j, "generations_per_scheme", ctx);
  if (const json* human = OptObject(j, "human", ctx))
    e.human_texts = OptNumber(*human, "paragraphs", ctx.Child("human"));
  e.plain_perplexity = OptNumber(j, "plain_perplexity", ctx);
  e.plain_distinct2 = OptNumber(j, "plain_distinct2", ctx);
  e.plain_decode_ms = OptNumber(j, "plain_decode_ms_per_token", ctx);
  for (size_t i = 0; i < schemes->size(); ++i)
    e.schemes.push_back(ReadScheme((*schemes)[i], ctx.Child("schemes[" + std::to_string(i) + "]")));
  if (const json* steal = OptObject(j, "stealing", ctx)) {
    const Ctx sc = ctx.Child("stealing");
    e.spoof_texts = OptNumber(*steal, "spoof_texts", sc);
    const json* list = Find(*steal, "schemes");
    if (list == nullptr) sc.Missing("schemes");
    if (!list->is_array()) sc.Wrong("schemes", "an array");
    for (size_t i = 0; i < list->size(); ++i) {
      const Ctx c = sc.Child("schemes[" + std::to_string(i) + "]");
      const json& entry = (*list)[i];
      if (!entry.is_object()) throw Error(c.source + ": '" + c.path + "' is not an object");
      const std::optional<std::string> name = OptString(entry, "scheme", c);
      if (!name) c.Missing("scheme");
      const json* runs = Find(entry, "runs");
      if (runs == nullptr) c.Missing("runs");
      if (!runs->is_array()) c.Wrong("runs", "an array");
      std::vector<EvalData::StealRun> parsed;
      for (size_t k = 0; k < runs->size(); ++k) {
        const Ctx rc = c.Child("runs[" + std::to_string(k) + "]");
        const json& run = (*runs)[k];
        if (!run.is_object()) throw Error(rc.source + ": '" + rc.path + "' is not an object");
        EvalData::StealRun r;
        r.observed = static_cast<int64_t>(NeedNumber(run, "observed_outputs", rc));
        const json* spoofed = OptObject(run, "spoofed", rc);
        if (spoofed == nullptr) rc.Missing("spoofed");
        r.spoofed = ReadZ(*spoofed, rc.Child("spoofed"));
        r.learned_pairs = OptNumber(run, "learned_pairs", rc);
        r.learned_precision = OptNumber(run, "learned_precision", rc);
        parsed.push_back(std::move(r));
      }
      e.stealing.emplace_back(*name, std::move(parsed));
    }
  }
  // Each scheme has its own null; the human-text count is the same for all.
  if (!e.human_texts && e.schemes.front().human)
    e.human_texts = static_cast<double>(e.schemes.front().human->total());
  return e;
}

// Two evaluations of the same model (at two weights levels, say) would write
// over each other's plots: the weights level, then a number, tells them apart.
void MakeModelNamesUnique(std::vector<EvalData>& evals) {
  std::set<std::string> used;
  for (EvalData& e : evals) {
    std::string name = e.model;
    if (used.count(name) && e.quant)
      name = ReportModelName(json{{"model_dir", e.model + "-" + *e.quant}});
    for (int k = 2; used.count(name); ++k) name = e.model + "-" + std::to_string(k);
    used.insert(name);
    e.model = name;
  }
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

constexpr const char* kAbsent = "—";

// Fixed-point text that does not depend on the C locale (a decimal comma in
// an SVG coordinate would break the file), with "-0.00" written as "0.00".
std::string Fixed(double v, int digits) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[512];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, digits);
  if (r.ec != std::errc()) return "?";
  std::string s(buf, r.ptr);
  if (s[0] == '-' && s.find_first_not_of("0.", 1) == std::string::npos) s.erase(0, 1);
  return s;
}

std::string Fixed(const std::optional<double>& v, int digits) {
  return v ? Fixed(*v, digits) : kAbsent;
}

std::string Percent(const std::optional<double>& fraction, int digits = 1) {
  return fraction ? Fixed(100 * *fraction, digits) + "%" : kAbsent;
}

// A plain number as short as it can be: "0.25", "2", "200".
std::string Short(double v) {
  std::string s = Fixed(v, 6);
  if (s.find('.') != std::string::npos) {
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

// "detected/total".
std::string Count(const ZSummary& z) {
  return std::to_string(z.detected) + "/" + std::to_string(z.total());
}
std::string Count(const std::optional<ZSummary>& z) { return z ? Count(*z) : kAbsent; }

// "11.79 (+16.1%)": a value and its change against the unwatermarked text.
std::string WithChange(const std::optional<double>& v, const std::optional<double>& base,
                       int digits) {
  if (!v) return kAbsent;
  std::string s = Fixed(*v, digits);
  if (base && *base != 0) {
    const double change = 100 * (*v / *base - 1);
    s += " (" + std::string(change >= 0 ? "+" : "") + Fixed(change, 1) + "%)";
  }
  return s;
}

// MarkMyWords' size: tokens are counts, so a median is shown without
// decimals unless it fell between two texts; null means most texts never
// reached the p-value.
std::string Size(const SchemeData& s) {
  std::string text = s.size_median ? Short(std::round(*s.size_median * 2) / 2) : "never";
  if (s.size_never > 0) text += " (" + std::to_string(s.size_never) + " never)";
  return text;
}

std::string XmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Text inside a Markdown table cell: a '|' would end the cell, and '<' could
// start HTML in renderers that allow it.
std::string Cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|')
      out += "\\|";
    else if (c == '<')
      out += "&lt;";
    else
      out += c;
  }
  return out;
}

// A Markdown table whose first `text_columns` columns hold names (left
// aligned) and the rest numbers (right aligned, so digits line up).
std::string Table(const std::vector<std::string>& header,
                  const std::vector<std::vector<std::string>>& rows, size_t text_columns = 1) {
  std::string out = "|";
  for (const std::string& h : header) out += " " + h + " |";
  out += "\n|";
  for (size_t c = 0; c < header.size(); ++c) out += c < text_columns ? "---|" : "---:|";
  out += "\n";
  for (const auto& row : rows) {
    out += "|";
    for (const std::string& cell : row) out += " " + cell + " |";
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------------------
// SVG drawing
// ---------------------------------------------------------------------------

constexpr double kWidth = 640;

// Okabe-Ito colours (distinguishable with the common colour-vision
// deficiencies), with a dash pattern per scheme as well so that lines that
// coincide (every scheme at 100% detection) stay tellable apart.
constexpr const char* kColours[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                    "#E69F00", "#56B4E9", "#000000", "#8C564B"};
constexpr const char* kDashes[] = {"", "7 3", "2 3", "9 3 2 3"};
constexpr const char* kHumanColour = "#888888";
constexpr const char* kThresholdColour = "#C00000";

const char* Colour(size_t i) { return kColours[i % std::size(kColours)]; }
const char* Dash(size_t i) { return kDashes[i % std::size(kDashes)]; }

// Pixel coordinates with one decimal: enough for any screen, and stable text
// for diffs between runs.
std::string Px(double v) { return Fixed(v, 1); }

class Svg {
 public:
  explicit Svg(double height) : height_(height) {}

  void Raw(const std::string& element) {
    body_ += std::string(2 * depth_ + 2, ' ') + element + "\n";
  }
  void Open(const std::string& attributes = "") {
    Raw("<g" + (attributes.empty() ? "" : " " + attributes) + ">");
    ++depth_;
  }
  void Close() {
    --depth_;
    Raw("</g>");
  }

  void Line(double x1, double y1, double x2, double y2, const std::string& stroke, double width,
            const std::string& dash = "", const std::string& extra = "") {
    Raw("<line x1=\"" + Px(x1) + "\" y1=\"" + Px(y1) + "\" x2=\"" + Px(x2) + "\" y2=\"" + Px(y2) +
        "\" stroke=\"" + stroke + "\" stroke-width=\"" + Fixed(width, 1) + "\"" + DashAttr(dash) +
        extra + "/>");
  }

  void Polyline(const std::vector<std::pair<double, double>>& points, const std::string& stroke,
                double width, const std::string& dash, const std::string& extra = "") {
    std::string pts;
    for (const auto& [x, y] : points) pts += (pts.empty() ? "" : " ") + Px(x) + "," + Px(y);
    Raw("<polyline points=\"" + pts + "\" fill=\"none\" stroke=\"" + stroke + "\" stroke-width=\"" +
        Fixed(width, 1) + "\" stroke-linejoin=\"round\"" + DashAttr(dash) + extra + "/>");
  }

  void Rect(double x, double y, double w, double h, const std::string& fill, double opacity = 1,
            const std::string& extra = "") {
    Raw("<rect x=\"" + Px(x) + "\" y=\"" + Px(y) + "\" width=\"" + Px(w) + "\" height=\"" + Px(h) +
        "\" fill=\"" + fill + "\"" +
        (opacity < 1 ? " fill-opacity=\"" + Fixed(opacity, 2) + "\"" : "") + extra + "/>");
  }

  void Circle(double x, double y, double r, const std::string& fill) {
    Raw("<circle cx=\"" + Px(x) + "\" cy=\"" + Px(y) + "\" r=\"" + Px(r) + "\" fill=\"" + fill +
        "\"/>");
  }

  // `anchor` is start, middle or end; `rotate` turns the text about (x, y),
  // for the y axis's label.
  void Text(double x, double y, const std::string& text, const std::string& anchor = "start",
            double size = 12, double rotate = 0, const std::string& extra = "") {
    std::string e = "<text x=\"" + Px(x) + "\" y=\"" + Px(y) + "\"";
    if (anchor != "start") e += " text-anchor=\"" + anchor + "\"";
    if (size != 12) e += " font-size=\"" + Fixed(size, 0) + "\"";
    if (rotate != 0)
      e += " transform=\"rotate(" + Fixed(rotate, 0) + " " + Px(x) + " " + Px(y) + ")\"";
    Raw(e + extra + ">" + XmlEscape(text) + "</text>");
  }

  // The document: a white background first, since viewers with a dark theme
  // would otherwise draw black axes on black.
  std::string Finish() const {
    const std::string w = Fixed(kWidth, 0), h = Fixed(height_, 0);
    return "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + w +
           "\" height=\"" + h + "\" viewBox=\"0 0 " + w + " " + h +
           "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
           "  <rect x=\"0\" y=\"0\" width=\"" +
           w + "\" height=\"" + h + "\" fill=\"#ffffff\"/>\n" + body_ + "</svg>\n";
  }

 private:
  static std::string DashAttr(const std::string& dash) {
    return dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"";
  }

  double height_;
  int depth_ = 0;
  std::string body_;
};

// One axis: maps data values to pixels, linearly or by log10. Values outside
// the range are clamped to its ends, so a point never leaves its panel.
struct Axis {
  double lo = 0, hi = 1;        // data range
  double px_lo = 0, px_hi = 1;  // pixels of lo and hi (y axes run upwards: px_lo > px_hi)
  bool log = false;

  double operator()(double v) const {
    double t =
        log ? (std::log10(std::max(v, lo)) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
            : (v - lo) / (hi - lo);
    t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0);
    return px_lo + t * (px_hi - px_lo);
  }
};

// Curves of rates sit on 0 and 1 (a perfect ROC runs along the frame): the
// data area of such plots is inset from the axis lines so they stay visible.
constexpr double kInset = 7;

struct Tick {
  double at;
  std::string label;
};

// Ticks at 1, 2 or 5 times a power of ten, about `target` of them: the
// steps people read without effort. Labels carry as many decimals as the step.
double NiceStep(double lo, double hi, int target) {
  const double raw = std::max(hi - lo, 1e-12) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return mag * (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10);
}

std::vector<Tick> LinearTicks(double lo, double hi, int target) {
  const double step = NiceStep(lo, hi, target);
  const int digits = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  std::vector<Tick> ticks;
  for (int64_t k = static_cast<int64_t>(std::ceil(lo / step - 1e-9)); k * step <= hi + 1e-9 * step;
       ++k)
    ticks.push_back({k * step, Fixed(k * step, digits)});
  return ticks;
}

// Widens [lo, hi] to whole tick steps, so that both ends of an axis carry a
// label.
void NiceRange(double& lo, double& hi, int target) {
  if (hi <= lo) hi = lo + 1;
  const double step = NiceStep(lo, hi, target);
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
}

// One tick per decade ("0.001", "0.01", "0.1", "1").
std::vector<Tick> DecadeTicks(double lo, double hi) {
  std::vector<Tick> ticks;
  for (int e = static_cast<int>(std::ceil(std::log10(lo) - 1e-9));
       e <= std::floor(std::log10(hi) + 1e-9); ++e)
    ticks.push_back({std::pow(10.0, e), Fixed(std::pow(10.0, e), std::max(0, -e))});
  return ticks;
}

struct Box {
  double x, y, w, h;
};

// Grid lines, the two axes, ticks with labels, and the axis titles of one
// plot area.
void DrawAxes(Svg& svg, const Box& box, const Axis& x, const Axis& y,
              const std::vector<Tick>& xticks, const std::vector<Tick>& yticks,
              const std::string& xlabel, const std::string& ylabel) {
  svg.Open("class=\"axes\"");
  for (const Tick& t : xticks) svg.Line(x(t.at), box.y, x(t.at), box.y + box.h, "#e4e4e4", 1);
  for (const Tick& t : yticks) svg.Line(box.x, y(t.at), box.x + box.w, y(t.at), "#e4e4e4", 1);
  svg.Line(box.x, box.y + box.h, box.x + box.w, box.y + box.h, "#000000", 1);
  svg.Line(box.x, box.y, box.x, box.y + box.h, "#000000", 1);
  for (const Tick& t : xticks) {
    svg.Line(x(t.at), box.y + box.h, x(t.at), box.y + box.h + 4, "#000000", 1);
    svg.Text(x(t.at), box.y + box.h + 16, t.label, "middle", 11);
  }
  for (const Tick& t : yticks) {
    svg.Line(box.x - 4, y(t.at), box.x, y(t.at), "#000000", 1);
    svg.Text(box.x - 6, y(t.at) + 4, t.label, "end", 11);
  }
  if (!xlabel.empty()) svg.Text(box.x + box.w / 2, box.y + box.h + 32, xlabel, "middle");
  if (!ylabel.empty()) svg.Text(box.x - 38, box.y + box.h / 2, ylabel, "middle", 12, -90);
  svg.Close();
}

struct LegendItem {
  std::string label, colour, dash;
  bool box = false;  // a filled swatch (histogram bars) instead of a line
  double opacity = 1;
};

void DrawSwatch(Svg& svg, double x, double y, const LegendItem& item) {
  if (item.box)
    svg.Rect(x, y - 9, 22, 10, item.colour, item.opacity);
  else
    svg.Line(x, y - 4, x + 22, y - 4, item.colour, 2, item.dash);
}

// A legend in a column (beside a single plot).
void DrawLegendColumn(Svg& svg, double x, double y, const std::vector<LegendItem>& items) {
  svg.Open("class=\"legend\"");
  for (size_t i = 0; i < items.size(); ++i) {
    DrawSwatch(svg, x, y + 18 * i, items[i]);
    svg.Text(x + 28, y + 18 * i, items[i].label, "start", 11);
  }
  svg.Close();
}

// A legend in a row (above small multiples, which use the full width). Text
// widths are estimated, since SVG has no layout: 6.2 px a character at 11 px.
void DrawLegendRow(Svg& svg, double x, double y, const std::vector<LegendItem>& items) {
  svg.Open("class=\"legend\"");
  for (const LegendItem& item : items) {
    DrawSwatch(svg, x, y, item);
    svg.Text(x + 28, y, item.label, "start", 11);
    x += 28 + 6.2 * item.label.size() + 18;
  }
  svg.Close();
}

void DrawTitle(Svg& svg, const std::string& title) {
  svg.Text(kWidth / 2, 22, title, "middle", 14, 0, " font-weight=\"bold\"");
}

// The plot area of panel (row, col) in a grid of small multiples that starts
// at `top`: each cell keeps room for its title above and for tick labels and
// an axis title below and to the left.
Box GridCell(int row, int col, int cols, double top, double cell_h) {
  const double cell_w = (kWidth - 10) / cols;
  return {10 + col * cell_w + 52, top + row * cell_h + 20, cell_w - 52 - 14, cell_h - 20 - 40};
}

// One scheme's line in a line plot: the polyline, with a dot at every data
// point so that single points and coinciding lines still show.
void DrawSeries(Svg& svg, const std::vector<std::pair<double, double>>& pixels, size_t scheme,
                const std::string& name) {
  svg.Open("class=\"series\" data-scheme=\"" + XmlEscape(name) + "\"");
  if (pixels.size() > 1) svg.Polyline(pixels, Colour(scheme), 2, Dash(scheme));
  for (const auto& [x, y] : pixels) svg.Circle(x, y, 3, Colour(scheme));
  svg.Close();
}

// ---------------------------------------------------------------------------
// The four plots
// ---------------------------------------------------------------------------

bool HasRocData(const SchemeData& s) {
  return s.with_prompt.has_z && !s.with_prompt.z.empty() && s.human && s.human->has_z &&
         !s.human->z.empty();
}

// ROC curves on a log FPR axis: the region that matters for a detector is
// FPR <= 1%, which a linear axis squeezes into its first pixels. The axis
// starts at the decade below 1/N (N human texts): smaller rates cannot be
// measured, and FPR 0 is drawn at that left edge.
std::optional<std::string> RocSvg(const EvalData& e) {
  size_t max_negatives = 0;
  for (const SchemeData& s : e.schemes)
    if (HasRocData(s)) max_negatives = std::max(max_negatives, s.human->z.size());
  if (max_negatives == 0) return std::nullopt;
  const double floor_fpr = std::pow(10.0, std::floor(std::log10(1.0 / max_negatives) + 1e-9));
  Svg svg(420);
  DrawTitle(svg, "ROC: watermarked texts vs human texts (" + e.model + ")");
  const Box box{70, 40, 390, 320};
  const Axis x{floor_fpr, 1, box.x + kInset, box.x + box.w - kInset, true};
  const Axis y{0, 1, box.y + box.h - kInset, box.y + kInset, false};
  DrawAxes(svg, box, x, y, DecadeTicks(floor_fpr, 1), LinearTicks(0, 1, 5),
           "false-positive rate on human texts (log)", "true-positive rate");
  // Chance: a detector that ignores the text has TPR = FPR, a curve on a log
  // axis, drawn from samples.
  std::vector<std::pair<double, double>> chance;
  for (int i = 0; i <= 60; ++i) {
    const double f = floor_fpr * std::pow(1.0 / floor_fpr, i / 60.0);
    chance.emplace_back(x(f), y(f));
  }
  svg.Polyline(chance, "#aaaaaa", 1, "4 3", " class=\"chance\"");
  std::vector<LegendItem> legend;
  for (size_t i = 0; i < e.schemes.size(); ++i) {
    const SchemeData& s = e.schemes[i];
    if (!HasRocData(s)) continue;
    std::vector<std::pair<double, double>> pixels;
    for (const auto& [fpr, tpr] : RocPoints(s.with_prompt.z, s.human->z))
      pixels.emplace_back(x(fpr), y(tpr));
    svg.Polyline(pixels, Colour(i), 2, Dash(i),
                 " class=\"roc\" data-scheme=\"" + XmlEscape(s.name) + "\"");
    legend.push_back(
        {s.name + (s.roc_auc ? " (AUC " + Fixed(*s.roc_auc, 3) + ")" : ""), Colour(i), Dash(i)});
  }
  legend.push_back({"chance", "#aaaaaa", "4 3"});
  DrawLegendColumn(svg, 480, 52, legend);
  svg.Text(480, 52 + 18 * legend.size() + 10, "FPR 0 is drawn at the", "start", 10);
  svg.Text(480, 52 + 18 * legend.size() + 23,
           "left edge (" + std::to_string(max_negatives) + " human texts)", "start", 10);
  return svg.Finish();
}

// Histogram bins shared by every panel, so that panels compare at a glance:
// a width of 1, 2 or 5 times a power of ten giving at most 40 bins over all
// scores and the threshold.
struct Bins {
  double lo = 0, width = 1;
  int count = 1;
};

Bins MakeBins(double lo, double hi) {
  Bins b;
  b.width = NiceStep(lo, hi, 40);
  b.lo = std::floor(lo / b.width) * b.width;
  b.count = std::max(1, static_cast<int>(std::ceil((hi - b.lo) / b.width - 1e-9)));
  if (b.lo + b.count * b.width <= hi) ++b.count;  // hi itself falls in the last bin
  return b;
}

// The fraction of `z` in each bin: fractions rather than counts, since there
// are far more human texts than watermarked ones.
std::vector<double> Histogram(const std::vector<double>& z, const Bins& b) {
  std::vector<double> h(b.count, 0.0);
  for (double v : z)
    h[std::clamp(static_cast<int>(std::floor((v - b.lo) / b.width)), 0, b.count - 1)] += 1;
  for (double& v : h) v /= std::max<size_t>(z.size(), 1);
  return h;
}

void DrawBars(Svg& svg, const std::vector<double>& h, const Bins& b, const Axis& x, const Axis& y,
              const std::string& colour, const std::string& cls) {
  svg.Open("class=\"" + cls + "\"");
  for (int k = 0; k < b.count; ++k)
    if (h[k] > 0)
      svg.Rect(x(b.lo + k * b.width), y(h[k]), x(b.lo + (k + 1) * b.width) - x(b.lo + k * b.width),
               y(0) - y(h[k]), colour, 0.55);
  svg.Close();
}

// z histograms as small multiples, one panel per scheme: watermarked texts
// (with the prompt) in the scheme's colour over the scheme's human null in
// grey, both half transparent so that the overlap shows; the threshold as a
// red dashed line.
std::optional<std::string> HistogramSvg(const EvalData& e) {
  double lo = e.z_threshold, hi = e.z_threshold;
  bool any = false;
  for (const SchemeData& s : e.schemes)
    for (const ZSummary* z : {&s.with_prompt, s.human ? &*s.human : nullptr})
      if (z != nullptr && z->has_z)
        for (double v : z->z) lo = std::min(lo, v), hi = std::max(hi, v), any = true;
  if (!any) return std::nullopt;
  const Bins bins = MakeBins(lo, hi);
  const int n = static_cast<int>(e.schemes.size());
  const int cols = n == 4 ? 2 : std::min(n, 3), rows = (n + cols - 1) / cols;
  const double top = 50, cell_h = rows == 1 ? 350 : rows == 2 ? 180 : 160;
  Svg svg(top + rows * cell_h + 10);
  DrawTitle(svg, "z-scores: watermarked (with prompt) vs human texts (" + e.model + ")");
  std::vector<std::vector<double>> pos(n), neg(n);
  double ymax = 0;
  for (int i = 0; i < n; ++i) {
    const SchemeData& s = e.schemes[i];
    if (s.with_prompt.has_z) pos[i] = Histogram(s.with_prompt.z, bins);
    if (s.human && s.human->has_z) neg[i] = Histogram(s.human->z, bins);
    for (const auto* h : {&pos[i], &neg[i]})
      for (double v : *h) ymax = std::max(ymax, v);
  }
  double ylo = 0, yhi = std::max(ymax, 0.05);
  NiceRange(ylo, yhi, 4);
  for (int i = 0; i < n; ++i) {
    const SchemeData& s = e.schemes[i];
    const Box box = GridCell(i / cols, i % cols, cols, top, cell_h);
    const Axis x{bins.lo, bins.lo + bins.count * bins.width, box.x, box.x + box.w, false};
    const Axis y{ylo, yhi, box.y + box.h, box.y, false};
    svg.Open("class=\"panel\" data-scheme=\"" + XmlEscape(s.name) + "\"");
    svg.Text(box.x + box.w / 2, box.y - 6, s.name, "middle", 12, 0, " font-weight=\"bold\"");
    DrawAxes(svg, box, x, y, LinearTicks(x.lo, x.hi, 6), LinearTicks(ylo, yhi, 4), "z",
             i % cols == 0 ? "fraction of texts" : "");
    if (!neg[i].empty()) DrawBars(svg, neg[i], bins, x, y, kHumanColour, "null");
    if (!pos[i].empty()) DrawBars(svg, pos[i], bins, x, y, Colour(i), "watermarked");
    if (pos[i].empty() && neg[i].empty())
      svg.Text(box.x + box.w / 2, box.y + box.h / 2, "no z-scores", "middle");
    svg.Line(x(e.z_threshold), box.y, x(e.z_threshold), box.y + box.h, kThresholdColour, 1.5,
             "5 3");
    svg.Close();
  }
  DrawLegendRow(svg, 20, 42,
                {{"human texts", kHumanColour, "", true, 0.55},
                 {"watermarked, with prompt (panel colour)", Colour(0), "", true, 0.55},
                 {"z = " + Short(e.z_threshold) + " (detection)", kThresholdColour, "5 3"}});
  return svg.Finish();
}

// Median z against the number of generated tokens scored: how fast evidence
// builds up, and where each scheme crosses the threshold.
std::optional<std::string> LengthSvg(const EvalData& e) {
  double xmax = 0, ylo = 0, yhi = e.z_threshold;
  bool any = false;
  for (const SchemeData& s : e.schemes)
    for (const auto& [length, z] : s.by_length)
      if (z.median) {
        any = true;
        xmax = std::max(xmax, static_cast<double>(length));
        ylo = std::min(ylo, *z.median);
        yhi = std::max(yhi, *z.median);
      }
  if (!any) return std::nullopt;
  double xlo = 0;
  NiceRange(xlo, xmax, 5);
  NiceRange(ylo, yhi, 5);
  Svg svg(420);
  DrawTitle(svg, "Median z against text length (" + e.model + ")");
  const Box box{70, 40, 390, 320};
  const Axis x{xlo, xmax, box.x, box.x + box.w, false};
  const Axis y{ylo, yhi, box.y + box.h, box.y, false};
  DrawAxes(svg, box, x, y, LinearTicks(xlo, xmax, 5), LinearTicks(ylo, yhi, 5),
           "generated tokens scored (with the prompt)", "median z");
  svg.Line(box.x, y(e.z_threshold), box.x + box.w, y(e.z_threshold), kThresholdColour, 1.5, "5 3");
  std::vector<LegendItem> legend;
  for (size_t i = 0; i < e.schemes.size(); ++i) {
    const SchemeData& s = e.schemes[i];
    std::vector<std::pair<double, double>> pixels;
    for (const auto& [length, z] : s.by_length)
      if (z.median) pixels.emplace_back(x(length), y(*z.median));
    if (pixels.empty()) continue;
    DrawSeries(svg, pixels, i, s.name);
    legend.push_back({s.name, Colour(i), Dash(i)});
  }
  legend.push_back({"z = " + Short(e.z_threshold) + " (detection)", kThresholdColour, "5 3"});
  DrawLegendColumn(svg, 480, 52, legend);
  return svg.Finish();
}

// The unattacked point of each kind's line, so that every line starts from
// where the scheme stands without the attack: edits start at 0% from the
// plain detection with the prompt (synonyms from the re-tokenized texts,
// since that attack goes through text), and copy-paste ends at 100% with the
// whole text watermarked, detected without the prompt as copy-paste is.
std::optional<std::pair<int, ZSummary>> Baseline(const SchemeData& s, int kind) {
  if (kind == kCopyPaste) {
    if (s.without_prompt) return std::make_pair(100, *s.without_prompt);
    return std::nullopt;
  }
  if (kind == kSynonyms && s.retokenized) return std::make_pair(0, *s.retokenized);
  return std::make_pair(0, s.with_prompt);
}

// Detection rate against attack strength: one panel per kind of attack, one
// line per scheme.
std::optional<std::string> AttacksSvg(const EvalData& e) {
  std::vector<int> kinds;
  for (int k = 0; k < kNumAttackKinds; ++k)
    for (const SchemeData& s : e.schemes)
      if (std::any_of(s.attacks.begin(), s.attacks.end(),
                      [&](const Attack& a) { return a.kind == k; })) {
        kinds.push_back(k);
        break;
      }
  if (kinds.empty()) return std::nullopt;
  const int n = static_cast<int>(kinds.size());
  const int cols = n == 4 ? 2 : std::min(n, 3), rows = (n + cols - 1) / cols;
  const double top = 50, cell_h = rows == 1 ? 340 : 175;
  Svg svg(top + rows * cell_h + 34);
  DrawTitle(svg, "Detection rate under attack (" + e.model + ")");
  for (int p = 0; p < n; ++p) {
    const int kind = kinds[p];
    std::vector<std::vector<std::pair<int, double>>> lines(e.schemes.size());
    double xmax = kind == kCopyPaste ? 100 : 0;
    for (size_t i = 0; i < e.schemes.size(); ++i) {
      const SchemeData& s = e.schemes[i];
      for (const Attack& a : s.attacks) {
        if (a.kind != kind) continue;
        lines[i].emplace_back(a.percent, a.z.rate());
        xmax = std::max(xmax, static_cast<double>(a.percent));
      }
      if (lines[i].empty()) continue;
      if (const auto base = Baseline(s, kind))
        lines[i].emplace_back(base->first, base->second.rate());
      std::sort(lines[i].begin(), lines[i].end());
    }
    double xlo = 0;
    NiceRange(xlo, xmax, 5);
    const Box box = GridCell(p / cols, p % cols, cols, top, cell_h);
    const Axis x{xlo, xmax, box.x + kInset, box.x + box.w - kInset, false};
    const Axis y{0, 1, box.y + box.h - kInset, box.y + kInset, false};
    svg.Open("class=\"panel\" data-attack=\"" + std::string(kAttackKinds[kind].label) + "\"");
    svg.Text(box.x + box.w / 2, box.y - 6, kAttackKinds[kind].label, "middle", 12, 0,
             " font-weight=\"bold\"");
    DrawAxes(svg, box, x, y, LinearTicks(xlo, xmax, 5), LinearTicks(0, 1, 4),
             kAttackKinds[kind].axis, p % cols == 0 ? "detection rate" : "");
    for (size_t i = 0; i < lines.size(); ++i) {
      std::vector<std::pair<double, double>> pixels;
      for (const auto& [percent, rate] : lines[i]) pixels.emplace_back(x(percent), y(rate));
      if (!pixels.empty()) DrawSeries(svg, pixels, i, e.schemes[i].name);
    }
    svg.Close();
  }
  std::vector<LegendItem> legend;
  for (size_t i = 0; i < e.schemes.size(); ++i)
    legend.push_back({e.schemes[i].name, Colour(i), Dash(i)});
  DrawLegendRow(svg, 20, 42, legend);
  svg.Text(
      10, top + rows * cell_h + 12,
      "Detected: z > " + Short(e.z_threshold) +
          ", out of all texts. At 0%: no attack (for synonyms: decoded and re-tokenized only).",
      "start", 10);
  if (std::find(kinds.begin(), kinds.end(), kCopyPaste) != kinds.end())
    svg.Text(10, top + rows * cell_h + 26,
             "Copy-paste at 100%: a whole watermarked text, detected without the prompt.", "start",
             10);
  return svg.Finish();
}

// ---------------------------------------------------------------------------
// report.md
// ---------------------------------------------------------------------------

// The plots written for one model, with what each shows, for the links.
struct Plot {
  std::string file, title, caption;
};

std::string SetupLine(const EvalData& e) {
  std::string s = "**Setup.** Model `" + e.model + "`";
  if (e.model_dir) s += " (`" + *e.model_dir + "`)";
  s += ", weights " + e.quant.value_or("unknown");
  if (e.gamma) s += "; green-list fraction γ = " + Short(*e.gamma);
  if (e.delta) s += ", bias δ = " + Short(*e.delta);
  if (e.new_tokens) s += "; " + Short(*e.new_tokens) + " generated tokens per text";
  if (e.generations) s += ", " + Short(*e.generations) + " watermarked texts per scheme";
  if (e.human_texts) {
    s += ", " + Short(*e.human_texts) + " human texts";
    if (e.human_source) s += " (`" + *e.human_source + "`)";
  }
  s += "; detection at z > " + Short(e.z_threshold);
  s += "; key: " + e.key.value_or("unknown") + ".";
  return s;
}

std::vector<std::string> HeadlineRow(const SchemeData& s, const EvalData& e) {
  return {Cell(s.name),
          Cell(s.version),
          Count(s.with_prompt),
          Count(s.without_prompt),
          Fixed(s.with_prompt.median, 2),
          Fixed(s.roc_auc, 3),
          Percent(s.tpr_1pct),
          Percent(s.tpr_01pct),
          Size(s),
          WithChange(s.perplexity, e.plain_perplexity, 2),
          Fixed(s.distinct2, 3),
          Count(s.human),
          s.human ? Fixed(s.human->max, 2) : kAbsent};
}

// With N human texts, a false-alarm rate below 1/N cannot be measured; the
// reader must know when a "TPR at FPR 0.1%" column is really "at no false
// alarm among N".
std::string FprNote(const EvalData& e) {
  if (!e.human_texts || *e.human_texts <= 0) return "";
  const double n = *e.human_texts;
  std::string which;
  if (0.01 * n < 1)
    which = "both TPR columns use";
  else if (0.001 * n < 1)
    which = "the 0.1% column uses";
  else
    return "";
  return " With " + Short(n) + " human texts the smallest measurable false-alarm rate is 1/" +
         Short(n) + " = " + Fixed(100 / n, 2) + "%, so " + which +
         " the largest human z as the threshold.";
}

std::string HeadlineSection(const EvalData& e) {
  std::string size_p =
      e.schemes.front().size_p_value ? Short(*e.schemes.front().size_p_value) : "0.02";
  std::string out = "### Headline\n\n";
  out += "How often each scheme's watermarked texts are detected (z > " + Short(e.z_threshold) +
         ", out of all texts, with and without the prompt given to the detector), how well z "
         "separates them "
         "from human texts (ROC AUC and the true-positive rate at the thresholds that give 1% and "
         "0.1% false "
         "alarms on the human texts, empirically), the median number of generated tokens before "
         "the p-value "
         "first reaches " +
         size_p +
         " (size), the text quality (perplexity under the unwatermarked model, "
         "with its change, and distinct-2), and the false alarms on human texts.";
  out += FprNote(e) + "\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const SchemeData& s : e.schemes) rows.push_back(HeadlineRow(s, e));
  rows.push_back({"unwatermarked", "", "", "", "", "", "", "", "", Fixed(e.plain_perplexity, 2),
                  Fixed(e.plain_distinct2, 3), "", ""});
  out += Table({"scheme", "version", "detected, with prompt", "detected, without prompt",
                "median z", "ROC AUC", "TPR at FPR 1%", "TPR at FPR 0.1%", "size (tokens)",
                "perplexity", "distinct-2", "human false alarms", "max human z"},
               rows, 2);
  return out;
}

// The attack columns present in any scheme, in kind order then strength,
// with re-tokenization last.
std::vector<std::pair<int, int>> AttackColumns(const EvalData& e) {
  std::set<std::pair<int, int>> columns;
  for (const SchemeData& s : e.schemes)
    for (const Attack& a : s.attacks) columns.insert({a.kind, a.percent});
  return {columns.begin(), columns.end()};
}

std::string RobustnessSection(const EvalData& e) {
  const std::vector<std::pair<int, int>> columns = AttackColumns(e);
  const bool retokenized = std::any_of(e.schemes.begin(), e.schemes.end(), [](const SchemeData& s) {
    return s.retokenized.has_value();
  });
  const bool emoji = std::any_of(e.schemes.begin(), e.schemes.end(), [](const SchemeData& s) {
    return s.emoji.has_value();
  });
  if (columns.empty() && !retokenized && !emoji) return "";
  std::string out = "### Robustness\n\n";
  out += "Watermarked texts still detected (z > " + Short(e.z_threshold) +
         ", out of all texts) after an attack: a share of the generated tokens replaced by random "
         "tokens "
         "(substitution), deleted, or followed by a random token (insertion); a share of the words "
         "replaced "
         "by WordNet synonyms in the decoded text; a watermarked span making up a share of a human "
         "text "
         "(copy-paste, detected without the prompt); or the text decoded and encoded again with no "
         "edit "
         "(re-tokenized); or the emoji attack (a token forced after every generated token, stripped "
         "before detection).\n\n";
  std::vector<std::string> header{"scheme"};
  for (const auto& [kind, percent] : columns)
    header.push_back(std::string(kAttackKinds[kind].label) + " " + std::to_string(percent) + "%");
  if (retokenized) header.push_back("re-tokenized");
  if (emoji) header.push_back("emoji");
  std::vector<std::vector<std::string>> rows;
  for (const SchemeData& s : e.schemes) {
    std::vector<std::string> row{Cell(s.name)};
    for (const auto& column : columns) {
      const auto it = std::find_if(s.attacks.begin(), s.attacks.end(), [&](const Attack& a) {
        return std::make_pair(a.kind, a.percent) == column;
      });
      row.push_back(it == s.attacks.end() ? kAbsent : Count(it->z));
    }
    if (retokenized) row.push_back(Count(s.retokenized));
    if (emoji) row.push_back(Count(s.emoji));
    rows.push_back(row);
  }
  return out + Table(header, rows);
}

std::string LengthSection(const EvalData& e) {
  std::set<int> lengths;
  for (const SchemeData& s : e.schemes)
    for (const auto& [length, z] : s.by_length) lengths.insert(length);
  if (lengths.empty()) return "";
  std::string out = "### z against length\n\n";
  out +=
      "Median z of the watermarked texts (with the prompt) scored on their first n generated "
      "tokens only: "
      "how fast the evidence builds up (detection at z > " +
      Short(e.z_threshold) + ").\n\n";
  std::vector<std::string> header{"scheme"};
  for (int length : lengths) header.push_back(std::to_string(length) + " tokens");
  std::vector<std::vector<std::string>> rows;
  for (const SchemeData& s : e.schemes) {
    std::vector<std::string> row{Cell(s.name)};
    for (int length : lengths) {
      const auto it = std::find_if(s.by_length.begin(), s.by_length.end(),
                                   [&](const auto& p) { return p.first == length; });
      row.push_back(it == s.by_length.end() ? kAbsent : Fixed(it->second.median, 2));
    }
    rows.push_back(row);
  }
  return out + Table(header, rows);
}

// Decoding cost and what the detector recovers: only for the columns some
// scheme has (KGW has no router, so no expert recovery).
std::string DetailsSection(const EvalData& e) {
  const auto any = [&](auto field) {
    return std::any_of(e.schemes.begin(), e.schemes.end(),
                       [&](const SchemeData& s) { return field(s); });
  };
  const bool decode = any([](const SchemeData& s) { return s.decode_ms.has_value(); });
  const bool pairs = any([](const SchemeData& s) { return s.mean_scored_pairs.has_value(); });
  const bool recovery =
      any([](const SchemeData& s) { return s.recovery_prompt || s.recovery_no_prompt; });
  const bool cspv = any([](const SchemeData& s) { return s.cspv.has_value(); });
  if (!decode && !pairs && !recovery && !cspv) return "";
  std::string out = "### Cost and detector internals\n\n";
  out +=
      "Decoding time per token with the watermark (with its change against unwatermarked "
      "decoding), the "
      "distinct (seed, token) pairs the detector scores per text, how often it recovers the expert "
      "the "
      "generation used (router schemes), and detection by the cheap CSPV sample.\n\n";
  std::vector<std::string> header{"scheme"};
  if (decode) header.push_back("ms per token");
  if (pairs) header.push_back("scored pairs per text");
  if (recovery)
    header.insert(header.end(),
                  {"expert recovery, with prompt", "expert recovery, without prompt"});
  if (cspv) header.push_back("CSPV detected");
  std::vector<std::vector<std::string>> rows;
  for (const SchemeData& s : e.schemes) {
    std::vector<std::string> row{Cell(s.name)};
    if (decode) row.push_back(WithChange(s.decode_ms, e.plain_decode_ms, 3));
    if (pairs) row.push_back(Fixed(s.mean_scored_pairs, 1));
    if (recovery)
      row.insert(row.end(), {Percent(s.recovery_prompt), Percent(s.recovery_no_prompt)});
    if (cspv) row.push_back(Count(s.cspv));
    rows.push_back(row);
  }
  return out + Table(header, rows);
}

std::string OtherLevelSection(const EvalData& e) {
  if (std::none_of(e.schemes.begin(), e.schemes.end(),
                   [](const SchemeData& s) { return s.other.has_value(); }))
    return "";
  std::string out = "### Detection at another weights level\n\n";
  out += "Watermarked texts generated with " + e.quant.value_or("these") +
         " weights and detected by the same model at another weights level, with all tokens and "
         "with only the "
         "tokens whose router margin reaches the filter, and how often the two levels pick the "
         "same expert.\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const SchemeData& s : e.schemes) {
    if (!s.other) continue;
    const OtherLevel& o = *s.other;
    rows.push_back({Cell(s.name), Cell(o.level), Count(o.full),
                    Count(o.full_min_margin) +
                        (o.min_margin ? " (margin ≥ " + Short(*o.min_margin) + ")" : ""),
                    Percent(o.expert_agreement)});
  }
  return out +
         Table({"scheme", "detector weights", "detected", "detected, margin filter", "same expert"},
               rows, 2);
}

std::string StealingSection(const EvalData& e) {
  if (e.stealing.empty()) return "";
  std::string out = "### Stealing\n\n";
  out += "An attacker with the model but not the key sees N watermarked outputs, estimates which tokens "
         "are green after each context it can observe, and writes " +
         (e.spoof_texts ? Short(*e.spoof_texts) : std::string("its")) +
         " texts with the model and no key, biased towards them; the key's detector judges them "
         "(detected at z > " + Short(e.z_threshold) + ": spoof success).\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& [name, runs] : e.stealing)
    for (const EvalData::StealRun& r : runs)
      rows.push_back({Cell(name), std::to_string(r.observed), Count(r.spoofed), Fixed(r.spoofed.median, 2),
                      r.learned_pairs ? std::to_string(static_cast<int64_t>(*r.learned_pairs)) : kAbsent,
                      Percent(r.learned_precision)});
  return out + Table({"scheme", "outputs seen", "spoofs detected", "median z", "pairs believed green",
                      "of them green"},
                     rows);
}

std::string PlotsSection(const std::vector<Plot>& plots) {
  if (plots.empty())
    return "### Plots\n\nNo plots: this evaluation has no z-scores, lengths or attacks to draw "
           "(run "
           "`epwa eval watermark --report DIR` for them).\n";
  std::string out = "### Plots\n\n";
  for (const Plot& p : plots) out += "- [" + p.title + "](" + p.file + "): " + p.caption + "\n";
  for (const Plot& p : plots) out += "\n![" + p.title + "](" + p.file + ")\n";
  return out;
}

std::string ModelSection(const EvalData& e, const std::vector<Plot>& plots) {
  std::string out = "## Model `" + e.model + "`\n\n" + SetupLine(e) + "\n\n" + HeadlineSection(e);
  for (const std::string& section :
       {RobustnessSection(e), StealingSection(e), LengthSection(e), DetailsSection(e), OtherLevelSection(e)})
    if (!section.empty()) out += "\n" + section;
  return out + "\n" + PlotsSection(plots);
}

// The models next to each other on the headline figures, for a report over
// several models.
std::string SideBySideSection(const std::vector<EvalData>& evals) {
  std::string out = "## Models side by side\n\n";
  out +=
      "The headline figures of every model and scheme: detection with the prompt, median z, "
      "separation from "
      "human texts (ROC AUC, TPR at 1% false alarms), size, perplexity change and false alarms on "
      "human "
      "texts.\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const EvalData& e : evals)
    for (const SchemeData& s : e.schemes)
      rows.push_back({"`" + e.model + "`", Cell(e.quant.value_or(kAbsent)), Cell(s.name),
                      Count(s.with_prompt), Fixed(s.with_prompt.median, 2), Fixed(s.roc_auc, 3),
                      Percent(s.tpr_1pct), Size(s), WithChange(s.perplexity, e.plain_perplexity, 2),
                      Count(s.human)});
  return out + Table({"model", "weights", "scheme", "detected, with prompt", "median z", "ROC AUC",
                      "TPR at FPR 1%", "size (tokens)", "perplexity", "human false alarms"},
                     rows, 3);
}

void WriteText(const std::string& path, const std::string& text) {
  AtomicFile out(path);
  out.Write(text.data(), text.size());
  out.Commit();
}

// Writes one model's plots and returns those it wrote, for the links.
std::vector<Plot> RenderPlots(const EvalData& e, std::map<std::string, std::string>& files) {
  struct Maker {
    const char* prefix;
    std::optional<std::string> (*make)(const EvalData&);
    const char* title;
    const char* caption;
  };
  const Maker makers[] = {
      {"roc_", RocSvg, "ROC curves",
       "true-positive rate on watermarked texts (with the prompt) against false-alarm rate on "
       "human texts, the "
       "latter on a log axis."},
      {"z_hist_", HistogramSvg, "z histograms",
       "z of watermarked texts (with the prompt) and of human texts, one panel per scheme, with "
       "the threshold."},
      {"z_length_", LengthSvg, "z against length",
       "median z of watermarked texts scored on their first n generated tokens."},
      {"attacks_", AttacksSvg, "Detection under attack",
       "detection rate against attack strength, one panel per kind of attack."},
  };
  std::vector<Plot> plots;
  for (const Maker& m : makers) {
    const std::optional<std::string> svg = m.make(e);
    if (!svg) continue;
    const std::string file = std::string(m.prefix) + e.model + ".svg";
    files[file] = *svg;
    plots.push_back({file, m.title, m.caption});
  }
  return plots;
}

}  // namespace

std::vector<std::pair<double, double>> RocPoints(const std::vector<double>& positives,
                                                 const std::vector<double>& negatives) {
  if (positives.empty() || negatives.empty()) return {};
  std::vector<double> pos = positives, neg = negatives;
  std::sort(pos.begin(), pos.end(), std::greater<double>());
  std::sort(neg.begin(), neg.end(), std::greater<double>());
  std::vector<double> thresholds = pos;
  thresholds.insert(thresholds.end(), neg.begin(), neg.end());
  std::sort(thresholds.begin(), thresholds.end(), std::greater<double>());
  thresholds.erase(std::unique(thresholds.begin(), thresholds.end()), thresholds.end());
  // Walking the thresholds from the top, each sorted list is consumed once:
  // O((P + N) log(P + N)) for the sorts, linear after.
  std::vector<std::pair<double, double>> points{{0.0, 0.0}};
  size_t p = 0, n = 0;
  for (double t : thresholds) {
    while (p < pos.size() && pos[p] >= t) ++p;
    while (n < neg.size() && neg[n] >= t) ++n;
    points.emplace_back(static_cast<double>(n) / neg.size(), static_cast<double>(p) / pos.size());
  }
  return points;
}

std::string ReportModelName(const json& eval) {
  std::string dir;
  if (eval.is_object()) {
    const auto it = eval.find("model_dir");
    if (it != eval.end() && it->is_string()) dir = it->get<std::string>();
  }
  while (!dir.empty() && dir.back() == '/') dir.pop_back();
  std::string name =
      dir.substr(dir.find_last_of('/') == std::string::npos ? 0 : dir.find_last_of('/') + 1);
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  if (name.empty() || name == "." || name == "..") name = "model";
  return name;
}

std::map<std::string, std::string> RenderWatermarkReport(const std::vector<json>& evals) {
  Require(!evals.empty(), "the watermark report needs at least one evaluation JSON");
  // Every input is read and checked before anything is rendered, so a bad
  // file leaves no half-made report behind.
  std::vector<EvalData> data;
  for (size_t i = 0; i < evals.size(); ++i) data.push_back(ReadEval(evals[i], static_cast<int>(i)));
  MakeModelNamesUnique(data);
  std::map<std::string, std::string> files;
  std::string md = "# Watermark evaluation report\n\n";
  md += "Written by `epwa eval watermark --report` (or `epwa eval report`) from " +
        (data.size() == 1 ? std::string("one evaluation")
                          : std::to_string(data.size()) + " evaluations (one per model)") +
        ". A text is detected when its z-score exceeds the threshold; the human texts measure "
        "false alarms.\n\n";
  if (data.size() > 1) md += SideBySideSection(data) + "\n";
  for (size_t i = 0; i < data.size(); ++i) {
    if (i > 0) md += "\n";
    md += ModelSection(data[i], RenderPlots(data[i], files));
  }
  files["report.md"] = md;
  return files;
}

void WriteWatermarkReport(const std::vector<json>& evals, const std::string& dir) {
  const std::map<std::string, std::string> files = RenderWatermarkReport(evals);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  Require(!ec && std::filesystem::is_directory(dir),
          "cannot create the report folder '" + dir + "'" + (ec ? ": " + ec.message() : ""));
  for (const auto& [name, text] : files) WriteText(dir + "/" + name, text);
}

}  // namespace epwa::wm
