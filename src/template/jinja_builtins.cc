// Builtins: the operators, attribute access, filters, tests, methods and
// global functions a template can reach, each written to match what Python
// and Jinja2 3.1 (the version in Debian 12, and what transformers requires)
// do, including the error messages templates can surface.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <cctype>
#include <functional>

#include "template/jinja_internal.h"
#include "template/jinja_unicode.h"

namespace epwa::jinja::internal {
namespace {

using unicode::Decode;
using unicode::Encode;

// ---------------------------------------------------------------------------
// Small helpers.

std::string SoftStr(const Value& v) { return v.is_string() ? v.str() : Str(v); }

Value MakeStr(Interpreter& in, std::string s, bool safe = false) {
  in.Charge(s.size());
  return Value::Str(std::move(s), safe);
}

Value MakeList(Interpreter& in, List items) {
  in.Step(1 + items.size() / 8);
  return Value::MakeList(std::move(items));
}


// An integer argument (Python's __index__: int or bool).
int64_t IndexArg(const Value& v, const char* what) {
  if (v.is_integral()) return v.as_int();
  if (v.is_undefined()) RaiseUndefined(v);
  Raise("TypeError", std::string(what) + ": '" + TypeName(v) + "' object cannot be interpreted as an integer");
}

std::string StrArg(const Value& v, const char* function) {
  if (v.is_string()) return v.str();
  if (v.is_undefined()) RaiseUndefined(v);
  Raise("TypeError", std::string(function) + "() argument must be str, not " + TypeName(v));
}

// Python's slice index adjustment (PySlice_AdjustIndices) for a sequence of
// `length` items.
int64_t AdjustSliceIndex(int64_t length, const Value& v, int64_t default_value, int64_t step) {
  if (v.is_none()) return default_value;
  int64_t i = v.as_int();
  if (i < 0) {
    i += length;
    if (i < 0) i = step < 0 ? -1 : 0;
  } else if (i >= length) {
    i = step < 0 ? length - 1 : length;
  }
  return i;
}

// The adjusted bounds of a slice start:stop:step of `length` items.
struct SliceBounds {
  int64_t start, stop, step;
};
SliceBounds Bounds(int64_t length, const Value& start, const Value& stop, const Value& step) {
  const int64_t s = step.is_none() ? 1 : step.as_int();
  if (s == 0) Raise("ValueError", "slice step cannot be zero");
  return {AdjustSliceIndex(length, start, s < 0 ? length - 1 : 0, s), AdjustSliceIndex(length, stop, s < 0 ? -1 : length, s),
          s};
}

// The positions a slice start:stop:step selects from `length` items.
std::vector<int64_t> SliceIndices(int64_t length, const Value& start, const Value& stop, const Value& step) {
  const SliceBounds bounds = Bounds(length, start, stop, step);
  const int64_t a = bounds.start, b = bounds.stop, s = bounds.step;
  // Counted in 128 bits: a step near the int64 range must not overflow.
  __int128 count = 0;
  if (s > 0 && b > a) count = (static_cast<__int128>(b) - a - 1) / s + 1;
  if (s < 0 && a > b) count = (static_cast<__int128>(a) - b - 1) / -static_cast<__int128>(s) + 1;
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(count));
  for (__int128 k = 0; k < count; ++k) out.push_back(static_cast<int64_t>(a + k * s));
  return out;
}

// Normalizes (start, end) arguments of str methods to code point bounds.
void StartEnd(size_t length, const BoundArgs& b, size_t first, int64_t* start, int64_t* end) {
  const auto n = static_cast<int64_t>(length);
  auto norm = [&](const Value& v, int64_t dflt) {
    if (v.is_none() || v.is_undefined()) return dflt;
    int64_t i = IndexArg(v, "slice indices must be integers or None");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  *start = b.has(first) ? norm(b[first], 0) : 0;
  *end = b.has(first + 1) ? norm(b[first + 1], n) : n;
}

// Code point index of byte offset `byte` in `s`.
int64_t CodePointIndex(std::string_view s, size_t byte) {
  return static_cast<int64_t>(unicode::Length(s.substr(0, byte)));
}

// Byte offset of code point index `cp` in `s` (clamped to the end).
size_t ByteOffset(std::string_view s, int64_t cp) {
  size_t pos = 0;
  for (int64_t i = 0; i < cp && pos < s.size(); ++i) pos += unicode::SequenceLength(static_cast<unsigned char>(s[pos]));
  return std::min(pos, s.size());
}

std::string_view CodePointSlice(std::string_view s, int64_t start, int64_t end) {
  const size_t a = ByteOffset(s, start);
  const size_t b = std::max(a, ByteOffset(s, end));
  return s.substr(a, b - a);
}

// The items a key function sees: jinja2's make_attrgetter for attribute
// paths such as "a.b" or "0" (digit parts are list indices).
std::vector<Value> AttributeParts(const Value& attribute) {
  std::vector<Value> parts;
  if (!attribute.is_string()) {
    parts.push_back(attribute);
    return parts;
  }
  const std::string& a = attribute.str();
  size_t start = 0;
  while (true) {
    const size_t dot = a.find('.', start);
    const std::string part = a.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    int64_t n = 0;
    if (digits && std::from_chars(part.data(), part.data() + part.size(), n).ec == std::errc()) {
      parts.push_back(Value::Int(n));
    } else {
      parts.push_back(Value::Str(part));
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

Value GetPath(Interpreter& in, Value item, const std::vector<Value>& parts, const Value* dflt) {
  for (const Value& part : parts) {
    item = GetItem(in, item, part);
    if (dflt && item.is_undefined()) item = *dflt;
  }
  return item;
}

Value IgnoreCase(const Value& v) { return v.is_string() ? Value::Str(unicode::Lower(v.str())) : v; }

// The key function of sort, unique, min and max: attribute path(s) and
// optional lower-casing.
struct KeyGetter {
  std::vector<std::vector<Value>> attributes;  // empty: the item itself
  bool lower = false;

  KeyGetter(const Value& attribute, bool case_sensitive, bool multi) : lower(!case_sensitive) {
    if (attribute.is_none() || attribute.is_undefined()) return;
    if (multi && attribute.is_string()) {
      const std::string& a = attribute.str();
      size_t start = 0;
      while (true) {
        const size_t comma = a.find(',', start);
        attributes.push_back(AttributeParts(Value::Str(a.substr(start, comma == std::string::npos ? std::string::npos : comma - start))));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else {
      attributes.push_back(AttributeParts(attribute));
    }
  }

  Value operator()(Interpreter& in, const Value& item) const {
    auto post = [&](Value v) { return lower ? IgnoreCase(v) : v; };
    if (attributes.empty()) return post(item);
    if (attributes.size() == 1) return post(GetPath(in, item, attributes[0], nullptr));
    List keys;
    for (const auto& parts : attributes) keys.push_back(post(GetPath(in, item, parts, nullptr)));
    return Value::MakeList(std::move(keys));
  }
};

void StableSort(List* items, const std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // Python's sort uses only "<"; reverse=True keeps equal items in order.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reverse ? Ordered(keys[b], keys[a], "<") : Ordered(keys[a], keys[b], "<");
  });
  List sorted;
  sorted.reserve(items->size());
  for (size_t i : order) sorted.push_back((*items)[i]);
  *items = std::move(sorted);
}

// ---------------------------------------------------------------------------
// Python's printf-style formatting (str % args) and str.format().

std::string Pad(const std::string& s, size_t width, bool left, char32_t fill = ' ') {
  const size_t len = unicode::Length(s);
  if (len >= width) return s;
  std::string padding;
  for (size_t i = len; i < width; ++i) unicode::Append(&padding, fill);
  return left ? s + padding : padding + s;
}

std::string FormatNumber(const char* spec, double d) {
  char buf[512];
  std::snprintf(buf, sizeof buf, spec, d);
  return buf;
}

double FloatArg(const Value& v, const char* conv) {
  if (v.is_number()) return v.as_double();
  if (v.is_undefined()) RaiseUndefined(v);
  Raise("TypeError", std::string("%") + conv + " format: a real number is required, not " + TypeName(v));
}

std::string PercentFormat(Interpreter& in, const Value& format, const Value& arg_value) {
  const std::string& fmt = format.str();
  List args;
  const Dict* mapping = nullptr;
  if (arg_value.is_tuple()) {
    args = arg_value.list();
  } else {
    if (arg_value.is_dict()) mapping = &arg_value.dict();
    args.push_back(arg_value);
  }
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i]);
      continue;
    }
    if (++i >= fmt.size()) Raise("ValueError", "incomplete format");
    Value arg;
    bool have_arg = false;
    if (fmt[i] == '(') {
      const size_t close = fmt.find(')', i);
      if (close == std::string::npos) Raise("ValueError", "incomplete format key");
      if (!mapping) Raise("TypeError", "format requires a mapping");
      const std::string key = fmt.substr(i + 1, close - i - 1);
      const Value* v = mapping->FindString(key);
      if (!v) Raise("KeyError", ReprString(key));
      arg = *v;
      have_arg = true;
      i = close + 1;
    }
    bool left = false, plus = false, space = false, alt = false, zero = false;
    for (; i < fmt.size() && std::strchr("-+ #0", fmt[i]) && fmt[i]; ++i) {
      left |= fmt[i] == '-';
      plus |= fmt[i] == '+';
      space |= fmt[i] == ' ';
      alt |= fmt[i] == '#';
      zero |= fmt[i] == '0';
    }
    auto take_arg = [&]() {
      if (next >= args.size()) Raise("TypeError", "not enough arguments for format string");
      return args[next++];
    };
    int64_t width = 0, precision = -1;
    if (i < fmt.size() && fmt[i] == '*') {
      width = IndexArg(take_arg(), "* wants int");
      ++i;
    } else {
      while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') width = std::min<int64_t>(width * 10 + (fmt[i++] - '0'), 100000);
    }
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      precision = 0;
      if (i < fmt.size() && fmt[i] == '*') {
        precision = IndexArg(take_arg(), "* wants int");
        ++i;
      } else {
        while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') precision = std::min<int64_t>(precision * 10 + (fmt[i++] - '0'), 100000);
      }
    }
    while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;
    if (i >= fmt.size()) Raise("ValueError", "incomplete format");
    const char conv = fmt[i];
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (!have_arg) arg = take_arg();
    if (width < 0) {
      left = true;
      width = -width;
    }
    width = std::min<int64_t>(width, 100000);
    precision = std::min<int64_t>(precision, 1000);
    std::string text;
    switch (conv) {
      case 's':
      case 'r':
      case 'a': {
        text = conv == 's' ? SoftStr(arg) : Repr(arg);
        if (precision >= 0) text = std::string(CodePointSlice(text, 0, precision));
        text = Pad(text, static_cast<size_t>(width), left);
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o': {
        int64_t v;
        if (arg.is_integral()) {
          v = arg.as_int();
        } else if (arg.is_float() && (conv == 'd' || conv == 'i' || conv == 'u')) {
          const double d = arg.as_double();
          if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) Raise("OverflowError", "cannot convert float to integer");
          v = static_cast<int64_t>(d);
        } else {
          if (arg.is_undefined()) RaiseUndefined(arg);
          Raise("TypeError", std::string("%") + conv +
                                 (conv == 'x' || conv == 'X' || conv == 'o' ? " format: an integer is required, not "
                                                                             : " format: a real number is required, not ") +
                                 TypeName(arg));
        }
        std::string digits;
        const uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
        char buf[80];
        if (conv == 'x' || conv == 'X' || conv == 'o') {
          std::snprintf(buf, sizeof buf, conv == 'x' ? "%llx" : conv == 'X' ? "%llX" : "%llo",
                        static_cast<unsigned long long>(mag));
          digits = buf;
          if (alt) digits = (conv == 'o' ? "0o" : conv == 'x' ? "0x" : "0X") + digits;
        } else {
          digits = std::to_string(mag);
        }
        if (precision >= 0 && static_cast<int64_t>(digits.size()) < precision)
          digits = std::string(static_cast<size_t>(precision) - digits.size(), '0') + digits;
        const std::string sign = v < 0 ? "-" : plus ? "+" : space ? " " : "";
        if (zero && !left && static_cast<int64_t>(sign.size() + digits.size()) < width)
          digits = std::string(static_cast<size_t>(width) - sign.size() - digits.size(), '0') + digits;
        text = Pad(sign + digits, static_cast<size_t>(width), left);
        break;
      }
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G': {
        const double d = FloatArg(arg, std::string(1, conv).c_str());
        std::string spec = "%";
        if (plus) spec += '+';
        if (space) spec += ' ';
        if (alt) spec += '#';
        if (zero && !left) spec += '0';
        if (left) spec += '-';
        spec += std::to_string(width) + "." + std::to_string(precision < 0 ? 6 : precision) + conv;
        text = FormatNumber(spec.c_str(), d);
        break;
      }
      case 'c': {
        if (arg.is_string() && unicode::Length(arg.str()) == 1) {
          text = arg.str();
        } else if (arg.is_integral() && arg.as_int() >= 0 && arg.as_int() <= 0x10FFFF &&
                   !(arg.as_int() >= 0xD800 && arg.as_int() <= 0xDFFF)) {
          unicode::Append(&text, static_cast<char32_t>(arg.as_int()));
        } else {
          Raise("TypeError", "%c requires int or char");
        }
        text = Pad(text, static_cast<size_t>(width), left);
        break;
      }
      default: {
        char buf[96];
        std::snprintf(buf, sizeof buf, "unsupported format character '%c' (0x%x) at index %zu", conv,
                      static_cast<unsigned>(static_cast<unsigned char>(conv)), i);
        Raise("ValueError", buf);
      }
    }
    out += text;
    in.Charge(out.size());
  }
  if (!mapping && next < args.size()) Raise("TypeError", "not all arguments converted during string formatting");
  return out;
}

