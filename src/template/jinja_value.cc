#include "template/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "template/jinja_unicode.h"

namespace epwa::jinja {
namespace {

// Printing and comparing recurse into containers; namespaces can even
// contain themselves. Past this depth the operation fails instead.
constexpr int kMaxWalkDepth = kMaxValueDepth + 16;

void CheckWalkDepth(int depth) {
  if (depth > kMaxWalkDepth) Raise("RecursionError", "maximum recursion depth exceeded while printing or comparing a value");
}

uint16_t ContainerDepth(const List& items) {
  int depth = 0;
  for (const Value& v : items) depth = std::max(depth, v.depth());
  if (depth + 1 > kMaxValueDepth)
    Raise("RecursionError", "a list or dict is nested more than " + std::to_string(kMaxValueDepth) + " levels deep");
  return static_cast<uint16_t>(depth + 1);
}

std::string StrImpl(const Value& v, int depth);
std::string ReprImpl(const Value& v, int depth);

std::string ReprItems(const List& items, int depth) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += ReprImpl(items[i], depth + 1);
  }
  return out;
}

std::string ReprDict(const Dict& d, int depth) {
  std::string out = "{";
  for (size_t i = 0; i < d.items.size(); ++i) {
    if (i) out += ", ";
    out += ReprImpl(d.items[i].first, depth + 1);
    out += ": ";
    out += ReprImpl(d.items[i].second, depth + 1);
  }
  return out + "}";
}

std::string StrImpl(const Value& v, int depth) {
  CheckWalkDepth(depth);
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.as_int());
    case Value::Kind::kFloat:
      return FloatRepr(v.as_double());
    case Value::Kind::kString:
      return v.str();
    case Value::Kind::kList:
      return "[" + ReprItems(v.list(), depth) + "]";
    case Value::Kind::kTuple:
      return "(" + ReprItems(v.list(), depth) + (v.list().size() == 1 ? ",)" : ")");
    case Value::Kind::kDict:
      return ReprDict(v.dict(), depth);
    case Value::Kind::kNamespace:
      return "<Namespace " + ReprDict(v.ns().attrs, depth) + ">";
    case Value::Kind::kLoop: {
      const LoopState& l = v.loop();
      return "<LoopContext " + std::to_string(l.index0 + 1) + "/" + std::to_string(l.items->size()) + ">";
    }
    case Value::Kind::kIterator: {
      const IteratorState& it = v.iterator();
      if (it.type_name == "range")
        return "range(" + std::to_string(it.range_start) + ", " + std::to_string(it.range_stop) +
               (it.range_step == 1 ? ")" : ", " + std::to_string(it.range_step) + ")");
      if (it.view) return it.type_name + "([" + ReprItems(it.items, depth) + "])";
      // Python adds the object's address, which no other program can
      // reproduce; a fixed one keeps the shape (and word count) of the text.
      if (!it.function.empty()) return "<generator object " + it.function + " at 0x7f0000000000>";
      return "<" + it.type_name + " object at 0x7f0000000000>";
    }
    case Value::Kind::kCallable: {
      const Callable& c = v.callable();
      if (c.type_name == "Macro") return "<Macro " + ReprString(c.name) + ">";
      if (c.type_name == "builtin_function_or_method") return "<built-in method " + c.name + " at 0x7f0000000000>";
      return "<function " + c.name + ">";
    }
  }
  return "";
}

std::string ReprImpl(const Value& v, int depth) {
  CheckWalkDepth(depth);
  if (v.is_string()) return v.safe() ? "Markup(" + ReprString(v.str()) + ")" : ReprString(v.str());
  if (v.is_undefined()) return "Undefined";
  return StrImpl(v, depth);
}

bool EqualsImpl(const Value& a, const Value& b, int depth);

long double NumberValue(const Value& v) {
  return v.is_float() ? static_cast<long double>(v.as_double()) : static_cast<long double>(v.as_int());
}

// Python compares int and float exactly; a long double holds every int64.
bool NumbersEqual(const Value& a, const Value& b) {
  if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
  return NumberValue(a) == NumberValue(b);
}

bool DictsEqual(const Dict& a, const Dict& b, int depth) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, value] : a.items) {
    const Value* other = b.Find(key);
    if (!other || !EqualsImpl(value, *other, depth + 1)) return false;
  }
  return true;
}

bool EqualsImpl(const Value& a, const Value& b, int depth) {
  CheckWalkDepth(depth);
  if (a.is_number() && b.is_number()) return NumbersEqual(a, b);
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.str() == b.str();
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      const List& x = a.list();
      const List& y = b.list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!EqualsImpl(x[i], y[i], depth + 1)) return false;
      return true;
    }
    case Value::Kind::kDict:
      return DictsEqual(a.dict(), b.dict(), depth);
    default:
      return a.shared() == b.shared();
  }
}

