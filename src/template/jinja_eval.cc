// The interpreter: executes the syntax tree with Jinja2's runtime semantics.
//
// Scoping follows what Jinja2's compiler produces, which differs from plain
// Python: every for-loop iteration, macro call, with block and block set
// runs in a fresh scope whose parent is the scope it appears in (macros: the
// scope they were defined in, looked up when called), so `{% set %}` inside
// them never changes a variable outside; `if` blocks share their scope.
// That is why templates carry state across iterations in namespace() objects.
#include <pthread.h>

#include <algorithm>

#include "template/jinja_internal.h"
#include "template/jinja_unicode.h"

namespace epwa::jinja {

TemplateError::TemplateError(int line, std::string type, std::string message, const std::string& name)
    : Error((name.empty() ? std::string() : name + ": ") +
            (line > 0 ? "template line " + std::to_string(line) + ": " : std::string()) + message),
      line_(line),
      type_(std::move(type)),
      message_(std::move(message)) {}

TemplateError TemplateError::WithName(const std::string& name) const {
  return TemplateError(line_, type_, message_, name);
}

namespace internal {

uintptr_t StackLimit(size_t reserve) {
  const uintptr_t here = FrameAddress();
  const uintptr_t fallback = here > (1u << 20) ? here - (1u << 20) : 0;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return fallback;
  void* addr = nullptr;
  size_t size = 0;
  const int rc = pthread_attr_getstack(&attr, &addr, &size);
  pthread_attr_destroy(&attr);
  const uintptr_t low = reinterpret_cast<uintptr_t>(addr);
  // Not on the stack the thread reports (e.g. an alternate signal stack):
  // allow a conservative 1 MiB from here.
  if (rc != 0 || here < low || here > low + size || here - low < 2 * reserve) return fallback;
  return low + reserve;
}

const Value* Scope::Find(std::string_view name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent.get())
    for (const auto& [key, value] : s->vars)
      if (key == name) return &value;
  return nullptr;
}

void Scope::Set(const std::string& name, Value value) {
  for (auto& [key, slot] : vars) {
    if (key == name) {
      slot = std::move(value);
      return;
    }
  }
  vars.emplace_back(name, std::move(value));
}

// Counts interpreter recursion (statements, expressions, macro calls) and
// checks the stack, so that deep templates fail instead of overflowing it.
class RecursionGuard {
 public:
  RecursionGuard(Interpreter* in, int line) : in_(in) {
    if (++in_->recursion_ > 16 * in_->limits_.max_nesting ||
        (in_->stack_limit_ != 0 && FrameAddress() < in_->stack_limit_)) {
      --in_->recursion_;
      throw TemplateError(line, "LimitError", "the template recurses too deeply (nested macro calls, blocks or expressions)");
    }
  }
  ~RecursionGuard() { --in_->recursion_; }