// format(value, spec) for the common specs: [[fill]align][sign][#][0][width][,|_][.precision][type].
std::string FormatSpec(const Value& v, std::string_view spec) {
  if (spec.empty()) return SoftStr(v);
  std::u32string s = Decode(spec);
  size_t i = 0;
  char32_t fill = ' ';
  char32_t align = 0;
  auto is_align = [](char32_t c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  if (s.size() >= 2 && is_align(s[1])) {
    fill = s[0];
    align = s[1];
    i = 2;
  } else if (!s.empty() && is_align(s[0])) {
    align = s[0];
    i = 1;
  }
  char32_t sign = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-' || s[i] == ' ')) sign = s[i++];
  bool alt = false;
  if (i < s.size() && s[i] == '#') {
    alt = true;
    ++i;
  }
  if (i < s.size() && s[i] == '0') {
    if (!align) {
      fill = '0';
      align = '=';
    }
    ++i;
  }
  size_t width = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') width = std::min<size_t>(width * 10 + (s[i++] - '0'), 100000);
  char32_t grouping = 0;
  if (i < s.size() && (s[i] == ',' || s[i] == '_')) grouping = s[i++];
  int precision = -1;
  if (i < s.size() && s[i] == '.') {
    ++i;
    precision = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') precision = std::min(precision * 10 + static_cast<int>(s[i++] - '0'), 1000);
  }
  char32_t type = 0;
  if (i < s.size()) type = s[i++];
  if (i != s.size()) Raise("ValueError", "Invalid format specifier");
  std::string body, prefix;
  bool numeric = false;
  if (v.is_string() && (type == 0 || type == 's')) {
    body = precision >= 0 ? std::string(CodePointSlice(v.str(), 0, precision)) : v.str();
    if (!align) align = '<';
  } else if (v.is_integral() && (type == 0 || type == 'd' || type == 'n' || type == 'x' || type == 'X' || type == 'o' || type == 'b')) {
    numeric = true;
    const int64_t n = v.as_int();
    uint64_t mag = n < 0 ? 0 - static_cast<uint64_t>(n) : static_cast<uint64_t>(n);
    if (type == 'x' || type == 'X' || type == 'o' || type == 'b') {
      const int base = type == 'o' ? 8 : type == 'b' ? 2 : 16;
      const char* digits = type == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
      do {
        body.insert(body.begin(), digits[mag % base]);
        mag /= base;
      } while (mag);
      if (alt) prefix = type == 'o' ? "0o" : type == 'b' ? "0b" : type == 'X' ? "0X" : "0x";
    } else {
      body = std::to_string(mag);
      if (grouping) {
        std::string grouped;
        for (size_t k = 0; k < body.size(); ++k) {
          if (k && (body.size() - k) % 3 == 0) grouped.push_back(static_cast<char>(grouping));
          grouped.push_back(body[k]);
        }
        body = grouped;
      }
    }
    prefix = (n < 0 ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "") + prefix;
  } else if (v.is_number() && (type == 0 || type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == 'g' ||
                               type == 'G' || type == '%')) {
    numeric = true;
    double d = v.as_double();
    if (type == 0 && precision < 0) {
      body = FloatRepr(std::fabs(d));  // ints took the branch above
    } else {
      std::string f = "%." + std::to_string(precision < 0 ? 6 : precision);
      if (type == '%') {
        d *= 100;
        f += 'f';
      } else {
        f += type == 0 ? 'g' : static_cast<char>(type);
      }
      if (alt) f.insert(1, "#");
      body = FormatNumber(f.c_str(), std::fabs(d));
      if (type == '%') body += "%";
    }
    prefix = std::signbit(d) ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "";
  } else {
    if (v.is_undefined()) RaiseUndefined(v);
    Raise("ValueError", "Unknown format code '" + Encode(std::u32string(1, type ? type : U's')) +
                            "' for object of type '" + TypeName(v) + "'");
  }
  if (!align) align = numeric ? '>' : '<';
  const size_t len = unicode::Length(prefix) + unicode::Length(body);
  if (len >= width) return prefix + body;
  const size_t pad = width - len;
  auto fills = [&](size_t n) {
    std::string out;
    for (size_t k = 0; k < n; ++k) unicode::Append(&out, fill);
    return out;
  };
  switch (align) {
    case '<': return prefix + body + fills(pad);
    case '^': return fills(pad / 2) + prefix + body + fills(pad - pad / 2);
    case '=': return prefix + fills(pad) + body;
    default: return fills(pad) + prefix + body;
  }
}

std::string StrFormat(Interpreter& in, const std::string& fmt, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      Raise("ValueError", "Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string::npos) Raise("ValueError", "Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    i = close;
    std::string spec;
    char conversion = 0;
    if (const size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (const size_t bang = field.find('!'); bang != std::string::npos) {
      if (bang + 2 != field.size()) Raise("ValueError", "expected ':' after conversion specifier");
      conversion = field[bang + 1];
      field.resize(bang);
    }
    size_t end = field.find_first_of(".[");
    const std::string head = field.substr(0, end);
    Value value;
    if (head.empty()) {
      if (auto_index >= args.positional.size())
        Raise("IndexError", "Replacement index " + std::to_string(auto_index) + " out of range for positional args tuple");
      value = args.positional[auto_index++];
    } else if (std::all_of(head.begin(), head.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t index = 0;
      std::from_chars(head.data(), head.data() + head.size(), index);
      if (index >= args.positional.size())
        Raise("IndexError", "Replacement index " + head + " out of range for positional args tuple");
      value = args.positional[index];
    } else {
      bool found = false;
      for (const auto& [key, v] : args.keyword) {
        if (key == head) {
          value = v;
          found = true;
        }
      }
      if (!found) Raise("KeyError", ReprString(head));
    }
    while (end != std::string::npos && end < field.size()) {
      if (field[end] == '.') {
        const size_t next = field.find_first_of(".[", end + 1);
        value = GetAttr(in, value, field.substr(end + 1, next == std::string::npos ? std::string::npos : next - end - 1));
        end = next;
      } else {
        const size_t rb = field.find(']', end);
        if (rb == std::string::npos) Raise("ValueError", "Missing ']' in format string");
        const std::string key = field.substr(end + 1, rb - end - 1);
        int64_t n = 0;
        const bool digits = !key.empty() && std::from_chars(key.data(), key.data() + key.size(), n).ptr == key.data() + key.size();
        value = GetItem(in, value, digits ? Value::Int(n) : Value::Str(key));
        end = rb + 1;
      }
    }
    if (conversion == 'r' || conversion == 'a') {
      value = Value::Str(Repr(value));
    } else if (conversion == 's') {
      value = Value::Str(SoftStr(value));
    } else if (conversion != 0) {
      Raise("ValueError", std::string("Unknown conversion specifier ") + conversion);
    }
    out += FormatSpec(value, spec);
    in.Charge(out.size());
  }
  return out;
}

// ---------------------------------------------------------------------------
// str methods.

using MethodFn = Value (*)(Interpreter& in, const Value& self, CallArgs& args);

// strip/lstrip/rstrip with Python's optional set of characters.
std::string StripChars(const std::string& s, const Value& chars, bool left, bool right) {
  if (chars.is_none() || chars.is_undefined()) {
    std::string_view v = s;
    if (left) v = unicode::LStripSpace(v);
    if (right) v = unicode::RStripSpace(v);
    return std::string(v);
  }
  if (!chars.is_string()) Raise("TypeError", "strip arg must be None or str");
  const std::u32string set = Decode(chars.str());
  std::u32string text = Decode(s);
  size_t a = 0, b = text.size();
  if (left)
    while (a < b && set.find(text[a]) != std::u32string::npos) ++a;
  if (right)
    while (b > a && set.find(text[b - 1]) != std::u32string::npos) --b;
  return Encode(std::u32string_view(text).substr(a, b - a));
}

Value MStrip(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("strip", {"chars"}, args);
  return MakeStr(in, StripChars(self.str(), b.has(0) ? b[0] : Value::None(), true, true), self.safe());
}
Value MLStrip(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("lstrip", {"chars"}, args);
  return MakeStr(in, StripChars(self.str(), b.has(0) ? b[0] : Value::None(), true, false), self.safe());
}
Value MRStrip(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("rstrip", {"chars"}, args);
  return MakeStr(in, StripChars(self.str(), b.has(0) ? b[0] : Value::None(), false, true), self.safe());
}

// str.split / str.rsplit.
List SplitString(Interpreter& in, const std::string& s, const Value& sep, int64_t maxsplit, bool from_right,
                 bool safe) {
  List out;
  auto push = [&](std::string_view piece) {
    in.Step();
    out.push_back(Value::Str(std::string(piece), safe));
  };
  if (sep.is_none() || sep.is_undefined()) {
    // Runs of whitespace; no empty strings; the rest after maxsplit keeps
    // its inner whitespace but not the leading (or, from the right, trailing) run.
    const std::u32string text = Decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    if (!from_right) {
      size_t i = 0;
      while (i < text.size()) {
        while (i < text.size() && unicode::IsSpace(text[i])) ++i;
        if (i >= text.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          size_t end = text.size();
          words.emplace_back(i, end);
          break;
        }
        size_t j = i;
        while (j < text.size() && !unicode::IsSpace(text[j])) ++j;
        words.emplace_back(i, j);
        i = j;
      }
    } else {
      size_t i = text.size();
      while (i > 0) {
        while (i > 0 && unicode::IsSpace(text[i - 1])) --i;
        if (i == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(words.size()) == maxsplit) {
          words.emplace_back(0, i);
          break;
        }
        size_t j = i;
        while (j > 0 && !unicode::IsSpace(text[j - 1])) --j;
        words.emplace_back(j, i);
        i = j;
      }
      std::reverse(words.begin(), words.end());
    }
    for (const auto& [a, b] : words) push(Encode(std::u32string_view(text).substr(a, b - a)));
    return out;
  }
  if (!sep.is_string()) Raise("TypeError", "must be str or None, not " + TypeName(sep));
  const std::string& d = sep.str();
  if (d.empty()) Raise("ValueError", "empty separator");
  std::vector<std::string_view> pieces;
  std::string_view rest = s;
  if (!from_right) {
    while (maxsplit < 0 || static_cast<int64_t>(pieces.size()) < maxsplit) {
      const size_t at = rest.find(d);
      if (at == std::string_view::npos) break;
      pieces.push_back(rest.substr(0, at));
      rest.remove_prefix(at + d.size());
    }
    pieces.push_back(rest);
  } else {
    while (maxsplit < 0 || static_cast<int64_t>(pieces.size()) < maxsplit) {
      const size_t at = rest.rfind(d);
      if (at == std::string_view::npos) break;
      pieces.push_back(rest.substr(at + d.size()));
      rest = rest.substr(0, at);
    }
    pieces.push_back(rest);
    std::reverse(pieces.begin(), pieces.end());
  }
  for (std::string_view piece : pieces) push(piece);
  return out;
}

Value MSplit(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("split", {"sep", "maxsplit"}, args);
  const int64_t maxsplit = b.has(1) ? IndexArg(b[1], "maxsplit") : -1;
  return MakeList(in, SplitString(in, self.str(), b.has(0) ? b[0] : Value::None(), maxsplit, false, self.safe()));
}
Value MRSplit(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("rsplit", {"sep", "maxsplit"}, args);
  const int64_t maxsplit = b.has(1) ? IndexArg(b[1], "maxsplit") : -1;
  return MakeList(in, SplitString(in, self.str(), b.has(0) ? b[0] : Value::None(), maxsplit, true, self.safe()));
}

bool IsLineBreak(char32_t c) {
  return c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

std::vector<std::string> SplitLines(const std::string& s, bool keepends) {
  const std::u32string text = Decode(s);
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    if (!IsLineBreak(text[i])) {
      ++i;
      continue;
    }
    size_t end = i + 1;
    if (text[i] == '\r' && end < text.size() && text[end] == '\n') ++end;
    lines.push_back(Encode(std::u32string_view(text).substr(start, (keepends ? end : i) - start)));
    start = i = end;
  }
  if (start < text.size()) lines.push_back(Encode(std::u32string_view(text).substr(start)));
  return lines;
}

Value MSplitLines(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("splitlines", {"keepends"}, args);
  List out;
  for (auto& line : SplitLines(self.str(), b.has(0) && Truthy(b[0]))) out.push_back(Value::Str(std::move(line), self.safe()));
  return MakeList(in, std::move(out));
}

Value AffixTest(Interpreter& in, const Value& self, CallArgs& args, bool prefix) {
  const char* name = prefix ? "startswith" : "endswith";
  const BoundArgs b = Bind(name, {"prefix", "start", "end"}, args, 1);
  std::vector<std::string> candidates;
  if (b[0].is_string()) {
    candidates.push_back(b[0].str());
  } else if (b[0].is_tuple()) {
    for (const Value& v : b[0].list()) {
      if (!v.is_string())
        Raise("TypeError", std::string("tuple for ") + name + " must only contain str, not " + TypeName(v));
      candidates.push_back(v.str());
    }
  } else {
    if (b[0].is_undefined()) RaiseUndefined(b[0]);
    Raise("TypeError", std::string(name) + " first arg must be str or a tuple of str, not " + TypeName(b[0]));
  }
  std::string_view text = self.str();
  if (b.has(1) || b.has(2)) {
    int64_t start, end;
    const size_t length = unicode::Length(text);
    StartEnd(length, b, 1, &start, &end);
    if (start > static_cast<int64_t>(length)) return Value::Bool(false);
    text = CodePointSlice(text, start, end);
  }
  (void)in;
  for (const std::string& c : candidates) {
    if (prefix ? text.substr(0, c.size()) == c
               : (text.size() >= c.size() && text.substr(text.size() - c.size()) == c))
      return Value::Bool(true);
  }
  return Value::Bool(false);
}
Value MStartsWith(Interpreter& in, const Value& self, CallArgs& args) { return AffixTest(in, self, args, true); }
Value MEndsWith(Interpreter& in, const Value& self, CallArgs& args) { return AffixTest(in, self, args, false); }

Value MUpper(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("upper", {}, args);
  return MakeStr(in, unicode::Upper(self.str()), self.safe());
}
Value MLower(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("lower", {}, args);
  return MakeStr(in, unicode::Lower(self.str()), self.safe());
}
Value MCasefold(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("casefold", {}, args);
  std::u32string out;
  for (char32_t c : Decode(self.str())) {
    if (c == 0xDF) {
      out += U"ss";
    } else {
      unicode::AppendLower(&out, c);
    }
  }
  return MakeStr(in, Encode(out));
}
Value MSwapcase(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("swapcase", {}, args);
  std::u32string out;
  for (char32_t c : Decode(self.str())) {
    if (unicode::IsUpper(c)) {
      unicode::AppendLower(&out, c);
    } else if (unicode::IsLower(c)) {
      unicode::AppendUpper(&out, c);
    } else {
      out.push_back(c);
    }
  }
  return MakeStr(in, Encode(out), self.safe());
}

// str.title(): a letter after an uncased character starts a word.
std::string PyTitle(const std::string& s) {
  std::u32string out;
  bool previous_cased = false;
  for (char32_t c : Decode(s)) {
    if (previous_cased) {
      unicode::AppendLower(&out, c);
    } else {
      unicode::AppendTitle(&out, c);
    }
    previous_cased = unicode::IsCased(c);
  }
  return Encode(out);
}

std::string PyCapitalize(const std::string& s) {
  std::u32string out;
  bool first = true;
  for (char32_t c : Decode(s)) {
    if (first) {
      unicode::AppendTitle(&out, c);
      first = false;
    } else {
      unicode::AppendLower(&out, c);
    }
  }
  return Encode(out);
}

Value MTitle(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("title", {}, args);
  return MakeStr(in, PyTitle(self.str()), self.safe());
}
Value MCapitalize(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("capitalize", {}, args);
  return MakeStr(in, PyCapitalize(self.str()), self.safe());
}

std::string PyReplace(Interpreter& in, const std::string& s, const std::string& old, const std::string& repl,
                      int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts the replacement before every code point and at the end.
    int64_t done = 0;
    size_t pos = 0;
    while (pos <= s.size()) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (pos == s.size()) break;
      const size_t len = unicode::SequenceLength(static_cast<unsigned char>(s[pos]));
      out.append(s, pos, len);
      pos += len;
      in.Charge(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += repl;
    pos = at + old.size();
    ++done;
    in.Charge(out.size());
  }
  out.append(s, pos, std::string::npos);
  in.Charge(out.size());
  return out;
}

Value MReplace(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("replace", {"old", "new", "count"}, args, 2);
  const int64_t count = b.has(2) ? IndexArg(b[2], "replace") : -1;
  return Value::Str(PyReplace(in, self.str(), StrArg(b[0], "replace"), StrArg(b[1], "replace"), count), self.safe());
}

// find/rfind/index/rindex/count share argument handling.
int64_t FindSub(const Value& self, const BoundArgs& b, const char* name, bool reverse) {
  const std::string sub = StrArg(b[0], name);
  const std::string& s = self.str();
  int64_t start, end;
  const size_t length = unicode::Length(s);
  StartEnd(length, b, 1, &start, &end);
  if (start > end) return -1;
  const size_t a = ByteOffset(s, start), z = ByteOffset(s, end);
  const std::string_view window = std::string_view(s).substr(a, z - a);
  const size_t at = reverse ? window.rfind(sub) : window.find(sub);
  if (at == std::string_view::npos) return -1;
  return start + CodePointIndex(window, at);
}
Value MFind(Interpreter&, const Value& self, CallArgs& args) {
  return Value::Int(FindSub(self, Bind("find", {"sub", "start", "end"}, args, 1), "find", false));
}
Value MRFind(Interpreter&, const Value& self, CallArgs& args) {
  return Value::Int(FindSub(self, Bind("rfind", {"sub", "start", "end"}, args, 1), "rfind", true));
}
Value MIndex(Interpreter&, const Value& self, CallArgs& args) {
  const int64_t i = FindSub(self, Bind("index", {"sub", "start", "end"}, args, 1), "index", false);
  if (i < 0) Raise("ValueError", "substring not found");
  return Value::Int(i);
}
Value MRIndex(Interpreter&, const Value& self, CallArgs& args) {
  const int64_t i = FindSub(self, Bind("rindex", {"sub", "start", "end"}, args, 1), "rindex", true);
  if (i < 0) Raise("ValueError", "substring not found");
  return Value::Int(i);
}
Value MCount(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("count", {"sub", "start", "end"}, args, 1);
  const std::string sub = StrArg(b[0], "count");
  int64_t start, end;
  const std::string& s = self.str();
  StartEnd(unicode::Length(s), b, 1, &start, &end);
  if (start > end) return Value::Int(0);
  const std::string_view window = CodePointSlice(s, start, end);
  if (sub.empty()) return Value::Int(static_cast<int64_t>(unicode::Length(window)) + 1);
  int64_t n = 0;
  for (size_t at = window.find(sub); at != std::string_view::npos; at = window.find(sub, at + sub.size())) ++n;
  return Value::Int(n);
}

Value MJoin(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("join", {"iterable"}, args, 1);
  std::string out;
  size_t index = 0;
  for (const Value& item : Iterate(b[0])) {
    if (!item.is_string())
      Raise("TypeError", "sequence item " + std::to_string(index) + ": expected str instance, " + TypeName(item) + " found");
    if (index++) out += self.str();
    out += item.str();
    in.Charge(out.size());
  }
  return Value::Str(std::move(out), self.safe());
}

Value MFormat(Interpreter& in, const Value& self, CallArgs& args) {
  return MakeStr(in, StrFormat(in, self.str(), args), self.safe());
}

template <bool (*Pred)(char32_t)>
Value AllChars(Interpreter&, const Value& self, CallArgs& args) {
  Bind("is...", {}, args);
  const std::u32string text = Decode(self.str());
  if (text.empty()) return Value::Bool(false);
  return Value::Bool(std::all_of(text.begin(), text.end(), Pred));
}
bool IsAlnumChar(char32_t c) { return unicode::IsAlpha(c) || unicode::IsDigit(c); }

Value MIsLower(Interpreter&, const Value& self, CallArgs& args) {
  Bind("islower", {}, args);
  bool cased = false;
  for (char32_t c : Decode(self.str())) {
    if (unicode::IsUpper(c)) return Value::Bool(false);
    cased |= unicode::IsLower(c);
  }
  return Value::Bool(cased);
}
Value MIsUpper(Interpreter&, const Value& self, CallArgs& args) {
  Bind("isupper", {}, args);
  bool cased = false;
  for (char32_t c : Decode(self.str())) {
    if (unicode::IsLower(c)) return Value::Bool(false);
    cased |= unicode::IsUpper(c);
  }
  return Value::Bool(cased);
}
// str.istitle(): upper-case letters only after uncased characters,
// lower-case ones only after cased ones, and at least one cased letter.
Value MIsTitle(Interpreter&, const Value& self, CallArgs& args) {
  Bind("istitle", {}, args);
  bool previous_cased = false, any_cased = false;
  for (char32_t c : Decode(self.str())) {
    if (unicode::IsUpper(c)) {
      if (previous_cased) return Value::Bool(false);
      previous_cased = any_cased = true;
    } else if (unicode::IsLower(c)) {
      if (!previous_cased) return Value::Bool(false);
      previous_cased = any_cased = true;
    } else {
      previous_cased = false;
    }
  }
  return Value::Bool(any_cased);
}

Value Justify(Interpreter& in, const Value& self, CallArgs& args, const char* name, char mode) {
  const BoundArgs b = Bind(name, {"width", "fillchar"}, args, 1);
  const int64_t width = std::min<int64_t>(IndexArg(b[0], name), static_cast<int64_t>(in.limits().max_output_bytes));
  char32_t fill = ' ';
  if (b.has(1)) {
    if (!b[1].is_string() || unicode::Length(b[1].str()) != 1)
      Raise("TypeError", "The fill character must be exactly one character long");
    fill = Decode(b[1].str())[0];
  }
  const std::string& s = self.str();
  const int64_t len = static_cast<int64_t>(unicode::Length(s));
  if (width <= len) return self;
  in.Charge(static_cast<size_t>(width));
  const int64_t marg = width - len;
  int64_t left = 0;
  if (mode == 'c') {
    left = marg / 2 + (marg & width & 1);
  } else if (mode == 'r') {
    left = marg;
  }
  std::string out;
  for (int64_t i = 0; i < left; ++i) unicode::Append(&out, fill);
  out += s;
  for (int64_t i = left; i < marg; ++i) unicode::Append(&out, fill);
  return Value::Str(std::move(out), self.safe());
}
Value MCenter(Interpreter& in, const Value& self, CallArgs& args) { return Justify(in, self, args, "center", 'c'); }
Value MLJust(Interpreter& in, const Value& self, CallArgs& args) { return Justify(in, self, args, "ljust", 'l'); }
Value MRJust(Interpreter& in, const Value& self, CallArgs& args) { return Justify(in, self, args, "rjust", 'r'); }
Value MZFill(Interpreter& in, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("zfill", {"width"}, args, 1);
  const int64_t width = std::min<int64_t>(IndexArg(b[0], "zfill"), static_cast<int64_t>(in.limits().max_output_bytes));
  const std::string& s = self.str();
  const int64_t len = static_cast<int64_t>(unicode::Length(s));
  if (width <= len) return self;
  in.Charge(static_cast<size_t>(width));
  const bool sign = !s.empty() && (s[0] == '+' || s[0] == '-');
  std::string out = sign ? s.substr(0, 1) : "";
  out += std::string(static_cast<size_t>(width - len), '0');
  out += sign ? s.substr(1) : s;
  return Value::Str(std::move(out), self.safe());
}

Value Partition(Interpreter&, const Value& self, CallArgs& args, bool reverse) {
  const BoundArgs b = Bind(reverse ? "rpartition" : "partition", {"sep"}, args, 1);
  const std::string sep = StrArg(b[0], "partition");
  if (sep.empty()) Raise("ValueError", "empty separator");
  const std::string& s = self.str();
  const size_t at = reverse ? s.rfind(sep) : s.find(sep);
  List parts;
  if (at == std::string::npos) {
    parts = reverse ? List{Value::Str(""), Value::Str(""), self} : List{self, Value::Str(""), Value::Str("")};
  } else {
    parts = {Value::Str(s.substr(0, at)), Value::Str(sep), Value::Str(s.substr(at + sep.size()))};
  }
  return Value::MakeTuple(std::move(parts));
}
Value MPartition(Interpreter& in, const Value& self, CallArgs& args) { return Partition(in, self, args, false); }
Value MRPartition(Interpreter& in, const Value& self, CallArgs& args) { return Partition(in, self, args, true); }

Value MRemovePrefix(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("removeprefix", {"prefix"}, args, 1);
  const std::string p = StrArg(b[0], "removeprefix");
  const std::string& s = self.str();
  if (s.compare(0, p.size(), p) == 0) return Value::Str(s.substr(p.size()), self.safe());
  return self;
}
Value MRemoveSuffix(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("removesuffix", {"suffix"}, args, 1);
  const std::string p = StrArg(b[0], "removesuffix");
  const std::string& s = self.str();
  if (!p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0)
    return Value::Str(s.substr(0, s.size() - p.size()), self.safe());
  return self;
}

const std::map<std::string, MethodFn, std::less<>>& StrMethods() {
  static const std::map<std::string, MethodFn, std::less<>> methods = {
      {"capitalize", MCapitalize},
      {"casefold", MCasefold},
      {"center", MCenter},
      {"count", MCount},
      {"endswith", MEndsWith},
      {"find", MFind},
      {"format", MFormat},
      {"index", MIndex},
      {"isalnum", AllChars<IsAlnumChar>},
      {"isalpha", AllChars<unicode::IsAlpha>},
      {"isdecimal", AllChars<unicode::IsDecimal>},
      {"isdigit", AllChars<unicode::IsDigit>},
      {"islower", MIsLower},
      {"isnumeric", AllChars<unicode::IsDigit>},
      {"isspace", AllChars<unicode::IsSpace>},
      {"istitle", MIsTitle},
      {"isupper", MIsUpper},
      {"join", MJoin},
      {"ljust", MLJust},
      {"lower", MLower},
      {"lstrip", MLStrip},
      {"partition", MPartition},
      {"removeprefix", MRemovePrefix},
      {"removesuffix", MRemoveSuffix},
      {"replace", MReplace},
      {"rfind", MRFind},
      {"rindex", MRIndex},
      {"rjust", MRJust},
      {"rpartition", MRPartition},
      {"rsplit", MRSplit},
      {"rstrip", MRStrip},
      {"split", MSplit},
      {"splitlines", MSplitLines},
      {"startswith", MStartsWith},
      {"strip", MStrip},
      {"swapcase", MSwapcase},
      {"title", MTitle},
      {"upper", MUpper},
      {"zfill", MZFill},
  };
  return methods;
}

// ---------------------------------------------------------------------------
// dict, list and tuple methods.

List DictItems(Interpreter& in, const Value& self) {
  List items;
  for (const auto& [k, v] : self.dict().items) items.push_back(Value::MakeTuple({k, v}));
  in.Step(1 + items.size() / 8);
  return items;
}
Value MDictItems(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("items", {}, args);
  return Value::MakeIterator(DictItems(in, self), "dict_items", true);
}
Value MDictKeys(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("keys", {}, args);
  List items;
  for (const auto& [k, v] : self.dict().items) items.push_back(k);
  in.Step(1 + items.size() / 8);
  return Value::MakeIterator(std::move(items), "dict_keys", true);
}
Value MDictValues(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("values", {}, args);
  List items;
  for (const auto& [k, v] : self.dict().items) items.push_back(v);
  in.Step(1 + items.size() / 8);
  return Value::MakeIterator(std::move(items), "dict_values", true);
}
Value MDictGet(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("get", {"key", "default"}, args, 1);
  if (!IsHashable(b[0])) Raise("TypeError", "unhashable type: '" + TypeName(b[0]) + "'");
  if (const Value* v = self.dict().Find(b[0])) return *v;
  return b.has(1) ? b[1] : Value::None();
}
Value MDictCopy(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("copy", {}, args);
  in.Step(self.dict().size());
  return Value::MakeDict(std::make_shared<Dict>(self.dict()));
}

Value MListCount(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("count", {"value"}, args, 1);
  int64_t n = 0;
  for (const Value& v : self.list()) n += Equals(v, b[0]);
  return Value::Int(n);
}
Value MListIndex(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("index", {"value", "start", "stop"}, args, 1);
  const List& items = self.list();
  int64_t start, end;
  StartEnd(items.size(), b, 1, &start, &end);
  for (int64_t i = start; i < end; ++i)
    if (Equals(items[static_cast<size_t>(i)], b[0])) return Value::Int(i);
  if (self.is_tuple()) Raise("ValueError", "tuple.index(x): x not in tuple");
  Raise("ValueError", Repr(b[0]) + " is not in list");
}
Value MListCopy(Interpreter& in, const Value& self, CallArgs& args) {
  Bind("copy", {}, args);
  return MakeList(in, self.list());
}
// list.pop and list.clear are not among the methods the immutable sandbox
// blocks (its list is append, extend, insert, remove, reverse, sort), so
// they work and change the list everywhere it is referenced, as in Jinja2.
Value MListPop(Interpreter&, const Value& self, CallArgs& args) {
  const BoundArgs b = Bind("pop", {"index"}, args);
  List& items = self.list();
  if (items.empty()) Raise("IndexError", "pop from empty list");
  int64_t i = b.has(0) ? IndexArg(b[0], "pop") : -1;
  if (i < 0) i += static_cast<int64_t>(items.size());
  if (i < 0 || i >= static_cast<int64_t>(items.size())) Raise("IndexError", "pop index out of range");
  Value v = items[static_cast<size_t>(i)];
  items.erase(items.begin() + i);
  return v;
}
Value MListClear(Interpreter&, const Value& self, CallArgs& args) {
  Bind("clear", {}, args);
  self.list().clear();
  return Value::None();
}

Value BoundMethod(const Value& self, const std::string& name, MethodFn impl) {
  auto fn = std::make_shared<Callable>();
  fn->name = name + " of " + ObjectTypeRepr(self);
  fn->type_name = "builtin_function_or_method";
  fn->fn = [self, impl](Interpreter& in, CallArgs& args) { return impl(in, self, args); };
  return Value::MakeCallable(std::move(fn));
}

Value UnsafeAttribute(const Value& obj, const std::string& name) {
  return Value::Undefined("access to attribute '" + name + "' of '" + TypeName(obj) + "' object is unsafe.", true);
}

// Python attributes of `obj` named `name`: a bound method, an unsafe
// attribute (an undefined that raises SecurityError when used), or nullopt.
std::optional<Value> PythonAttribute(const Value& obj, const std::string& name) {
  if (name.size() > 4 && name.compare(0, 2, "__") == 0 && name.compare(name.size() - 2, 2, "__") == 0)
    return UnsafeAttribute(obj, name);
  switch (obj.kind()) {
    case Value::Kind::kString: {
      const auto& methods = StrMethods();
      if (const auto it = methods.find(name); it != methods.end()) return BoundMethod(obj, name, it->second);
      if (name == "encode" || name == "expandtabs" || name == "translate" || name == "maketrans" ||
          name == "isidentifier" || name == "isprintable" || name == "isascii" || name == "format_map")
        return Value::Undefined("the str method '" + name + "' is not supported");
      return std::nullopt;
    }
    case Value::Kind::kDict:
      if (name == "items") return BoundMethod(obj, name, MDictItems);
      if (name == "keys") return BoundMethod(obj, name, MDictKeys);
      if (name == "values") return BoundMethod(obj, name, MDictValues);
      if (name == "get") return BoundMethod(obj, name, MDictGet);
      if (name == "copy") return BoundMethod(obj, name, MDictCopy);
      if (name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" || name == "update")
        return UnsafeAttribute(obj, name);
      if (name == "fromkeys") return Value::Undefined("dict.fromkeys is not supported");
      return std::nullopt;
    case Value::Kind::kList:
      if (name == "count") return BoundMethod(obj, name, MListCount);
      if (name == "index") return BoundMethod(obj, name, MListIndex);
      if (name == "copy") return BoundMethod(obj, name, MListCopy);
      if (name == "pop") return BoundMethod(obj, name, MListPop);
      if (name == "clear") return BoundMethod(obj, name, MListClear);
      if (name == "append" || name == "extend" || name == "insert" || name == "remove" || name == "reverse" ||
          name == "sort")
        return UnsafeAttribute(obj, name);
      return std::nullopt;
    case Value::Kind::kTuple:
      if (name == "count") return BoundMethod(obj, name, MListCount);
      if (name == "index") return BoundMethod(obj, name, MListIndex);
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

Value MissingAttribute(const Value& obj, const std::string& name) {
  return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no attribute '" + name + "'");
}

Value MissingElement(const Value& obj, const Value& key) {
  return Value::Undefined(ObjectTypeRepr(obj) + " has no element " + Repr(key));
}

// The attributes of the loop object.
Value LoopAttribute(const Value& obj, const std::string& name) {
  const LoopState& l = obj.loop();
  const auto length = static_cast<int64_t>(l.items->size());
  const auto i = static_cast<int64_t>(l.index0);
  if (name == "index") return Value::Int(i + 1);
  if (name == "index0") return Value::Int(i);
  if (name == "revindex") return Value::Int(length - i);
  if (name == "revindex0") return Value::Int(length - i - 1);
  if (name == "first") return Value::Bool(i == 0);
  if (name == "last") return Value::Bool(i == length - 1);
  if (name == "length") return Value::Int(length);
  if (name == "depth") return Value::Int(l.depth);
  if (name == "depth0") return Value::Int(l.depth - 1);
  if (name == "previtem") return i > 0 ? (*l.items)[static_cast<size_t>(i - 1)] : Value::Undefined("there is no previous item");
  if (name == "nextitem") return i + 1 < length ? (*l.items)[static_cast<size_t>(i + 1)] : Value::Undefined("there is no next item");
  if (name == "cycle") {
    auto fn = std::make_shared<Callable>();
    fn->name = "LoopContext.cycle";
    fn->type_name = "method";
    auto state = std::static_pointer_cast<LoopState>(obj.shared());
    fn->fn = [state](Interpreter&, CallArgs& args) -> Value {
      if (!args.keyword.empty()) Raise("TypeError", "cycle() got an unexpected keyword argument");
      if (args.positional.empty()) Raise("TypeError", "no items for cycling given");
      return args.positional[state->index0 % args.positional.size()];
    };
    return Value::MakeCallable(std::move(fn));
  }
  if (name == "changed") {
    auto fn = std::make_shared<Callable>();
    fn->name = "LoopContext.changed";
    fn->type_name = "method";
    auto state = std::static_pointer_cast<LoopState>(obj.shared());
    fn->fn = [state](Interpreter&, CallArgs& args) -> Value {
      if (!args.keyword.empty()) Raise("TypeError", "changed() got an unexpected keyword argument");
      const Value now = Value::MakeList(args.positional);
      if (state->has_last_changed && Equals(Value::MakeList(state->last_changed), now)) return Value::Bool(false);
      state->has_last_changed = true;
      state->last_changed = args.positional;
      return Value::Bool(true);
    };
    return Value::MakeCallable(std::move(fn));
  }
  return MissingAttribute(obj, name);
}

// A generator filter's result: the items computed now, but an error in
// computing them raised only when the generator is iterated, as with
// Jinja2's lazy generators.
template <typename Fn>
Value Generator(Interpreter& in, const char* function, Fn&& compute) {
  List items;
  std::string error_type, error_message;
  try {
    items = compute();
  } catch (const PyException& e) {
    error_type = e.type;
    error_message = e.message;
  }
  in.Step(1 + items.size() / 8);
  Value g = Value::MakeIterator(std::move(items), "generator");
  g.iterator().function = function;
  g.iterator().error_type = std::move(error_type);
  g.iterator().error_message = std::move(error_message);
  return g;
}

// ---------------------------------------------------------------------------
// Filters. Each takes the value and the call's arguments, as Jinja2 calls
// them (the value first).

Value FAbs(Interpreter&, const Value& v, CallArgs& args) {
  Bind("abs", {}, args);
  if (v.is_float()) return Value::Float(std::fabs(v.as_double()));
  if (v.is_integral()) {
    if (v.as_int() == INT64_MIN) Raise("OverflowError", "integer overflow (this interpreter's integers have 64 bits)");
    return Value::Int(std::llabs(v.as_int()));
  }
  if (v.is_undefined()) RaiseUndefined(v);
  Raise("TypeError", "bad operand type for abs(): '" + TypeName(v) + "'");
}

Value FAttr(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("attr", {"name"}, args, 1);
  const std::string name = SoftStr(b[0]);
  if (v.is_undefined()) RaiseUndefined(v);
  if (v.is_namespace()) {
    if (const Value* found = v.ns().attrs.FindString(name)) return *found;
  } else if (v.is_loop()) {
    return LoopAttribute(v, name);
  } else if (auto attr = PythonAttribute(v, name)) {
    return *attr;
  }
  return MissingAttribute(v, name);
}

Value FCapitalize(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("capitalize", {}, args);
  return MakeStr(in, PyCapitalize(SoftStr(v)), v.is_string() && v.safe());
}

Value FCenter(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("center", {"width"}, args);
  CallArgs inner;
  inner.positional.push_back(b.has(0) ? b[0] : Value::Int(80));
  return MCenter(in, Value::Str(SoftStr(v)), inner);
}

int64_t Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return static_cast<int64_t>(StrLength(v));
    case Value::Kind::kList:
    case Value::Kind::kTuple: return static_cast<int64_t>(v.list().size());
    case Value::Kind::kDict: return static_cast<int64_t>(v.dict().size());
    case Value::Kind::kLoop: return static_cast<int64_t>(v.loop().items->size());
    case Value::Kind::kIterator:
      if (v.iterator().view) return static_cast<int64_t>(v.iterator().items.size());
      Raise("TypeError", "object of type '" + TypeName(v) + "' has no len()");
    default: Raise("TypeError", "object of type '" + TypeName(v) + "' has no len()");
  }
}

Value FLength(Interpreter&, const Value& v, CallArgs& args) {
  Bind("length", {}, args);
  return Value::Int(Length(v));
}

Value FDefault(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("default", {"default_value", "boolean"}, args);
  if (v.is_undefined() || (b.has(1) && Truthy(b[1]) && !Truthy(v))) return b.has(0) ? b[0] : Value::Str("");
  return v;
}

Value FDictSort(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("dictsort", {"case_sensitive", "by", "reverse"}, args);
  if (v.is_undefined()) RaiseUndefined(v);
  if (!v.is_dict()) Raise("AttributeError", "'" + TypeName(v) + "' object has no attribute 'items'");
  const bool case_sensitive = b.has(0) && Truthy(b[0]);
  size_t pos = 0;
  if (b.has(1)) {
    const std::string by = SoftStr(b[1]);
    if (by == "value") {
      pos = 1;
    } else if (by != "key") {
      Raise("FilterArgumentError", "You can only sort by either \"key\" or \"value\"");
    }
  }
  List items = DictItems(in, v);
  std::vector<Value> keys;
  for (const Value& item : items) {
    const Value& k = item.list()[pos];
    keys.push_back(case_sensitive ? k : IgnoreCase(k));
  }
  StableSort(&items, keys, b.has(2) && Truthy(b[2]));
  return Value::MakeList(std::move(items));
}

Value FEscape(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("escape", {}, args);
  if (v.is_string() && v.safe()) return v;
  return MakeStr(in, HtmlEscape(SoftStr(v)), true);
}

Value FForceEscape(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("forceescape", {}, args);
  return MakeStr(in, HtmlEscape(SoftStr(v)), true);
}

Value FFirst(Interpreter&, const Value& v, CallArgs& args) {
  Bind("first", {}, args);
  if (v.is_string()) {
    if (v.str().empty()) return Value::Undefined("No first item, sequence was empty.");
    size_t pos = 0;
    unicode::Next(v.str(), &pos);
    return Value::Str(v.str().substr(0, pos));
  }
  if (v.is_sequence()) return v.list().empty() ? Value::Undefined("No first item, sequence was empty.") : v.list().front();
  if (v.is_dict())
    return v.dict().items.empty() ? Value::Undefined("No first item, sequence was empty.") : v.dict().items.front().first;
  if (v.is_iterator()) {
    IteratorState& it = v.iterator();
    if (!it.error_type.empty()) Raise(it.error_type.c_str(), it.error_message);
    if (it.items.empty()) return Value::Undefined("No first item, sequence was empty.");
    Value first = it.items.front();
    if (!it.view) it.items.erase(it.items.begin());  // next() consumes it
    return first;
  }
  const List items = Iterate(v);
  return items.empty() ? Value::Undefined("No first item, sequence was empty.") : items.front();
}

Value FLast(Interpreter&, const Value& v, CallArgs& args) {
  Bind("last", {}, args);
  if (v.is_undefined()) return Value::Undefined("No last item, sequence was empty.");
  if (v.is_string()) {
    const std::u32string text = Decode(v.str());
    if (text.empty()) return Value::Undefined("No last item, sequence was empty.");
    return Value::Str(Encode(text.substr(text.size() - 1)));
  }
  if (v.is_sequence()) return v.list().empty() ? Value::Undefined("No last item, sequence was empty.") : v.list().back();
  if (v.is_dict())
    return v.dict().items.empty() ? Value::Undefined("No last item, sequence was empty.") : v.dict().items.back().first;
  if (v.is_iterator() && v.iterator().view)
    return v.iterator().items.empty() ? Value::Undefined("No last item, sequence was empty.") : v.iterator().items.back();
  Raise("TypeError", "'" + TypeName(v) + "' object is not reversible");
}

// Python's float(str): surrounding whitespace, an optional sign, digits with
// single underscores between them, inf/infinity/nan in any case.
std::optional<double> ParsePyFloat(std::string_view text) {
  text = unicode::StripSpace(text);
  if (text.empty()) return std::nullopt;
  bool negative = false;
  if (text[0] == '+' || text[0] == '-') {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  std::string clean;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '_') {
      if (i == 0 || i + 1 >= text.size() || !std::isdigit(static_cast<unsigned char>(text[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(text[i + 1])))
        return std::nullopt;
      continue;
    }
    clean.push_back(text[i]);
  }
  if (clean.empty() || clean[0] == '+' || clean[0] == '-') return std::nullopt;
  // from_chars would also take hexadecimal floats and "infinity" spellings
  // Python refuses; allow only decimal digits, '.', 'e', and the words.
  std::string lower = unicode::Lower(clean);
  if (lower != "inf" && lower != "infinity" && lower != "nan") {
    for (char c : lower)
      if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-')) return std::nullopt;
  }
  double d = 0;
  const auto result = std::from_chars(clean.data(), clean.data() + clean.size(), d);
  if (result.ptr != clean.data() + clean.size()) return std::nullopt;
  if (result.ec == std::errc::result_out_of_range) {
    const size_t e = lower.find('e');
    d = (e != std::string::npos && lower[e + 1] == '-') ? 0.0 : HUGE_VAL;
  } else if (result.ec != std::errc()) {
    return std::nullopt;
  }
  return negative ? -d : d;
}

Value FFloat(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("float", {"default"}, args);
  const Value dflt = b.has(0) ? b[0] : Value::Float(0.0);
  if (v.is_undefined()) RaiseUndefined(v);
  if (v.is_number()) return Value::Float(v.as_double());
  if (v.is_string()) {
    if (auto d = ParsePyFloat(v.str())) return Value::Float(*d);
  }
  return dflt;
}

// Python's int(str, base) for base 10 (and 0, 2, 8, 16 as given).
std::optional<int64_t> ParsePyInt(std::string_view text, int64_t base) {
  text = unicode::StripSpace(text);
  bool negative = false;
  if (!text.empty() && (text[0] == '+' || text[0] == '-')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  auto has_prefix = [&](char letter) {
    return text.size() > 2 && text[0] == '0' && (text[1] | 0x20) == letter;
  };
  if (base == 0) {
    base = has_prefix('x') ? 16 : has_prefix('o') ? 8 : has_prefix('b') ? 2 : 10;
    if (base == 10 && text.size() > 1 && text[0] == '0' && text.find_first_not_of("0_") != std::string_view::npos)
      return std::nullopt;
  }
  if ((base == 16 && has_prefix('x')) || (base == 8 && has_prefix('o')) || (base == 2 && has_prefix('b'))) {
    text.remove_prefix(2);
    if (!text.empty() && text[0] == '_') text.remove_prefix(1);
  }
  if (base < 2 || base > 36) Raise("ValueError", "int() base must be >= 2 and <= 36, or 0");
  std::string digits;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '_' && i > 0 && i + 1 < text.size() && text[i - 1] != '_') continue;
    digits.push_back(text[i]);
  }
  if (digits.empty()) return std::nullopt;
  uint64_t value = 0;
  const auto result = std::from_chars(digits.data(), digits.data() + digits.size(), value, static_cast<int>(base));
  if (result.ptr != digits.data() + digits.size()) return std::nullopt;
  if (result.ec != std::errc() || value > static_cast<uint64_t>(INT64_MAX) + (negative ? 1 : 0))
    Raise("OverflowError", "the integer " + std::string(text) + " does not fit in 64 bits");
  return negative ? static_cast<int64_t>(0 - value) : static_cast<int64_t>(value);
}

Value FInt(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("int", {"default", "base"}, args);
  const Value dflt = b.has(0) ? b[0] : Value::Int(0);
  if (v.is_undefined()) RaiseUndefined(v);
  if (v.is_integral()) return Value::Int(v.as_int());
  auto from_double = [&](double d) -> Value {
    if (std::isnan(d)) return dflt;
    if (std::isinf(d)) Raise("OverflowError", "cannot convert float infinity to integer");
    if (std::fabs(d) >= 9.2e18) Raise("OverflowError", "the integer part of " + FloatRepr(d) + " does not fit in 64 bits");
    return Value::Int(static_cast<int64_t>(d));
  };
  if (v.is_float()) return from_double(v.as_double());
  if (v.is_string()) {
    const int64_t base = b.has(1) ? IndexArg(b[1], "int") : 10;
    if (auto i = ParsePyInt(v.str(), base)) return Value::Int(*i);
    if (auto d = ParsePyFloat(v.str())) return from_double(*d);
  }
  return dflt;
}

Value FItems(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("items", {}, args);
  return Generator(in, "do_items", [&] {
    if (v.is_undefined()) return List();
    if (!v.is_dict()) Raise("TypeError", "Can only get item pairs from a mapping.");
    return DictItems(in, v);
  });
}

// jinja2's do_indent.
Value FIndent(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("indent", {"width", "first", "blank"}, args);
  std::string indention;
  if (b.has(0) && b[0].is_string()) {
    indention = b[0].str();
  } else {
    const int64_t width = b.has(0) ? IndexArg(b[0], "indent") : 4;
    indention = std::string(static_cast<size_t>(std::clamp<int64_t>(width, 0, 100000)), ' ');
  }
  const bool first = b.has(1) && Truthy(b[1]);
  const bool blank = b.has(2) && Truthy(b[2]);
  // do_indent starts with `s += newline`, which only strings survive.
  if (!v.is_string()) {
    if (v.is_undefined()) RaiseUndefined(v);
    if (v.is_list()) Raise("AttributeError", "'list' object has no attribute 'splitlines'");
    if (v.is_tuple()) Raise("TypeError", "can only concatenate tuple (not \"str\") to tuple");
    Raise("TypeError", "unsupported operand type(s) for +=: '" + TypeName(v) + "' and 'str'");
  }
  const std::string s = v.str() + "\n";
  const std::vector<std::string> lines = SplitLines(s, false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      out += "\n";
      if (blank || !lines[i].empty()) out += indention;
    }
    out += lines[i];
    in.Charge(out.size());
  }
  if (first) out = indention + out;
  return MakeStr(in, std::move(out), v.is_string() && v.safe());
}

Value FJoin(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("join", {"d", "attribute"}, args);
  const std::string sep = b.has(0) ? SoftStr(b[0]) : "";
  List items = Iterate(v);
  if (b.has(1) && !b[1].is_none()) {
    const std::vector<Value> parts = AttributeParts(b[1]);
    for (Value& item : items) item = GetPath(in, item, parts, nullptr);
  }
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += SoftStr(items[i]);
    in.Charge(out.size());
  }
  return Value::Str(std::move(out));
}

Value FList(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("list", {}, args);
  return MakeList(in, Iterate(v));
}

Value FLower(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("lower", {}, args);
  return MakeStr(in, unicode::Lower(SoftStr(v)), v.is_string() && v.safe());
}

Value FUpper(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("upper", {}, args);
  return MakeStr(in, unicode::Upper(SoftStr(v)), v.is_string() && v.safe());
}

List MapItems(Interpreter& in, const Value& v, CallArgs& args);
List UniqueItems(Interpreter& in, const Value& v, CallArgs& args);

// sync_do_map: nothing for a false value; otherwise a filter by name or an
// attribute applied to each item.
Value FMap(Interpreter& in, const Value& v, CallArgs& args) {
  return Generator(in, "sync_do_map", [&] { return MapItems(in, v, args); });
}

List MapItems(Interpreter& in, const Value& v, CallArgs& args) {
  if (!Truthy(v)) return {};
  List items = Iterate(v);
  if (args.positional.empty()) {
    Value attribute, dflt;
    bool has_attribute = false, has_default = false;
    for (auto& [key, value] : args.keyword) {
      if (key == "attribute") {
        attribute = value;
        has_attribute = true;
      } else if (key == "default") {
        dflt = value;
        has_default = true;
      } else {
        Raise("FilterArgumentError", "Unexpected keyword argument '" + key + "'");
      }
    }
    if (!has_attribute) Raise("FilterArgumentError", "map requires a filter argument");
    const std::vector<Value> parts = AttributeParts(attribute);
    for (Value& item : items) item = GetPath(in, item, parts, has_default && !dflt.is_none() ? &dflt : nullptr);
    return items;
  }
  const std::string name = SoftStr(args.positional[0]);
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keyword = args.keyword;
  for (Value& item : items) {
    CallArgs call = rest;
    item = in.CallFilter(name, item, call);
  }
  return items;
}

// select_or_reject: nothing for a false value; otherwise the items whose
// attribute (selectattr/rejectattr) passes or fails the test (truthiness
// without one).
List SelectItems(Interpreter& in, const Value& v, CallArgs& args, bool select, bool attr) {
  if (!Truthy(v)) return {};
  size_t off = 0;
  std::vector<Value> parts;
  if (attr) {
    if (args.positional.empty()) Raise("FilterArgumentError", "Missing parameter for attribute name");
    parts = AttributeParts(args.positional[0]);
    off = 1;
  }
  std::string test;
  CallArgs rest;
  const bool has_test = args.positional.size() > off;
  if (has_test) {
    test = SoftStr(args.positional[off]);
    rest.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(off) + 1, args.positional.end());
  }
  rest.keyword = args.keyword;
  List out;
  for (const Value& item : Iterate(v)) {
    const Value subject = attr ? GetPath(in, item, parts, nullptr) : item;
    bool ok;
    if (has_test) {
      CallArgs call = rest;
      ok = in.CallTest(test, subject, call);
    } else {
      ok = Truthy(subject);
    }
    if (ok == select) out.push_back(item);
  }
  return out;
}
Value SelectOrReject(Interpreter& in, const Value& v, CallArgs& args, bool select, bool attr) {
  return Generator(in, "select_or_reject", [&] { return SelectItems(in, v, args, select, attr); });
}
Value FSelect(Interpreter& in, const Value& v, CallArgs& args) { return SelectOrReject(in, v, args, true, false); }
Value FReject(Interpreter& in, const Value& v, CallArgs& args) { return SelectOrReject(in, v, args, false, false); }
Value FSelectAttr(Interpreter& in, const Value& v, CallArgs& args) { return SelectOrReject(in, v, args, true, true); }
Value FRejectAttr(Interpreter& in, const Value& v, CallArgs& args) { return SelectOrReject(in, v, args, false, true); }

Value MinMax(Interpreter& in, const Value& v, CallArgs& args, bool max) {
  const BoundArgs b = Bind(max ? "max" : "min", {"case_sensitive", "attribute"}, args);
  const KeyGetter key(b.has(1) ? b[1] : Value::None(), b.has(0) && Truthy(b[0]), false);
  const List items = Iterate(v);
  if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = key(in, items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = key(in, items[i]);
    if (max ? Ordered(best_key, k, "<") : Ordered(k, best_key, "<")) {
      best = i;
      best_key = std::move(k);
    }
  }
  return items[best];
}
Value FMax(Interpreter& in, const Value& v, CallArgs& args) { return MinMax(in, v, args, true); }
Value FMin(Interpreter& in, const Value& v, CallArgs& args) { return MinMax(in, v, args, false); }

Value FReplace(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("replace", {"old", "new", "count"}, args, 2);
  const int64_t count = b.has(2) && !b[2].is_none() ? IndexArg(b[2], "replace") : -1;
  return Value::Str(PyReplace(in, SoftStr(v), SoftStr(b[0]), SoftStr(b[1]), count));
}

Value FReverse(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("reverse", {}, args);
  if (v.is_string()) {
    std::u32string text = Decode(v.str());
    std::reverse(text.begin(), text.end());
    return MakeStr(in, Encode(text), v.safe());
  }
  // reversed(value) where Python has it (an iterator), else a reversed list.
  const char* type_name = nullptr;
  switch (v.kind()) {
    case Value::Kind::kList: type_name = "list_reverseiterator"; break;
    case Value::Kind::kTuple: type_name = "reversed"; break;
    case Value::Kind::kUndefined: type_name = "reversed"; break;
    case Value::Kind::kDict: type_name = "dict_reversekeyiterator"; break;
    case Value::Kind::kIterator: {
      const std::string& t = v.iterator().type_name;
      if (t == "range") {
        type_name = "range_iterator";
      } else if (t == "dict_items") {
        type_name = "dict_reverseitemiterator";
      } else if (t == "dict_keys") {
        type_name = "dict_reversekeyiterator";
      } else if (t == "dict_values") {
        type_name = "dict_reversevalueiterator";
      }
      break;
    }
    default: break;
  }
  if (!v.is_undefined() && !v.is_sequence() && !v.is_dict() && !v.is_iterator() && !v.is_loop())
    Raise("FilterArgumentError", "argument must be iterable");
  List items;
  try {
    items = Iterate(v);
  } catch (const PyException& e) {
    if (e.type != "TypeError") throw;
    Raise("FilterArgumentError", "argument must be iterable");  // do_reverse's own wording
  }
  std::reverse(items.begin(), items.end());
  if (type_name) return Value::MakeIterator(std::move(items), type_name);
  return MakeList(in, std::move(items));
}

// Python's round(x, n) for floats: correctly rounded, ties to even on the
// exact binary value, which is what printf's %.*f does in glibc.
double PyRound(double x, int64_t digits) {
  if (!std::isfinite(x)) return x;
  if (digits > 300) return x;
  if (digits < -308) return 0.0 * x;
  if (digits >= 0) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(digits), x);
    double out = 0;
    std::from_chars(buf, buf + std::strlen(buf), out);
    if (buf[0] == '-') out = -std::fabs(out);
    return out;
  }
  const double scale = std::pow(10.0, static_cast<double>(-digits));
  return std::nearbyint(x / scale) * scale;
}