bool OrderedImpl(const Value& a, const Value& b, std::string_view op, int depth) {
  CheckWalkDepth(depth);
  auto apply = [&](auto x, auto y) {
    if (op == "<") return x < y;
    if (op == "<=") return x <= y;
    if (op == ">") return x > y;
    return x >= y;
  };
  if (a.is_number() && b.is_number()) return apply(NumberValue(a), NumberValue(b));
  if (a.is_string() && b.is_string()) return apply(a.str(), b.str());  // UTF-8 byte order is code point order
  if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
    // Python: the first items that differ decide; otherwise the lengths.
    const List& x = a.list();
    const List& y = b.list();
    const size_t n = std::min(x.size(), y.size());
    for (size_t i = 0; i < n; ++i) {
      if (!EqualsImpl(x[i], y[i], depth + 1)) return OrderedImpl(x[i], y[i], op, depth + 1);
    }
    return apply(x.size(), y.size());
  }
  if (a.is_undefined()) RaiseUndefined(a);
  if (b.is_undefined()) RaiseUndefined(b);
  Raise("TypeError", "'" + std::string(op) + "' not supported between instances of '" + TypeName(a) + "' and '" +
                         TypeName(b) + "'");
}

void AppendJsonString(std::string* out, std::string_view s, bool ensure_ascii) {
  static const char* kHex = "0123456789abcdef";
  out->push_back('"');
  auto append_u = [&](unsigned code) {
    out->append("\\u");
    for (int shift = 12; shift >= 0; shift -= 4) out->push_back(kHex[(code >> shift) & 0xF]);
  };
  for (size_t pos = 0; pos < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[pos]);
    if (c < 0x80) {
      ++pos;
      switch (c) {
        case '"': out->append("\\\""); break;
        case '\\': out->append("\\\\"); break;
        case '\n': out->append("\\n"); break;
        case '\r': out->append("\\r"); break;
        case '\t': out->append("\\t"); break;
        case '\b': out->append("\\b"); break;
        case '\f': out->append("\\f"); break;
        default:
          if (c < 0x20 || (ensure_ascii && c == 0x7F)) {
            append_u(c);
          } else {
            out->push_back(static_cast<char>(c));
          }
      }
      continue;
    }
    const size_t start = pos;
    const char32_t cp = unicode::Next(s, &pos);
    if (!ensure_ascii) {
      out->append(s.substr(start, pos - start));
    } else if (cp < 0x10000) {
      append_u(cp);
    } else {
      const char32_t v = cp - 0x10000;
      append_u(0xD800 + (v >> 10));
      append_u(0xDC00 + (v & 0x3FF));
    }
  }
  out->push_back('"');
}

std::string JsonFloat(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return FloatRepr(d);
}

void JsonDumpsImpl(const Value& v, const JsonDumpOptions& o, int level, std::string* out);

std::string JsonKey(const Value& key) {
  switch (key.kind()) {
    case Value::Kind::kString:
      return key.str();
    case Value::Kind::kFloat:
      return JsonFloat(key.as_double());
    case Value::Kind::kBool:
      return key.as_bool() ? "true" : "false";
    case Value::Kind::kNone:
      return "null";
    case Value::Kind::kInt:
      return std::to_string(key.as_int());
    default:
      Raise("TypeError", "keys must be str, int, float, bool or None, not " + TypeName(key));
  }
}

void NewlineIndent(const JsonDumpOptions& o, int level, std::string* out) {
  out->push_back('\n');
  for (int i = 0; i < level; ++i) out->append(o.indent);
}

