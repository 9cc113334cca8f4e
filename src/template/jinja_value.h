// The values a Jinja template computes with, and the Python semantics they
// follow (truthiness, equality, str() and repr(), json.dumps()).
//
// A Value is JSON's kinds (none, bool, int, float, string, list, dict) plus
// what Jinja2 adds on top of Python: `undefined` (a missing variable or
// attribute, which prints as nothing and is falsy but fails when used), the
// tuple (which prints differently from a list), the namespace() object
// (the only thing a template can mutate), the loop object, and callables
// (macros, globals such as range(), and bound methods such as str.split).
// Strings carry Jinja's "safe" (markupsafe.Markup) flag, because `+` with a
// Markup string HTML-escapes the other operand even with autoescaping off.
//
// Values are cheap to copy: everything bigger than a number is shared and
// immutable, except lists (Python's list.pop() is allowed in the sandbox and
// mutates in place, visible through every reference) and namespaces.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace epwa::jinja {

namespace internal {
class Interpreter;
}
using internal::Interpreter;
class Value;
using List = std::vector<Value>;
struct Dict;
struct Namespace;
struct LoopState;
struct Callable;
struct IteratorState;

// Why a value is undefined: the message Jinja2's UndefinedError carries when
// the value is used ("'dict object' has no attribute 'content'"), and
// whether using it is a sandbox violation (SecurityError) instead.
struct UndefinedInfo {
  std::string hint;
  bool security = false;
};

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kTuple,
    kDict,
    kNamespace,
    kLoop,
    kCallable,
    kIterator,
  };

  Value() = default;  // undefined, with no hint
  static Value Undefined(std::string hint, bool security = false);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value Str(std::string s, bool safe = false);
  static Value MakeList(List items);
  static Value MakeTuple(List items);
  static Value MakeDict(std::shared_ptr<Dict> dict);
  static Value MakeNamespace(std::shared_ptr<Namespace> ns);
  static Value MakeLoop(std::shared_ptr<LoopState> loop);
  static Value MakeCallable(std::shared_ptr<Callable> fn);
  // A Python iterator (`type_name` "generator", "list_reverseiterator", ...)
  // or, with `view`, a dict view ("dict_items", "dict_keys", "dict_values").
  static Value MakeIterator(List items, std::string type_name, bool view = false);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // Python's numbers: bool is an int subclass.
  bool is_integral() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }
  bool is_number() const { return is_integral() || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_loop() const { return kind_ == Kind::kLoop; }
  bool is_callable() const { return kind_ == Kind::kCallable; }
  bool is_iterator() const { return kind_ == Kind::kIterator; }

  bool as_bool() const { return b_; }
  // The integer value of an int or a bool.
  int64_t as_int() const { return kind_ == Kind::kBool ? static_cast<int64_t>(b_) : i_; }
  // The numeric value of any number.
  double as_double() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& str() const { return *static_cast<const std::string*>(ptr_.get()); }
  bool safe() const { return safe_; }
  List& list() const { return *static_cast<List*>(ptr_.get()); }
  Dict& dict() const { return *static_cast<Dict*>(ptr_.get()); }
  Namespace& ns() const { return *static_cast<Namespace*>(ptr_.get()); }
  LoopState& loop() const { return *static_cast<LoopState*>(ptr_.get()); }
  Callable& callable() const { return *static_cast<Callable*>(ptr_.get()); }
  IteratorState& iterator() const { return *static_cast<IteratorState*>(ptr_.get()); }
  const UndefinedInfo* undefined_info() const {
    return static_cast<const UndefinedInfo*>(ptr_.get());
  }
  const std::shared_ptr<void>& shared() const { return ptr_; }
  // Nesting depth of lists, tuples and dicts (1 for anything else), kept so
  // that no template can build a structure deep enough for the recursive
  // printers, comparisons and destructors to exhaust the stack.
  int depth() const { return depth_; }

 private:
  Kind kind_ = Kind::kUndefined;
  bool safe_ = false;
  uint16_t depth_ = 1;
  union {
    bool b_;
    int64_t i_ = 0;
    double f_;
  };
  std::shared_ptr<void> ptr_;
};