Value FRound(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("round", {"precision", "method"}, args);
  const int64_t precision = b.has(0) ? IndexArg(b[0], "round") : 0;
  const std::string method = b.has(1) ? SoftStr(b[1]) : "common";
  if (method != "common" && method != "ceil" && method != "floor")
    Raise("FilterArgumentError", "method must be common, ceil or floor");
  if (!v.is_number()) Raise("TypeError", "type " + TypeName(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.is_integral() && precision >= 0) return Value::Int(v.as_int());
    return Value::Float(PyRound(v.as_double(), precision));
  }
  const double scale = std::pow(10.0, static_cast<double>(std::clamp<int64_t>(precision, -308, 308)));
  const double x = v.as_double() * scale;
  const double r = method == "ceil" ? std::ceil(x) : std::floor(x);
  return Value::Float(r / scale);
}

Value FSafe(Interpreter&, const Value& v, CallArgs& args) {
  Bind("safe", {}, args);
  return Value::Str(SoftStr(v), true);
}

Value FSort(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("sort", {"reverse", "case_sensitive", "attribute"}, args);
  const KeyGetter key(b.has(2) ? b[2] : Value::None(), b.has(1) && Truthy(b[1]), true);
  List items = Iterate(v);
  std::vector<Value> keys;
  keys.reserve(items.size());
  for (const Value& item : items) keys.push_back(key(in, item));
  in.Step(items.size() * 4);
  StableSort(&items, keys, b.has(0) && Truthy(b[0]));
  return MakeList(in, std::move(items));
}