void JsonDumpsImpl(const Value& v, const JsonDumpOptions& o, int level, std::string* out) {
  CheckWalkDepth(level);
  const std::string item_sep = o.has_separators ? o.item_separator : (o.has_indent ? "," : ", ");
  const std::string key_sep = o.has_separators ? o.key_separator : ": ";
  switch (v.kind()) {
    case Value::Kind::kNone:
      out->append("null");
      return;
    case Value::Kind::kBool:
      out->append(v.as_bool() ? "true" : "false");
      return;
    case Value::Kind::kInt:
      out->append(std::to_string(v.as_int()));
      return;
    case Value::Kind::kFloat:
      out->append(JsonFloat(v.as_double()));
      return;
    case Value::Kind::kString:
      AppendJsonString(out, v.str(), o.ensure_ascii);
      return;
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      const List& items = v.list();
      if (items.empty()) {
        out->append("[]");
        return;
      }
      out->push_back('[');
      if (o.has_indent) NewlineIndent(o, level + 1, out);
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) {
          out->append(item_sep);
          if (o.has_indent) NewlineIndent(o, level + 1, out);
        }
        JsonDumpsImpl(items[i], o, level + 1, out);
      }
      if (o.has_indent) NewlineIndent(o, level, out);
      out->push_back(']');
      return;
    }
    case Value::Kind::kDict: {
      const Dict& d = v.dict();
      if (d.items.empty()) {
        out->append("{}");
        return;
      }
      std::vector<const std::pair<Value, Value>*> entries;
      for (const auto& item : d.items) entries.push_back(&item);
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](const auto* a, const auto* b) {
          return Ordered(a->first, b->first, "<");
        });
      }
      out->push_back('{');
      if (o.has_indent) NewlineIndent(o, level + 1, out);
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) {
          out->append(item_sep);
          if (o.has_indent) NewlineIndent(o, level + 1, out);
        }
        AppendJsonString(out, JsonKey(entries[i]->first), o.ensure_ascii);
        out->append(key_sep);
        JsonDumpsImpl(entries[i]->second, o, level + 1, out);
      }
      if (o.has_indent) NewlineIndent(o, level, out);
      out->push_back('}');
      return;
    }
    default:
      Raise("TypeError", "Object of type " + TypeName(v) + " is not JSON serializable");
  }
}

Value FromJsonImpl(const nlohmann::ordered_json& j, int depth, int max_depth) {
  if (depth > max_depth)
    Raise("ValueError", "the JSON input is nested more than " + std::to_string(max_depth) + " levels deep");
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::None();
    case nlohmann::json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::Int(static_cast<int64_t>(u));
      Raise("OverflowError", "the JSON input holds the integer " + std::to_string(u) + ", beyond 64 bits");
    }
    case nlohmann::json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::json::value_t::string:
      return Value::Str(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(FromJsonImpl(item, depth + 1, max_depth));
      return Value::MakeList(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      auto dict = std::make_shared<Dict>();
      for (const auto& [key, item] : j.items()) dict->Set(Value::Str(key), FromJsonImpl(item, depth + 1, max_depth));
      return Value::MakeDict(std::move(dict));
    }
    default:
      Raise("TypeError", "binary JSON values are not supported");
  }
}

}  // namespace

void Raise(const char* type, std::string message) { throw PyException{type, std::move(message)}; }

void RaiseUndefined(const Value& undefined) {
  const UndefinedInfo* info = undefined.undefined_info();
  if (info == nullptr) Raise("UndefinedError", "undefined value");
  Raise(info->security ? "SecurityError" : "UndefinedError", info->hint);
}

Value Value::Undefined(std::string hint, bool security) {
  Value v;
  v.ptr_ = std::make_shared<UndefinedInfo>(UndefinedInfo{std::move(hint), security});
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double d) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = d;
  return v;
}
Value Value::Str(std::string s, bool safe) {
  Value v;
  v.kind_ = Kind::kString;
  v.safe_ = safe;
  v.ptr_ = std::make_shared<std::string>(std::move(s));
  return v;
}
Value Value::MakeList(List items) {
  Value v;
  v.kind_ = Kind::kList;
  v.depth_ = ContainerDepth(items);
  v.ptr_ = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::MakeTuple(List items) {
  Value v = MakeList(std::move(items));
  v.kind_ = Kind::kTuple;
  return v;
}
Value Value::MakeDict(std::shared_ptr<Dict> dict) {
  Value v;
  v.kind_ = Kind::kDict;
  int depth = 0;
  for (const auto& [key, value] : dict->items) depth = std::max({depth, key.depth(), value.depth()});
  if (depth + 1 > kMaxValueDepth)
    Raise("RecursionError", "a list or dict is nested more than " + std::to_string(kMaxValueDepth) + " levels deep");
  v.depth_ = static_cast<uint16_t>(depth + 1);
  v.ptr_ = std::move(dict);
  return v;
}
Value Value::MakeNamespace(std::shared_ptr<Namespace> ns) {
  Value v;
  v.kind_ = Kind::kNamespace;
  v.ptr_ = std::move(ns);
  return v;
}
Value Value::MakeLoop(std::shared_ptr<LoopState> loop) {
  Value v;
  v.kind_ = Kind::kLoop;
  v.ptr_ = std::move(loop);
  return v;
}
Value Value::MakeIterator(List items, std::string type_name, bool view) {
  Value v;
  v.kind_ = Kind::kIterator;
  v.depth_ = ContainerDepth(items);
  auto state = std::make_shared<IteratorState>();
  state->items = std::move(items);
  state->type_name = std::move(type_name);
  state->view = view;
  v.ptr_ = std::move(state);
  return v;
}
Value Value::MakeCallable(std::shared_ptr<Callable> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.ptr_ = std::move(fn);
  return v;
}

const Value* Dict::FindString(std::string_view key) const {
  const auto it = string_index.find(std::string(key));
  return it == string_index.end() ? nullptr : &items[it->second].second;
}

const Value* Dict::Find(const Value& key) const {
  if (key.is_string()) return FindString(key.str());
  for (const auto& item : items)
    if (!item.first.is_string() && Equals(item.first, key)) return &item.second;
  return nullptr;
}

void Dict::Set(const Value& key, Value value) {
  if (key.is_string()) {
    const auto [it, inserted] = string_index.emplace(key.str(), items.size());
    if (inserted) {
      items.emplace_back(key, std::move(value));
    } else {
      items[it->second].second = std::move(value);
    }
    return;
  }
  for (auto& item : items) {
    if (!item.first.is_string() && Equals(item.first, key)) {
      item.second = std::move(value);
      return;
    }
  }
  items.emplace_back(key, std::move(value));
}

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return "Undefined";
    case Value::Kind::kNone: return "NoneType";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return v.safe() ? "Markup" : "str";
    case Value::Kind::kList: return "list";
    case Value::Kind::kTuple: return "tuple";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "Namespace";
    case Value::Kind::kLoop: return "LoopContext";
    case Value::Kind::kCallable: return v.callable().type_name;
    case Value::Kind::kIterator: return v.iterator().type_name;
  }
  return "object";
}