// A Python dict: insertion-ordered, keys compared with Python equality
// (1, 1.0 and True are the same key). String keys, by far the most common,
// also have a hash index.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::unordered_map<std::string, size_t> string_index;

  // The value for `key`, or nullptr.
  const Value* Find(const Value& key) const;
  const Value* FindString(std::string_view key) const;
  // Inserts or replaces. `key` must be hashable (see IsHashable).
  void Set(const Value& key, Value value);
  size_t size() const { return items.size(); }
};

// jinja2.utils.Namespace: attribute storage that `{% set ns.x = ... %}` may
// change from inside loops and macros.
struct Namespace {
  Dict attrs;
};

// The `loop` variable of a for loop. `items` is the whole (filtered)
// sequence, which Jinja2 also materialises to know loop.length.
struct LoopState {
  std::shared_ptr<const List> items;
  size_t index0 = 0;
  int depth = 1;
  bool has_last_changed = false;
  List last_changed;
};

// The deepest nesting of containers a value may have.
inline constexpr int kMaxValueDepth = 500;

// What Jinja2's filters map, select, reject, selectattr, rejectattr, unique,
// items and reverse return, and what dict.items()/keys()/values() return:
// not lists. A generator is always true, has no len(), cannot be indexed or
// serialised, and is used up by the first loop over it; a dict view has a
// length and can be iterated again. Templates see these differences (e.g.
// `{% if x|select(...) %}` is always true), so they are kept.
struct IteratorState {
  List items;  // what is left to iterate
  std::string type_name;
  bool view = false;
  // A generator raises its error when iterated, not when made.
  std::string error_type, error_message;
  // The generator function's name, for printing it.
  std::string function;
  // range(start, stop, step): a view of type "range", shown as Python does.
  int64_t range_start = 0, range_stop = 0, range_step = 1;
};

// Arguments of a call: positional, then keyword in source order.
struct CallArgs {
  List positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Anything callable from a template: a macro, a global function or a bound
// method. `type_name` is the Python type name used in messages.
struct Callable {
  std::string name;
  std::string type_name;
  std::function<Value(Interpreter&, CallArgs&)> fn;
};

// An exception raised while evaluating, named by its Python type
// ("TypeError", "UndefinedError", ...). The interpreter adds the template
// line and turns it into a TemplateError.
struct PyException {
  std::string type;
  std::string message;
};
[[noreturn]] void Raise(const char* type, std::string message);
// The UndefinedError (or SecurityError) that using `undefined` raises.
[[noreturn]] void RaiseUndefined(const Value& undefined);

// Python's type(x).__name__ ("str", "NoneType", "list", ...).
std::string TypeName(const Value& v);
// Jinja2's object_type_repr(), used in undefined hints ("dict object", "None").
std::string ObjectTypeRepr(const Value& v);

bool Truthy(const Value& v);
// Python ==, which never raises.
bool Equals(const Value& a, const Value& b);
bool IsHashable(const Value& v);
// Python's ordering comparisons: `op` is "<", "<=", ">" or ">=". Raises
// TypeError for types without an order between them, as Python does.
bool Ordered(const Value& a, const Value& b, std::string_view op);

// Python str() and repr().
std::string Str(const Value& v);
std::string Repr(const Value& v);
std::string ReprString(std::string_view s);
std::string FloatRepr(double d);

// The values JSON input becomes, as Python's json.load would give them.
// `max_depth` guards against stack exhaustion on nested input.
Value FromJson(const nlohmann::ordered_json& j, int max_depth = 512);

// Python's json.dumps(value, ensure_ascii=..., indent=..., separators=...,
// sort_keys=...), as transformers' tojson filter calls it. `indent` is the
// text of one level (Python accepts an int or a string), used when
// `has_indent`.
struct JsonDumpOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;
  bool has_separators = false;
  std::string item_separator, key_separator;
  bool sort_keys = false;
};
std::string JsonDumps(const Value& v, const JsonDumpOptions& options);

// Strings: Python indexing and slicing count code points.
size_t StrLength(const Value& s);

// markupsafe.escape() of the text.
std::string HtmlEscape(std::string_view s);

}  // namespace epwa::jinja