Value FString(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("string", {}, args);
  if (v.is_string()) return v;
  return MakeStr(in, Str(v));
}

Value FSum(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("sum", {"attribute", "start"}, args);
  Value total = b.has(1) ? b[1] : Value::Int(0);
  std::vector<Value> parts;
  const bool by_attribute = b.has(0) && !b[0].is_none();
  if (by_attribute) parts = AttributeParts(b[0]);
  for (const Value& item : Iterate(v)) total = BinaryOp(in, BinOp::kAdd, total, by_attribute ? GetPath(in, item, parts, nullptr) : item);
  return total;
}

// jinja2's do_title: words start after runs of whitespace, '-', '(', '{',
// '[' or '<'; each word's first character upper-cased, the rest lower-cased.
Value FTitle(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("title", {}, args);
  const std::u32string text = Decode(SoftStr(v));
  std::u32string out;
  bool word_start = true;
  for (char32_t c : text) {
    const bool boundary = unicode::IsSpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (boundary) {
      out.push_back(c);
      word_start = true;
    } else if (word_start) {
      unicode::AppendUpper(&out, c);
      word_start = false;
    } else {
      unicode::AppendLower(&out, c);
    }
  }
  return MakeStr(in, Encode(out), v.is_string() && v.safe());
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None,
// separators=None, sort_keys=False), replacing Jinja2's HTML-escaping one.
Value FToJson(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}, args);
  JsonDumpOptions o;
  o.ensure_ascii = b.has(0) && Truthy(b[0]);
  if (b.has(1) && !b[1].is_none()) {
    o.has_indent = true;
    if (b[1].is_string()) {
      o.indent = b[1].str();
    } else {
      const int64_t n = IndexArg(b[1], "indent");
      o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(n, 0, 1000)), ' ');
    }
  }
  if (b.has(2) && !b[2].is_none()) {
    if (!b[2].is_sequence() || b[2].list().size() != 2 || !b[2].list()[0].is_string() || !b[2].list()[1].is_string())
      Raise("TypeError", "separators must be a pair of strings");
    o.has_separators = true;
    o.item_separator = b[2].list()[0].str();
    o.key_separator = b[2].list()[1].str();
  }
  o.sort_keys = b.has(3) && Truthy(b[3]);
  std::string text = JsonDumps(v, o);
  return MakeStr(in, std::move(text));
}