std::string ObjectTypeRepr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone: return "None";
    case Value::Kind::kString: return v.safe() ? "markupsafe.Markup object" : "str object";
    case Value::Kind::kNamespace: return "jinja2.utils.Namespace object";
    case Value::Kind::kLoop: return "jinja2.runtime.LoopContext object";
    case Value::Kind::kCallable:
      return v.callable().type_name == "Macro" ? "jinja2.runtime.Macro object" : v.callable().type_name + " object";
    case Value::Kind::kUndefined: return "jinja2.runtime.Undefined object";
    default: return TypeName(v) + " object";
  }
}

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.as_bool();
    case Value::Kind::kInt:
      return v.as_int() != 0;
    case Value::Kind::kFloat:
      return v.as_double() != 0.0;
    case Value::Kind::kString:
      return !v.str().empty();
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return !v.list().empty();
    case Value::Kind::kDict:
      return !v.dict().items.empty();
    case Value::Kind::kIterator:
      return !v.iterator().view || !v.iterator().items.empty();
    default:
      return true;
  }
}

bool Equals(const Value& a, const Value& b) { return EqualsImpl(a, b, 0); }

bool IsHashable(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kList:
    case Value::Kind::kDict:
      return false;
    case Value::Kind::kTuple:
      for (const Value& item : v.list())
        if (!IsHashable(item)) return false;
      return true;
    default:
      return true;
  }
}

bool Ordered(const Value& a, const Value& b, std::string_view op) { return OrderedImpl(a, b, op, 0); }

std::string Str(const Value& v) { return StrImpl(v, 0); }
std::string Repr(const Value& v) { return ReprImpl(v, 0); }

std::string ReprString(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  char buf[16];
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    const char32_t cp = unicode::Next(s, &pos);
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out.append("\\n");
    } else if (cp == '\r') {
      out.append("\\r");
    } else if (cp == '\t') {
      out.append("\\t");
    } else if (unicode::IsPrintable(cp)) {
      out.append(s.substr(start, pos - start));
    } else if (cp < 0x100) {
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(cp));
      out.append(buf);
    } else if (cp < 0x10000) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      out.append(buf);
    } else {
      std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(cp));
      out.append(buf);
    }
  }
  out.push_back(quote);
  return out;
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // The shortest digits that round-trip, as Python's repr() uses; then
  // Python's layout: exponent notation when the decimal point would fall
  // more than 16 digits right or 4 digits left of the first digit.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(result.ptr - buf));
  std::string sign;
  if (sci.front() == '-') {
    sign = "-";
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e))
    if (c != '.') digits.push_back(c);
  int exponent = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+'), sci.data() + sci.size(), exponent);
  const int decpt = exponent + 1;
  const int n = static_cast<int>(digits.size());
  std::string out = sign;
  if (decpt > 16 || decpt < -3) {
    out += digits[0];
    if (n > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  } else if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (decpt >= n) {
    out += digits + std::string(static_cast<size_t>(decpt - n), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

Value FromJson(const nlohmann::ordered_json& j, int max_depth) { return FromJsonImpl(j, 0, max_depth); }

std::string JsonDumps(const Value& v, const JsonDumpOptions& options) {
  std::string out;
  JsonDumpsImpl(v, options, 0, &out);
  return out;
}

size_t StrLength(const Value& s) { return unicode::Length(s.str()); }

std::string HtmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&#39;"; break;
      case '"': out += "&#34;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace epwa::jinja