 private:
  Interpreter* in_;
};

// The error for a filter or test the parser left unresolved (see
// Parser::CheckUnresolved): Jinja2's own words for an unknown one, ours for
// one it has and this interpreter lacks.
std::string UnresolvedMessage(const Expr& e, const char* kind) {
  if (e.attr.rfind("unknown ", 0) == 0) return std::string("No ") + kind + " named '" + e.name + "' found.";
  return e.attr;
}

Interpreter::Interpreter(const Limits& limits, const std::tm& now) : limits_(limits), now_(now) {}

Interpreter::~Interpreter() {
  // Break the cycles a render may have made (see TrackScope): empty every
  // namespace and every scope a macro closed over while all of them are
  // still owned here, so no destructor chain runs deep.
  for (const auto& ns : tracked_namespaces_) {
    std::vector<std::pair<Value, Value>> items;
    items.swap(ns->attrs.items);
    ns->attrs.string_index.clear();
  }
  for (const auto& scope : tracked_scopes_) {
    std::vector<std::pair<std::string, Value>> vars;
    vars.swap(scope->vars);
  }
}

void Interpreter::StepLimitReached() {
  Raise("LimitError", "the template needed more than " + std::to_string(limits_.max_steps) +
                          " evaluation steps (an endless or huge loop?)");
}

void Interpreter::SizeLimitReached() {
  Raise("LimitError", "the template output or a string it builds exceeds " + std::to_string(limits_.max_output_bytes) +
                          " bytes");
}

Value Interpreter::NewNamespace() {
  auto ns = std::make_shared<Namespace>();
  tracked_namespaces_.push_back(ns);
  return Value::MakeNamespace(std::move(ns));
}

void Interpreter::Append(std::string* out, std::string_view text) {
  if (out->size() + text.size() > limits_.max_output_bytes) SizeLimitReached();
  Step(1 + text.size() / 64);
  out->append(text);
}

std::string Interpreter::Run(const Program& program, const Value& context) {
  stack_limit_ = StackLimit(256 << 10);
  globals_ = std::make_shared<Scope>();
  AddGlobals(*this, &globals_->vars);
  auto context_scope = std::make_shared<Scope>();
  context_scope->parent = globals_;
  if (context.is_dict()) {
    for (const auto& [key, value] : context.dict().items) context_scope->Set(Str(key), value);
  }
  auto root = std::make_shared<Scope>();
  root->parent = context_scope;
  std::string out;
  ExecBody(program.body, root, &out);
  return out;
}

Value Interpreter::Lookup(const std::string& name, const std::shared_ptr<Scope>& scope) {
  if (const Value* v = scope->Find(name)) return *v;
  return Value::Undefined("'" + name + "' is undefined");
}

Interpreter::Flow Interpreter::ExecBody(const Body& body, const std::shared_ptr<Scope>& scope, std::string* out) {
  for (const auto& stmt : body) {
    const Flow flow = Exec(*stmt, scope, out);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::Exec(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string* out) {
  RecursionGuard guard(this, s.line);
  try {
    Step();
    switch (s.type) {
      case StmtType::kText:
        Append(out, s.text);
        return Flow::kNormal;
      case StmtType::kPrint:
        for (const auto& e : s.exprs) {
          const Value v = Eval(*e, scope);
          if (v.is_string()) {
            Append(out, v.str());
          } else {
            Append(out, Str(v));
          }
        }
        return Flow::kNormal;
      case StmtType::kIf:
        if (Truthy(Eval(*s.expr, scope))) return ExecBody(s.body, scope, out);
        return ExecBody(s.else_body, scope, out);
      case StmtType::kFor:
        return ExecFor(s, scope, out);
      case StmtType::kSet:
        ExecSet(*s.target, Eval(*s.expr, scope), scope);
        return Flow::kNormal;
      case StmtType::kSetBlock: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        std::string text;
        const Flow flow = ExecBody(s.body, inner, &text);
        Value v = Value::Str(std::move(text));
        if (s.expr) v = EvalFilter(*s.expr, v, scope);
        ExecSet(*s.target, v, scope);
        return flow;
      }
      case StmtType::kMacro:
        DefineMacro(s, scope);
        return Flow::kNormal;
      case StmtType::kFilterBlock: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        std::string text;
        const Flow flow = ExecBody(s.body, inner, &text);
        const Value v = EvalFilter(*s.expr, Value::Str(std::move(text)), scope);
        Append(out, v.is_string() ? v.str() : Str(v));
        return flow;
      }
      case StmtType::kWith: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        for (size_t i = 0; i < s.targets.size(); ++i) ExecSet(*s.targets[i], Eval(*s.exprs[i], scope), inner);
        return ExecBody(s.body, inner, out);
      }
      case StmtType::kBreak:
        return Flow::kBreak;
      case StmtType::kContinue:
        return Flow::kContinue;
      case StmtType::kScope: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        return ExecBody(s.body, inner, out);
      }
    }
  } catch (const PyException& e) {
    throw TemplateError(s.line, e.type, e.message);
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::ExecFor(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string* out) {
  List items = Iterate(Eval(*s.expr, scope));
  Step(items.size() / 8);
  if (s.cond) {
    List kept;
    for (Value& item : items) {
      auto iteration = std::make_shared<Scope>();
      iteration->parent = scope;
      ExecSet(*s.target, item, iteration);
      if (Truthy(Eval(*s.cond, iteration))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    if (s.else_body.empty()) return Flow::kNormal;
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    return ExecBody(s.else_body, inner, out);
  }
  auto state = std::make_shared<LoopState>();
  state->items = std::make_shared<const List>(std::move(items));
  const Value loop = Value::MakeLoop(state);
  const size_t n = state->items->size();
  for (size_t i = 0; i < n; ++i) {
    state->index0 = i;
    auto iteration = std::make_shared<Scope>();
    iteration->parent = scope;
    iteration->vars.emplace_back("loop", loop);
    ExecSet(*s.target, (*state->items)[i], iteration);
    if (ExecBody(s.body, iteration, out) == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

void Interpreter::ExecSet(const Expr& target, const Value& value, const std::shared_ptr<Scope>& scope) {
  switch (target.type) {
    case ExprType::kName:
      scope->Set(target.name, value);
      return;
    case ExprType::kTuple: {
      if (value.is_undefined()) RaiseUndefined(value);
      const List items = Iterate(value);
      const size_t n = target.args.size();
      if (items.size() < n)
        Raise("ValueError", "not enough values to unpack (expected " + std::to_string(n) + ", got " +
                                std::to_string(items.size()) + ")");
      if (items.size() > n) Raise("ValueError", "too many values to unpack (expected " + std::to_string(n) + ")");
      for (size_t i = 0; i < n; ++i) ExecSet(*target.args[i], items[i], scope);
      return;
    }
    case ExprType::kNSRef: {
      const Value ns = Lookup(target.name, scope);
      if (!ns.is_namespace()) Raise("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
      ns.ns().attrs.Set(Value::Str(target.attr), value);
      return;
    }
    default:
      Raise("TemplateSyntaxError", "cannot assign to this expression");
  }
}

void Interpreter::DefineMacro(const Stmt& s, const std::shared_ptr<Scope>& scope) {
  auto fn = std::make_shared<Callable>();
  fn->name = s.name;
  fn->type_name = "Macro";
  const Stmt* macro = &s;
  std::shared_ptr<Scope> closure = scope;
  fn->fn = [macro, closure](Interpreter& in, CallArgs& args) { return in.CallMacro(*macro, closure, args); };
  TrackScope(scope);
  scope->Set(s.name, Value::MakeCallable(std::move(fn)));
}

// jinja2.runtime.Macro.__call__: positional arguments first, then keyword
// arguments for the remaining parameters, then defaults (evaluated in the
// macro's scope at call time); the rest goes to varargs/kwargs when the body
// reads them, and is an error otherwise.
Value Interpreter::CallMacro(const Stmt& m, const std::shared_ptr<Scope>& closure, CallArgs& args) {
  if (macro_depth_ >= limits_.max_nesting)
    Raise("LimitError", "macro calls nest more than " + std::to_string(limits_.max_nesting) + " levels deep");
  ++macro_depth_;
  struct Leave {
    int* depth;
    ~Leave() { --*depth; }
  } leave{&macro_depth_};
  const size_t n = m.params.size();
  const size_t positional = std::min(args.positional.size(), n);
  std::vector<Value> values(n);
  std::vector<bool> bound(n, false);
  for (size_t i = 0; i < positional; ++i) {
    values[i] = args.positional[i];
    bound[i] = true;
  }
  std::vector<std::pair<std::string, Value>> extra_kwargs;
  for (auto& [key, value] : args.keyword) {
    const auto it = std::find(m.params.begin() + static_cast<std::ptrdiff_t>(positional), m.params.end(), key);
    const size_t index = static_cast<size_t>(it - m.params.begin());
    if (it != m.params.end() && !bound[index]) {
      values[index] = value;
      bound[index] = true;
    } else {
      extra_kwargs.emplace_back(key, value);
    }
  }
  if (!m.uses_kwargs && !extra_kwargs.empty())
    Raise("TypeError", "macro '" + m.name + "' takes no keyword argument '" + extra_kwargs.front().first + "'");
  if (!m.uses_varargs && args.positional.size() > n)
    Raise("TypeError", "macro '" + m.name + "' takes not more than " + std::to_string(n) + " argument(s)");
  auto scope = std::make_shared<Scope>();
  scope->parent = closure;
  const size_t first_default = n - m.defaults.size();
  for (size_t i = 0; i < n; ++i) {
    if (bound[i]) {
      scope->Set(m.params[i], std::move(values[i]));
    } else if (i >= first_default) {
      scope->Set(m.params[i], Eval(*m.defaults[i - first_default], scope));
    } else {
      scope->Set(m.params[i], Value::Undefined("parameter '" + m.params[i] + "' was not provided"));
    }
  }
  if (m.uses_varargs) {
    List rest(args.positional.begin() + static_cast<std::ptrdiff_t>(positional), args.positional.end());
    scope->Set("varargs", Value::MakeTuple(std::move(rest)));
  }
  if (m.uses_kwargs) {
    auto dict = std::make_shared<Dict>();
    for (auto& [key, value] : extra_kwargs) dict->Set(Value::Str(key), std::move(value));
    scope->Set("kwargs", Value::MakeDict(std::move(dict)));
  }
  std::string text;
  ExecBody(m.body, scope, &text);
  return Value::Str(std::move(text));
}

Value Interpreter::Call(const Value& callee, CallArgs& args) {
  if (callee.is_callable()) return callee.callable().fn(*this, args);
  if (callee.is_undefined()) RaiseUndefined(callee);
  Raise("TypeError", "'" + TypeName(callee) + "' object is not callable");
}

Value Interpreter::CallFilter(const std::string& name, const Value& value, CallArgs& args) {
  std::string why_not;
  const FilterFn filter = FindFilter(name, &why_not);
  if (filter == nullptr) Raise("TemplateRuntimeError", why_not.empty() ? "No filter named '" + name + "'." : why_not);
  return filter(*this, value, args);
}

bool Interpreter::CallTest(const std::string& name, const Value& value, CallArgs& args) {
  std::string why_not;
  const TestFn test = FindTest(name, &why_not);
  if (test == nullptr) Raise("TemplateRuntimeError", why_not.empty() ? "No test named '" + name + "'." : why_not);
  return test(*this, value, args);
}

Value Interpreter::Eval(const Expr& e, const std::shared_ptr<Scope>& scope) {
  RecursionGuard guard(this, e.line);
  try {
    Step();
    return EvalImpl(e, scope);
  } catch (const PyException& ex) {
    throw TemplateError(e.line, ex.type, ex.message);
  }
}

void Interpreter::EvalArgs(const Expr& e, size_t first, const std::shared_ptr<Scope>& scope, CallArgs* args) {
  for (size_t i = first; i < e.args.size(); ++i) args->positional.push_back(Eval(*e.args[i], scope));
  for (const auto& [key, value] : e.kwargs) {
    for (const auto& [seen, unused] : args->keyword)
      if (seen == key) Raise("TypeError", "got multiple values for keyword argument '" + key + "'");
    args->keyword.emplace_back(key, Eval(*value, scope));
  }
}

// A filter node; in filter blocks and block sets the innermost filter's
// input (a null args[0]) is the rendered body, `input`.
Value Interpreter::EvalFilter(const Expr& e, const Value& input, const std::shared_ptr<Scope>& scope) {
  Value value;
  if (e.args[0] == nullptr) {
    value = input;
  } else if (e.args[0]->type == ExprType::kFilter && !input.is_undefined()) {
    value = EvalFilter(*e.args[0], input, scope);
  } else {
    value = Eval(*e.args[0], scope);
  }
  if (e.filter == nullptr) Raise("TemplateRuntimeError", UnresolvedMessage(e, "filter"));
  CallArgs args;
  EvalArgs(e, 1, scope, &args);
  return e.filter(*this, value, args);
}

Value Interpreter::EvalImpl(const Expr& e, const std::shared_ptr<Scope>& scope) {
  switch (e.type) {
    case ExprType::kConst:
      return e.constant;
    case ExprType::kName:
      return Lookup(e.name, scope);
    case ExprType::kGetattr:
      return GetAttr(*this, Eval(*e.args[0], scope), e.name);
    case ExprType::kGetitem: {
      const Value obj = Eval(*e.args[0], scope);
      const Expr& key = *e.args[1];
      if (key.type == ExprType::kSlice) {
        Value parts[3] = {Value::None(), Value::None(), Value::None()};
        for (int i = 0; i < 3; ++i)
          if (key.args[i]) parts[i] = Eval(*key.args[i], scope);
        return Slice(*this, obj, parts[0], parts[1], parts[2]);
      }
      return GetItem(*this, obj, Eval(key, scope));
    }
    case ExprType::kSlice:
      Raise("TypeError", "a slice can only be used as a subscript");
    case ExprType::kList:
    case ExprType::kTuple: {
      List items;
      items.reserve(e.args.size());
      for (const auto& a : e.args) items.push_back(Eval(*a, scope));
      return e.type == ExprType::kList ? Value::MakeList(std::move(items)) : Value::MakeTuple(std::move(items));
    }
    case ExprType::kDict: {
      auto dict = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        const Value key = Eval(*e.args[i], scope);
        Value value = Eval(*e.args[i + 1], scope);
        if (!IsHashable(key)) Raise("TypeError", "unhashable type: '" + TypeName(key) + "'");
        dict->Set(key, std::move(value));
      }
      return Value::MakeDict(std::move(dict));
    }
    case ExprType::kBinOp: {
      const Value a = Eval(*e.args[0], scope);
      const Value b = Eval(*e.args[1], scope);
      return BinaryOp(*this, e.binop, a, b);
    }
    case ExprType::kConcat: {
      std::string text;
      for (const auto& a : e.args) {
        const Value v = Eval(*a, scope);
        text += v.is_string() ? v.str() : Str(v);
        Charge(text.size());
      }
      return Value::Str(std::move(text));
    }
    case ExprType::kCompare: {
      Value left = Eval(*e.args[0], scope);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = Eval(*e.args[i + 1], scope);
        bool result;
        switch (e.ops[i]) {
          case CmpOp::kEq: result = Equals(left, right); break;
          case CmpOp::kNe: result = !Equals(left, right); break;
          case CmpOp::kLt: result = Ordered(left, right, "<"); break;
          case CmpOp::kLe: result = Ordered(left, right, "<="); break;
          case CmpOp::kGt: result = Ordered(left, right, ">"); break;
          case CmpOp::kGe: result = Ordered(left, right, ">="); break;
          case CmpOp::kIn: result = Contains(right, left); break;
          case CmpOp::kNotIn: result = !Contains(right, left); break;
        }
        if (!result) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case ExprType::kAnd: {
      Value left = Eval(*e.args[0], scope);
      if (!Truthy(left)) return left;
      return Eval(*e.args[1], scope);
    }
    case ExprType::kOr: {
      Value left = Eval(*e.args[0], scope);
      if (Truthy(left)) return left;
      return Eval(*e.args[1], scope);
    }
    case ExprType::kNot:
      return Value::Bool(!Truthy(Eval(*e.args[0], scope)));
    case ExprType::kNeg:
    case ExprType::kPos: {
      const Value v = Eval(*e.args[0], scope);
      const bool neg = e.type == ExprType::kNeg;
      if (v.is_float()) return Value::Float(neg ? -v.as_double() : v.as_double());
      if (v.is_integral()) {
        if (!neg) return Value::Int(v.as_int());
        if (v.as_int() == INT64_MIN) Raise("OverflowError", "integer overflow (this interpreter's integers have 64 bits)");
        return Value::Int(-v.as_int());
      }
      if (v.is_undefined()) RaiseUndefined(v);
      Raise("TypeError", std::string("bad operand type for unary ") + (neg ? "-" : "+") + ": '" + TypeName(v) + "'");
    }
    case ExprType::kCond:
      if (Truthy(Eval(*e.args[0], scope))) return Eval(*e.args[1], scope);
      if (e.args[2]) return Eval(*e.args[2], scope);
      return Value::Undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    case ExprType::kFilter:
      return EvalFilter(e, Value(), scope);
    case ExprType::kTest: {
      if (e.test == nullptr) Raise("TemplateRuntimeError", UnresolvedMessage(e, "test"));
      const Value value = Eval(*e.args[0], scope);
      CallArgs args;
      EvalArgs(e, 1, scope, &args);
      return Value::Bool(e.test(*this, value, args));
    }
    case ExprType::kCall: {
      const Value callee = Eval(*e.args[0], scope);
      CallArgs args;
      EvalArgs(e, 1, scope, &args);
      return Call(callee, args);
    }
    case ExprType::kNSRef:
      Raise("TemplateSyntaxError", "a namespace attribute reference can only be assigned to");
  }
  return Value();
}

}  // namespace internal

namespace {

std::tm LocalNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  return tm;
}

}  // namespace

Template Template::Parse(std::string_view source, const std::string& name, const Limits& limits) {
  try {
    if (const size_t bad = unicode::FirstInvalidUtf8(source); bad != source.size()) {
      const int line = 1 + static_cast<int>(std::count(source.begin(), source.begin() + static_cast<std::ptrdiff_t>(bad), '\n'));
      throw TemplateError(line, "TemplateSyntaxError", "the template is not valid UTF-8");
    }
    const std::string normalized = internal::NormalizeNewlines(source);
    const std::vector<internal::Token> tokens = internal::Tokenize(normalized);
    auto program = std::make_shared<internal::Program>();
    program->name = name;
    program->body = internal::Parse(tokens, limits);
    Template t;
    t.program_ = std::move(program);
    return t;
  } catch (const TemplateError& e) {
    if (name.empty()) throw;
    throw e.WithName(name);
  }
}

std::string Template::Render(const nlohmann::ordered_json& context, const RenderOptions& options) const {
  const std::string& template_name = program_->name;
  try {
    if (!context.is_object()) throw TemplateError(0, "TypeError", "the template context must be a JSON object");
    internal::Interpreter interpreter(options.limits, options.now ? *options.now : LocalNow());
    Value values;
    try {
      values = FromJson(context);
    } catch (const PyException& e) {
      throw TemplateError(0, e.type, "the template context: " + e.message);
    }
    return interpreter.Run(*program_, values);
  } catch (const TemplateError& e) {
    if (template_name.empty()) throw;
    throw e.WithName(template_name);
  }
}

const std::string& Template::name() const { return program_->name; }

}  // namespace epwa::jinja