Value FTrim(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("trim", {"chars"}, args);
  return MakeStr(in, StripChars(SoftStr(v), b.has(0) ? b[0] : Value::None(), true, true));
}

Value FTruncate(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("truncate", {"length", "killwords", "end", "leeway"}, args);
  const int64_t length = b.has(0) ? IndexArg(b[0], "truncate") : 255;
  const bool killwords = b.has(1) && Truthy(b[1]);
  const std::string end = b.has(2) ? SoftStr(b[2]) : "...";
  const int64_t leeway = b.has(3) && !b[3].is_none() ? IndexArg(b[3], "truncate") : 5;
  const auto end_len = static_cast<int64_t>(unicode::Length(end));
  if (length < end_len) Raise("AssertionError", "expected length >= " + std::to_string(end_len) + ", got " + std::to_string(length));
  if (leeway < 0) Raise("AssertionError", "expected leeway >= 0, got " + std::to_string(leeway));
  const std::string s = SoftStr(v);
  if (static_cast<int64_t>(unicode::Length(s)) <= length + leeway) return Value::Str(s);
  std::string head(CodePointSlice(s, 0, length - end_len));
  if (!killwords) {
    const size_t space = head.rfind(' ');
    if (space != std::string::npos) head.resize(space);
  }
  return MakeStr(in, head + end);
}

Value FUnique(Interpreter& in, const Value& v, CallArgs& args) {
  return Generator(in, "do_unique", [&] { return UniqueItems(in, v, args); });
}

List UniqueItems(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("unique", {"case_sensitive", "attribute"}, args);
  const KeyGetter key(b.has(1) ? b[1] : Value::None(), b.has(0) && Truthy(b[0]), false);
  List out;
  std::vector<Value> seen;
  for (const Value& item : Iterate(v)) {
    const Value k = key(in, item);
    if (!IsHashable(k)) Raise("TypeError", "unhashable type: '" + TypeName(k) + "'");
    in.Step(seen.size() / 16);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equals(s, k); })) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return out;
}

Value FWordCount(Interpreter&, const Value& v, CallArgs& args) {
  Bind("wordcount", {}, args);
  int64_t words = 0;
  bool in_word = false;
  for (char32_t c : Decode(SoftStr(v))) {
    const bool word_char = unicode::IsAlpha(c) || unicode::IsDigit(c) || c == '_';
    if (word_char && !in_word) ++words;
    in_word = word_char;
  }
  return Value::Int(words);
}

Value FFormat(Interpreter& in, const Value& v, CallArgs& args) {
  if (!args.positional.empty() && !args.keyword.empty())
    Raise("FilterArgumentError", "can't handle positional and keyword arguments at the same time");
  Value arg;
  if (!args.keyword.empty()) {
    auto dict = std::make_shared<Dict>();
    for (auto& [key, value] : args.keyword) dict->Set(Value::Str(key), value);
    arg = Value::MakeDict(std::move(dict));
  } else {
    arg = Value::MakeTuple(args.positional);
  }
  return MakeStr(in, PercentFormat(in, Value::Str(SoftStr(v)), arg));
}

struct NamedFilter {
  const char* name;
  FilterFn fn;
};

constexpr NamedFilter kFilters[] = {
    {"abs", FAbs},
    {"attr", FAttr},
    {"capitalize", FCapitalize},
    {"center", FCenter},
    {"count", FLength},
    {"d", FDefault},
    {"default", FDefault},
    {"dictsort", FDictSort},
    {"e", FEscape},
    {"escape", FEscape},
    {"first", FFirst},
    {"float", FFloat},
    {"forceescape", FForceEscape},
    {"format", FFormat},
    {"indent", FIndent},
    {"int", FInt},
    {"items", FItems},
    {"join", FJoin},
    {"last", FLast},
    {"length", FLength},
    {"list", FList},
    {"lower", FLower},
    {"map", FMap},
    {"max", FMax},
    {"min", FMin},
    {"reject", FReject},
    {"rejectattr", FRejectAttr},
    {"replace", FReplace},
    {"reverse", FReverse},
    {"round", FRound},
    {"safe", FSafe},
    {"select", FSelect},
    {"selectattr", FSelectAttr},
    {"sort", FSort},
    {"string", FString},
    {"sum", FSum},
    {"title", FTitle},
    {"tojson", FToJson},
    {"trim", FTrim},
    {"truncate", FTruncate},
    {"unique", FUnique},
    {"upper", FUpper},
    {"wordcount", FWordCount},
};

// Jinja2 filters this interpreter leaves out: none of the chat templates
// surveyed uses them, and several (random, urlize, filesizeformat, ...) have
// no place in building a prompt.
constexpr const char* kUnsupportedFilters[] = {
    "batch", "filesizeformat", "groupby", "pprint", "random", "slice", "striptags",
    "urlencode", "urlize", "wordwrap", "xmlattr",
};

// ---------------------------------------------------------------------------
// Tests.

bool TDefined(Interpreter&, const Value& v, CallArgs& args) {
  Bind("defined", {}, args);
  return !v.is_undefined();
}
bool TUndefined(Interpreter&, const Value& v, CallArgs& args) {
  Bind("undefined", {}, args);
  return v.is_undefined();
}
bool TNone(Interpreter&, const Value& v, CallArgs& args) {
  Bind("none", {}, args);
  return v.is_none();
}
bool TBoolean(Interpreter&, const Value& v, CallArgs& args) {
  Bind("boolean", {}, args);
  return v.is_bool();
}
bool TFalse(Interpreter&, const Value& v, CallArgs& args) {
  Bind("false", {}, args);
  return v.is_bool() && !v.as_bool();
}
bool TTrue(Interpreter&, const Value& v, CallArgs& args) {
  Bind("true", {}, args);
  return v.is_bool() && v.as_bool();
}
bool TInteger(Interpreter&, const Value& v, CallArgs& args) {
  Bind("integer", {}, args);
  return v.is_int();
}
bool TFloat(Interpreter&, const Value& v, CallArgs& args) {
  Bind("float", {}, args);
  return v.is_float();
}
bool TNumber(Interpreter&, const Value& v, CallArgs& args) {
  Bind("number", {}, args);
  return v.is_number();
}
bool TString(Interpreter&, const Value& v, CallArgs& args) {
  Bind("string", {}, args);
  return v.is_string();
}
bool TMapping(Interpreter&, const Value& v, CallArgs& args) {
  Bind("mapping", {}, args);
  return v.is_dict();
}
// Jinja2's test_iterable tries iter(value): strings, containers, the loop
// object and undefined (which iterates as empty) pass.
bool TIterable(Interpreter&, const Value& v, CallArgs& args) {
  Bind("iterable", {}, args);
  return v.is_string() || v.is_sequence() || v.is_dict() || v.is_loop() || v.is_iterator() || v.is_undefined();
}
// test_sequence: len() and __getitem__ both work, as for str, list, tuple,
// dict and (vacuously) undefined.
bool TSequence(Interpreter&, const Value& v, CallArgs& args) {
  Bind("sequence", {}, args);
  return v.is_string() || v.is_sequence() || v.is_dict() || v.is_undefined();
}
bool TCallable(Interpreter&, const Value& v, CallArgs& args) {
  Bind("callable", {}, args);
  // Undefined has __call__ (it raises), so Python's callable() says yes.
  return v.is_callable() || v.is_undefined();
}
bool TEscaped(Interpreter&, const Value& v, CallArgs& args) {
  Bind("escaped", {}, args);
  return v.is_string() && v.safe();
}
// test_even / test_odd: value % 2 == 0 (or 1), with Python's % (so a string
// is formatted, and a float can be odd).
bool TEven(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("even", {}, args);
  return Equals(BinaryOp(in, BinOp::kMod, v, Value::Int(2)), Value::Int(0));
}
bool TOdd(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("odd", {}, args);
  return Equals(BinaryOp(in, BinOp::kMod, v, Value::Int(2)), Value::Int(1));
}
bool TDivisibleBy(Interpreter& in, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("divisibleby", {"num"}, args, 1);
  return Equals(BinaryOp(in, BinOp::kMod, v, b[0]), Value::Int(0));
}
bool TEq(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("eq", {"other"}, args, 1);
  return Equals(v, b[0]);
}
bool TNe(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("ne", {"other"}, args, 1);
  return !Equals(v, b[0]);
}
bool TLt(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("lt", {"other"}, args, 1);
  return Ordered(v, b[0], "<");
}
bool TLe(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("le", {"other"}, args, 1);
  return Ordered(v, b[0], "<=");
}
bool TGt(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("gt", {"other"}, args, 1);
  return Ordered(v, b[0], ">");
}
bool TGe(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("ge", {"other"}, args, 1);
  return Ordered(v, b[0], ">=");
}
bool TIn(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("in", {"seq"}, args, 1);
  return Contains(b[0], v);
}
bool TLower(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("lower", {}, args);
  CallArgs none;
  return Truthy(MIsLower(in, Value::Str(SoftStr(v)), none));
}
bool TUpper(Interpreter& in, const Value& v, CallArgs& args) {
  Bind("upper", {}, args);
  CallArgs none;
  return Truthy(MIsUpper(in, Value::Str(SoftStr(v)), none));
}
// Python's "is": identity. None, booleans and small integers are shared
// objects in CPython; other values are the same object only when they are
// the same reference here too.
bool TSameAs(Interpreter&, const Value& v, CallArgs& args) {
  const BoundArgs b = Bind("sameas", {"other"}, args, 1);
  const Value& o = b[0];
  if (v.kind() != o.kind()) return false;
  switch (v.kind()) {
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kBool:
      return v.as_bool() == o.as_bool();
    case Value::Kind::kInt:
      return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;
    case Value::Kind::kFloat:
      return false;
    case Value::Kind::kUndefined:
      return v.shared() == o.shared();
    default:
      return v.shared() == o.shared();
  }
}
bool TFilter(Interpreter&, const Value& v, CallArgs& args) {
  Bind("filter", {}, args);
  std::string unused;
  return v.is_string() && FindFilter(v.str(), &unused) != nullptr;
}
bool TTest(Interpreter&, const Value& v, CallArgs& args) {
  Bind("test", {}, args);
  std::string unused;
  return v.is_string() && FindTest(v.str(), &unused) != nullptr;
}

struct NamedTest {
  const char* name;
  TestFn fn;
};

constexpr NamedTest kTests[] = {
    {"!=", TNe},
    {"<", TLt},
    {"<=", TLe},
    {"==", TEq},
    {">", TGt},
    {">=", TGe},
    {"boolean", TBoolean},
    {"callable", TCallable},
    {"defined", TDefined},
    {"divisibleby", TDivisibleBy},
    {"eq", TEq},
    {"equalto", TEq},
    {"escaped", TEscaped},
    {"even", TEven},
    {"false", TFalse},
    {"filter", TFilter},
    {"float", TFloat},
    {"ge", TGe},
    {"greaterthan", TGt},
    {"gt", TGt},
    {"in", TIn},
    {"integer", TInteger},
    {"iterable", TIterable},
    {"le", TLe},
    {"lessthan", TLt},
    {"lower", TLower},
    {"lt", TLt},
    {"mapping", TMapping},
    {"ne", TNe},
    {"none", TNone},
    {"number", TNumber},
    {"odd", TOdd},
    {"sameas", TSameAs},
    {"sequence", TSequence},
    {"string", TString},
    {"test", TTest},
    {"true", TTrue},
    {"undefined", TUndefined},
    {"upper", TUpper},
};

// ---------------------------------------------------------------------------
// Globals.

Value MakeFunction(const std::string& name, std::function<Value(Interpreter&, CallArgs&)> fn) {
  auto c = std::make_shared<Callable>();
  c->name = name;
  c->type_name = "function";
  c->fn = std::move(fn);
  return Value::MakeCallable(std::move(c));
}

// The sandbox's safe_range: range() refusing more than MAX_RANGE items.
Value GRange(Interpreter& in, CallArgs& args) {
  if (!args.keyword.empty()) Raise("TypeError", "range() takes no keyword arguments");
  const size_t n = args.positional.size();
  if (n < 1 || n > 3) Raise("TypeError", "range expected at most 3 arguments, got " + std::to_string(n));
  auto arg = [&](size_t i) {
    const Value& v = args.positional[i];
    if (v.is_integral()) return v.as_int();
    if (v.is_undefined()) RaiseUndefined(v);
    Raise("TypeError", "'" + TypeName(v) + "' object cannot be interpreted as an integer");
  };
  int64_t start = 0, stop, step = 1;
  if (n == 1) {
    stop = arg(0);
  } else {
    start = arg(0);
    stop = arg(1);
    if (n == 3) step = arg(2);
  }
  if (step == 0) Raise("ValueError", "range() arg 3 must not be zero");
  __int128 count = 0;
  if (step > 0 && stop > start) count = (static_cast<__int128>(stop) - start + step - 1) / step;
  if (step < 0 && stop < start) count = (static_cast<__int128>(start) - stop - step - 1) / -step;
  constexpr int64_t kMaxRange = 100000;
  if (count > kMaxRange)
    Raise("OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  List items;
  items.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) items.push_back(Value::Int(start + i * step));
  in.Step(1 + items.size() / 8);
  Value r = Value::MakeIterator(std::move(items), "range", true);
  r.iterator().range_start = start;
  r.iterator().range_stop = stop;
  r.iterator().range_step = step;
  return r;
}

// dict(mapping or pairs, **kwargs), also what namespace() takes.
std::shared_ptr<Dict> DictFromArgs(const char* name, CallArgs& args) {
  auto dict = std::make_shared<Dict>();
  if (args.positional.size() > 1)
    Raise("TypeError", std::string(name) + " expected at most 1 argument, got " + std::to_string(args.positional.size()));
  if (!args.positional.empty()) {
    const Value& src = args.positional[0];
    if (src.is_dict()) {
      *dict = src.dict();
    } else if (src.is_namespace()) {
      *dict = src.ns().attrs;
    } else {
      size_t index = 0;
      for (const Value& item : Iterate(src)) {
        const List pair = Iterate(item);
        if (pair.size() != 2)
          Raise("ValueError", "dictionary update sequence element #" + std::to_string(index) + " has length " +
                                  std::to_string(pair.size()) + "; 2 is required");
        if (!IsHashable(pair[0])) Raise("TypeError", "unhashable type: '" + TypeName(pair[0]) + "'");
        dict->Set(pair[0], pair[1]);
        ++index;
      }
    }
  }
  for (auto& [key, value] : args.keyword) dict->Set(Value::Str(key), value);
  return dict;
}

// strftime_now(format): datetime.now().strftime(format) for a naive local
// time, where %f is microseconds and %z/%Z are empty.
std::string StrfTime(const std::tm& tm, const std::string& format) {
  std::string expanded;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      const char c = format[i + 1];
      if (c == 'f') {
        expanded += "000000";
        ++i;
        continue;
      }
      if (c == 'z' || c == 'Z') {
        ++i;
        continue;
      }
      expanded += format.substr(i, 2);
      ++i;
      continue;
    }
    expanded.push_back(format[i]);
  }
  if (expanded.empty()) return "";
  // strftime returns 0 both for an empty result and a too small buffer; a
  // marker character tells them apart.
  expanded.push_back('\x01');
  std::vector<char> buf(expanded.size() * 4 + 64);
  for (int attempt = 0; attempt < 8; ++attempt) {
    const size_t n = std::strftime(buf.data(), buf.size(), expanded.c_str(), &tm);
    if (n > 0) return std::string(buf.data(), n - 1);
    buf.resize(buf.size() * 4);
  }
  Raise("ValueError", "strftime format produces too much text");
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points declared in jinja_internal.h.

BoundArgs Bind(const char* function, std::initializer_list<const char*> names, CallArgs& args, size_t required) {
  BoundArgs b;
  b.values.resize(names.size());
  b.given.assign(names.size(), false);
  if (args.positional.size() > names.size())
    Raise("TypeError", std::string(function) + "() takes at most " + std::to_string(names.size()) + " argument(s) (" +
                           std::to_string(args.positional.size()) + " given)");
  for (size_t i = 0; i < args.positional.size(); ++i) {
    b.values[i] = args.positional[i];
    b.given[i] = true;
  }
  for (auto& [key, value] : args.keyword) {
    size_t index = 0;
    for (const char* n : names) {
      if (key == n) break;
      ++index;
    }
    if (index == names.size()) Raise("TypeError", std::string(function) + "() got an unexpected keyword argument '" + key + "'");
    if (b.given[index]) Raise("TypeError", std::string(function) + "() got multiple values for argument '" + key + "'");
    b.values[index] = value;
    b.given[index] = true;
  }
  for (size_t i = 0; i < required; ++i)
    if (!b.given[i])
      Raise("TypeError", std::string(function) + "() missing required argument '" + *(names.begin() + i) + "'");
  return b;
}

FilterFn FindFilter(std::string_view name, std::string* why_not) {
  for (const auto& f : kFilters)
    if (name == f.name) return f.fn;
  for (const char* u : kUnsupportedFilters)
    if (name == u) *why_not = "the filter '" + std::string(name) + "' is not supported";
  return nullptr;
}

TestFn FindTest(std::string_view name, std::string* why_not) {
  for (const auto& t : kTests)
    if (name == t.name) return t.fn;
  (void)why_not;
  return nullptr;
}

Value GetAttr(Interpreter& in, const Value& obj, const std::string& name) {
  (void)in;
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      RaiseUndefined(obj);
    case Value::Kind::kNamespace:
      if (const Value* v = obj.ns().attrs.FindString(name)) return *v;
      return MissingAttribute(obj, name);
    case Value::Kind::kLoop:
      return LoopAttribute(obj, name);
    case Value::Kind::kDict:
      // Python attributes (the methods) first, then the item: d.items is the
      // method even when d has a key "items"; d['items'] is the key.
      if (auto attr = PythonAttribute(obj, name)) return *attr;
      if (const Value* v = obj.dict().FindString(name)) return *v;
      return MissingAttribute(obj, name);
    default:
      if (auto attr = PythonAttribute(obj, name)) return *attr;
      return MissingAttribute(obj, name);
  }
}

Value GetItem(Interpreter& in, const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      RaiseUndefined(obj);
    case Value::Kind::kDict:
      if (IsHashable(key)) {
        if (const Value* v = obj.dict().Find(key)) return *v;
      }
      break;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      if (key.is_integral()) {
        const List& items = obj.list();
        int64_t i = key.as_int();
        if (i < 0) i += static_cast<int64_t>(items.size());
        if (i >= 0 && i < static_cast<int64_t>(items.size())) return items[static_cast<size_t>(i)];
        return MissingElement(obj, key);
      }
      break;
    case Value::Kind::kIterator:
      if (key.is_integral() && obj.iterator().type_name == "range") {
        const List& items = obj.iterator().items;
        int64_t i = key.as_int();
        if (i < 0) i += static_cast<int64_t>(items.size());
        if (i >= 0 && i < static_cast<int64_t>(items.size())) return items[static_cast<size_t>(i)];
        return MissingElement(obj, key);
      }
      break;
    case Value::Kind::kString:
      if (key.is_integral()) {
        const std::string& s = obj.str();
        int64_t i = key.as_int();
        if (i < 0) i += static_cast<int64_t>(StrLength(obj));
        if (i >= 0) {
          const size_t at = ByteOffset(s, i);
          if (at < s.size())
            return Value::Str(s.substr(at, unicode::SequenceLength(static_cast<unsigned char>(s[at]))), obj.safe());
        }
        return MissingElement(obj, key);
      }
      break;
    default:
      break;
  }
  // obj[key] failed: a string key falls back to the attribute.
  if (key.is_string()) {
    if (obj.is_namespace() || obj.is_loop()) return GetAttr(in, obj, key.str());
    if (auto attr = PythonAttribute(obj, key.str())) return *attr;
    return MissingAttribute(obj, key.str());
  }
  return MissingElement(obj, key);
}

// Slices bypass Jinja2's getitem (its compiler writes obj[a:b:c] as plain
// Python), so their errors are Python's and are not turned into undefined.
Value Slice(Interpreter& in, const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) RaiseUndefined(obj);
  const bool is_range = obj.is_iterator() && obj.iterator().type_name == "range";
  if (!obj.is_string() && !obj.is_sequence() && !is_range) {
    if (obj.is_dict()) Raise("TypeError", "unhashable type: 'slice'");
    Raise("TypeError", "'" + TypeName(obj) + "' object is not subscriptable");
  }
  for (const Value* v : {&start, &stop, &step}) {
    if (v->is_undefined()) RaiseUndefined(*v);
    if (!v->is_none() && !v->is_integral())
      Raise("TypeError", "slice indices must be integers or None or have an __index__ method");
  }
  if (obj.is_string()) {
    const std::u32string text = Decode(obj.str());
    std::u32string out;
    for (int64_t i : SliceIndices(static_cast<int64_t>(text.size()), start, stop, step)) out.push_back(text[static_cast<size_t>(i)]);
    return MakeStr(in, Encode(out), obj.safe());
  }
  const List& items = obj.is_sequence() ? obj.list() : obj.iterator().items;
  List out;
  const std::vector<int64_t> picked = SliceIndices(static_cast<int64_t>(items.size()), start, stop, step);
  for (int64_t i : picked) out.push_back(items[static_cast<size_t>(i)]);
  in.Step(out.size() / 8);
  if (is_range) {
    // A slice of a range is a range: range(start + a*step, start + b*step,
    // step*s) for the adjusted bounds a:b:s.
    const IteratorState& r = obj.iterator();
    const SliceBounds bounds = Bounds(static_cast<int64_t>(items.size()), start, stop, step);
    const __int128 values[3] = {static_cast<__int128>(r.range_start) + static_cast<__int128>(bounds.start) * r.range_step,
                                static_cast<__int128>(r.range_start) + static_cast<__int128>(bounds.stop) * r.range_step,
                                static_cast<__int128>(r.range_step) * bounds.step};
    for (const __int128 x : values)
      if (x > INT64_MAX || x < INT64_MIN) Raise("OverflowError", "the sliced range does not fit in 64 bits");
    Value v = Value::MakeIterator(std::move(out), "range", true);
    v.iterator().range_start = static_cast<int64_t>(values[0]);
    v.iterator().range_stop = static_cast<int64_t>(values[1]);
    v.iterator().range_step = static_cast<int64_t>(values[2]);
    return v;
  }
  return obj.is_tuple() ? Value::MakeTuple(std::move(out)) : Value::MakeList(std::move(out));
}

List Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return v.list();
    case Value::Kind::kDict: {
      List keys;
      keys.reserve(v.dict().size());
      for (const auto& [k, unused] : v.dict().items) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      List chars;
      const std::string& s = v.str();
      for (size_t pos = 0; pos < s.size();) {
        const size_t len = unicode::SequenceLength(static_cast<unsigned char>(s[pos]));
        chars.push_back(Value::Str(s.substr(pos, len)));
        pos += len;
      }
      return chars;
    }
    case Value::Kind::kLoop:
      return *v.loop().items;
    case Value::Kind::kIterator: {
      IteratorState& it = v.iterator();
      if (!it.error_type.empty()) Raise(it.error_type.c_str(), it.error_message);
      if (it.view) return it.items;
      List rest;
      rest.swap(it.items);  // a generator is used up
      return rest;
    }
    default:
      Raise("TypeError", "'" + TypeName(v) + "' object is not iterable");
  }
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string())
        Raise("TypeError", "'in <string>' requires string as left operand, not " + TypeName(item));
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (const Value& v : container.list())
        if (Equals(v, item)) return true;
      return false;
    case Value::Kind::kDict:
      if (!IsHashable(item)) Raise("TypeError", "unhashable type: '" + TypeName(item) + "'");
      return container.dict().Find(item) != nullptr;
    case Value::Kind::kLoop:
      for (const Value& v : *container.loop().items)
        if (Equals(v, item)) return true;
      return false;
    case Value::Kind::kIterator: {
      IteratorState& it = container.iterator();
      if (!it.error_type.empty()) Raise(it.error_type.c_str(), it.error_message);
      for (size_t i = 0; i < it.items.size(); ++i) {
        if (Equals(it.items[i], item)) {
          // A generator is consumed up to and including the match.
          if (!it.view) it.items.erase(it.items.begin(), it.items.begin() + static_cast<std::ptrdiff_t>(i) + 1);
          return true;
        }
      }
      if (!it.view) it.items.clear();
      return false;
    }
    default:
      Raise("TypeError", "argument of type '" + TypeName(container) + "' is not iterable");
  }
}

namespace {

[[noreturn]] void Unsupported(const char* op, const Value& a, const Value& b) {
  Raise("TypeError", std::string("unsupported operand type(s) for ") + op + ": '" + TypeName(a) + "' and '" +
                         TypeName(b) + "'");
}

[[noreturn]] void IntOverflow() {
  Raise("OverflowError", "integer overflow (this interpreter's integers have 64 bits, Python's are unbounded)");
}

Value Repeat(Interpreter& in, const Value& seq, int64_t times) {
  if (times <= 0) return seq.is_string() ? Value::Str("", seq.safe()) : seq.is_tuple() ? Value::MakeTuple({}) : Value::MakeList({});
  if (seq.is_string()) {
    const std::string& s = seq.str();
    if (!s.empty() && static_cast<uint64_t>(times) > in.limits().max_output_bytes / s.size())
      in.Charge(in.limits().max_output_bytes + 1);
    in.Charge(s.size() * static_cast<size_t>(times));
    std::string out;
    out.reserve(s.size() * static_cast<size_t>(times));
    for (int64_t i = 0; i < times; ++i) out += s;
    return Value::Str(std::move(out), seq.safe());
  }
  const List& items = seq.list();
  if (!items.empty() && static_cast<uint64_t>(times) > (in.limits().max_output_bytes / 8) / items.size())
    in.Charge(in.limits().max_output_bytes + 1);
  in.Step(items.size() * static_cast<size_t>(times) / 8);
  List out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), items.begin(), items.end());
  return seq.is_tuple() ? Value::MakeTuple(std::move(out)) : Value::MakeList(std::move(out));
}

// Python's float floor division and modulo (floatobject.c float_divmod).
void FloatDivMod(double vx, double wx, double* div_out, double* mod_out) {
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0) {
    if ((wx < 0) != (mod < 0)) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, wx);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, vx / wx);
  }
  *div_out = floordiv;
  *mod_out = mod;
}

}  // namespace

Value BinaryOp(Interpreter& in, BinOp op, const Value& a, const Value& b) {
  if (a.is_undefined()) RaiseUndefined(a);
  if (b.is_undefined()) RaiseUndefined(b);
  const bool ints = a.is_integral() && b.is_integral();
  const bool numbers = a.is_number() && b.is_number();
  switch (op) {
    case BinOp::kAdd: {
      if (ints) {
        int64_t r;
        if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) IntOverflow();
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.as_double() + b.as_double());
      if (a.is_string() && b.is_string()) {
        // markupsafe: adding to or onto a Markup string escapes the other side.
        const bool safe = a.safe() || b.safe();
        std::string left = a.safe() || !safe ? a.str() : HtmlEscape(a.str());
        const std::string& right_raw = b.str();
        in.Charge(left.size() + right_raw.size());
        if (safe && !b.safe()) {
          left += HtmlEscape(right_raw);
        } else {
          left += right_raw;
        }
        return Value::Str(std::move(left), safe);
      }
      if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
        List out = a.list();
        out.insert(out.end(), b.list().begin(), b.list().end());
        in.Step(out.size() / 8);
        return a.is_list() ? Value::MakeList(std::move(out)) : Value::MakeTuple(std::move(out));
      }
      if (a.is_string() && !a.safe()) Raise("TypeError", "can only concatenate str (not \"" + TypeName(b) + "\") to str");
      if (a.is_list()) Raise("TypeError", "can only concatenate list (not \"" + TypeName(b) + "\") to list");
      if (a.is_tuple()) Raise("TypeError", "can only concatenate tuple (not \"" + TypeName(b) + "\") to tuple");
      Unsupported("+", a, b);
    }
    case BinOp::kSub:
      if (ints) {
        int64_t r;
        if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) IntOverflow();
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.as_double() - b.as_double());
      Unsupported("-", a, b);
    case BinOp::kMul:
      if (ints) {
        int64_t r;
        if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) IntOverflow();
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.as_double() * b.as_double());
      if ((a.is_string() || a.is_sequence()) && b.is_integral()) return Repeat(in, a, b.as_int());
      if (a.is_integral() && (b.is_string() || b.is_sequence())) return Repeat(in, b, a.as_int());
      if ((a.is_string() || a.is_sequence()) && !b.is_integral())
        Raise("TypeError", "can't multiply sequence by non-int of type '" + TypeName(b) + "'");
      if ((b.is_string() || b.is_sequence()) && !a.is_integral())
        Raise("TypeError", "can't multiply sequence by non-int of type '" + TypeName(a) + "'");
      Unsupported("*", a, b);
    case BinOp::kDiv:
      if (numbers) {
        if (b.as_double() == 0) Raise("ZeroDivisionError", ints ? "division by zero" : "float division by zero");
        return Value::Float(a.as_double() / b.as_double());
      }
      Unsupported("/", a, b);
    case BinOp::kFloorDiv:
    case BinOp::kMod: {
      const bool floordiv = op == BinOp::kFloorDiv;
      if (ints) {
        const int64_t x = a.as_int(), y = b.as_int();
        if (y == 0) Raise("ZeroDivisionError", "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) {
          if (floordiv) IntOverflow();
          return Value::Int(0);
        }
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          q -= 1;
          r += y;
        }
        return Value::Int(floordiv ? q : r);
      }
      if (numbers) {
        if (b.as_double() == 0) Raise("ZeroDivisionError", floordiv ? "float floor division by zero" : "float modulo");
        double div, mod;
        FloatDivMod(a.as_double(), b.as_double(), &div, &mod);
        return Value::Float(floordiv ? div : mod);
      }
      if (!floordiv && a.is_string()) {
        Value args = b;
        if (a.safe()) {
          // Markup % args escapes the arguments.
          auto escape = [](const Value& v) { return v.is_string() && v.safe() ? v : Value::Str(HtmlEscape(SoftStr(v)), true); };
          if (b.is_tuple()) {
            List escaped;
            for (const Value& v : b.list()) escaped.push_back(escape(v));
            args = Value::MakeTuple(std::move(escaped));
          } else if (!b.is_dict()) {
            args = escape(b);
          }
        }
        return MakeStr(in, PercentFormat(in, a, args), a.safe());
      }
      Unsupported(floordiv ? "//" : "%", a, b);
    }
    case BinOp::kPow: {
      if (ints && b.as_int() >= 0) {
        int64_t base = a.as_int(), exp = b.as_int(), result = 1;
        while (exp > 0) {
          if (exp & 1)
            if (__builtin_mul_overflow(result, base, &result)) IntOverflow();
          exp >>= 1;
          // While bits remain, the highest one will use this square.
          if (exp > 0 && __builtin_mul_overflow(base, base, &base)) IntOverflow();
        }
        return Value::Int(result);
      }
      if (numbers) {
        const double x = a.as_double(), y = b.as_double();
        if (x == 0 && y < 0) Raise("ZeroDivisionError", "0.0 cannot be raised to a negative power");
        if (x < 0 && std::isfinite(y) && y != std::floor(y))
          Raise("ValueError", "a negative number to a fractional power has a complex result, which is not supported");
        const double r = std::pow(x, y);
        if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) Raise("OverflowError", "(34, 'Numerical result out of range')");
        return Value::Float(r);
      }
      Unsupported("** or pow()", a, b);
    }
  }
  return Value();
}

void AddGlobals(Interpreter& in, std::vector<std::pair<std::string, Value>>* globals) {
  (void)in;
  globals->emplace_back("range", MakeFunction("range", GRange));
  globals->emplace_back("dict", MakeFunction("dict", [](Interpreter& in2, CallArgs& args) {
                          in2.Step(args.keyword.size());
                          return Value::MakeDict(DictFromArgs("dict", args));
                        }));
  globals->emplace_back("namespace", MakeFunction("namespace", [](Interpreter& in2, CallArgs& args) {
                          Value ns = in2.NewNamespace();
                          ns.ns().attrs = *DictFromArgs("Namespace", args);
                          return ns;
                        }));
  globals->emplace_back("joiner", MakeFunction("joiner", [](Interpreter&, CallArgs& args) {
                          const BoundArgs b = Bind("joiner", {"sep"}, args);
                          const std::string sep = b.has(0) ? SoftStr(b[0]) : ", ";
                          auto used = std::make_shared<bool>(false);
                          return MakeFunction("joiner", [sep, used](Interpreter&, CallArgs&) {
                            if (!*used) {
                              *used = true;
                              return Value::Str("");
                            }
                            return Value::Str(sep);
                          });
                        }));
  // transformers: raise_exception(message) raises jinja2's TemplateError.
  globals->emplace_back("raise_exception", MakeFunction("raise_exception", [](Interpreter&, CallArgs& args) -> Value {
                          const BoundArgs b = Bind("raise_exception", {"message"}, args, 1);
                          Raise("TemplateError", SoftStr(b[0]));
                        }));
  // transformers: strftime_now(format) = datetime.now().strftime(format).
  globals->emplace_back("strftime_now", MakeFunction("strftime_now", [](Interpreter& in2, CallArgs& args) {
                          const BoundArgs b = Bind("strftime_now", {"format"}, args, 1);
                          return Value::Str(StrfTime(in2.now(), StrArg(b[0], "strftime")));
                        }));
}

}  // namespace epwa::jinja::internal
