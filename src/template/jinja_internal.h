// Internals of the Jinja interpreter shared by its source files: tokens, the
// syntax tree, the interpreter and the builtin filters, tests and methods.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "template/jinja.h"
#include "template/jinja_value.h"

namespace epwa::jinja::internal {

// ---------------------------------------------------------------------------
// Lexer (jinja_lexer.cc), a port of jinja2.lexer.Lexer's rules.

enum class Tok : uint8_t {
  kData,
  kVariableBegin,
  kVariableEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEof,
};

struct Token {
  Tok type;
  int line;
  std::string text;  // data, name, operator, or the decoded string literal
  int64_t int_value = 0;
  double float_value = 0;
};

// Jinja2 reads templates with universal newlines and drops one trailing
// newline (keep_trailing_newline=False); this is that step.
std::string NormalizeNewlines(std::string_view source);
// Tokens of a normalized source, ending with kEof. Throws TemplateError.
std::vector<Token> Tokenize(std::string_view source);

// ---------------------------------------------------------------------------
// Syntax tree (built by jinja_parser.cc).

enum class ExprType : uint8_t {
  kConst,
  kName,
  kGetattr,  // args[0].name
  kGetitem,  // args[0][args[1]]
  kSlice,    // args[0]:args[1]:args[2], each possibly null
  kList,
  kTuple,
  kDict,     // args: key0, value0, key1, value1, ...
  kBinOp,    // args[0] binop args[1]
  kConcat,   // args joined with ~
  kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...
  kAnd,
  kOr,
  kNot,
  kNeg,
  kPos,
  kCond,     // args[1] if args[0] else args[2] (args[2] may be null)
  kFilter,   // name(args[0], args[1:]..., kwargs); args[0] null in filter blocks
  kTest,     // name(args[0], args[1:]..., kwargs)
  kCall,     // args[0](args[1:]..., kwargs)
  kNSRef,    // name.attr as an assignment target
};

enum class BinOp : uint8_t { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow };
enum class CmpOp : uint8_t { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
using FilterFn = Value (*)(Interpreter& in, const Value& value, CallArgs& args);
using TestFn = bool (*)(Interpreter& in, const Value& value, CallArgs& args);

struct Expr {
  ExprType type;
  int line = 0;
  int depth = 1;  // of the tree below, bounded by Limits::max_nesting
  BinOp binop = BinOp::kAdd;
  Value constant;
  std::string name;
  std::string attr;
  std::vector<ExprPtr> args;
  std::vector<CmpOp> ops;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  FilterFn filter = nullptr;  // resolved when parsing
  TestFn test = nullptr;
};

enum class StmtType : uint8_t {
  kText,
  kPrint,        // exprs
  kIf,           // expr, body, else_body (elif is a nested kIf in else_body)
  kFor,          // target in expr [if cond]: body, else_body
  kSet,          // target = expr
  kSetBlock,     // target = body [| filter expr]
  kMacro,
  kFilterBlock,  // body through the filter chain in expr
  kWith,         // targets = exprs: body
  kBreak,
  kContinue,
  kScope,        // body in its own scope ({% generation %})
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtType type;
  int line = 0;
  std::string text;
  ExprPtr expr, target, cond;
  std::vector<ExprPtr> exprs, targets;
  Body body, else_body;
  // Macros.
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  bool uses_varargs = false, uses_kwargs = false;
};

struct Program {
  std::string name;
  Body body;
};

// Parses the tokens. Throws TemplateError.
Body Parse(const std::vector<Token>& tokens, const Limits& limits);

// ---------------------------------------------------------------------------
// Builtins (jinja_builtins.cc).

// The filter or test called `name`, or nullptr. `why_not` explains a name
// that Jinja2 has but this interpreter does not.
FilterFn FindFilter(std::string_view name, std::string* why_not);
TestFn FindTest(std::string_view name, std::string* why_not);

// Jinja2's environment.getattr(obj, name) and getitem(obj, key) in the
// immutable sandbox: a missing attribute or item is an undefined value
// saying what was missing; using an undefined `obj` raises.
Value GetAttr(Interpreter& in, const Value& obj, const std::string& name);
Value GetItem(Interpreter& in, const Value& obj, const Value& key);
Value Slice(Interpreter& in, const Value& obj, const Value& start, const Value& stop, const Value& step);

// The global functions: range, dict, namespace, joiner, raise_exception and
// strftime_now.
void AddGlobals(Interpreter& in, std::vector<std::pair<std::string, Value>>* globals);

// Binary operators with Python semantics.
Value BinaryOp(Interpreter& in, BinOp op, const Value& a, const Value& b);
bool Contains(const Value& container, const Value& item);
// The items a for loop (or list(), join, ...) visits.
List Iterate(const Value& v);

// Binds call arguments to a builtin's Python signature. `names` lists the
// parameters after the value; the first `required` must be given.
struct BoundArgs {
  std::vector<Value> values;
  std::vector<bool> given;
  bool has(size_t i) const { return given[i]; }
  const Value& operator[](size_t i) const { return values[i]; }
};
BoundArgs Bind(const char* function, std::initializer_list<const char*> names, CallArgs& args,
               size_t required = 0);

// ---------------------------------------------------------------------------
// The interpreter (jinja_eval.cc).

struct Scope {
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* Find(std::string_view name) const;
  void Set(const std::string& name, Value value);
};

class Interpreter {
 public:
  Interpreter(const Limits& limits, const std::tm& now);
  ~Interpreter();
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  std::string Run(const Program& program, const Value& context);

  // Counts work; throws a LimitError past Limits::max_steps.
  void Step(uint64_t n = 1) {
    steps_ += n;
    if (steps_ > limits_.max_steps) StepLimitReached();
  }
  // Counts the work of building `bytes` bytes and checks the size of any one
  // string against Limits::max_output_bytes.
  void Charge(size_t bytes) {
    if (bytes > limits_.max_output_bytes) SizeLimitReached();
    Step(1 + bytes / 64);
  }
  const Limits& limits() const { return limits_; }
  const std::tm& now() const { return now_; }

  Value Call(const Value& callee, CallArgs& args);
  Value CallFilter(const std::string& name, const Value& value, CallArgs& args);
  bool CallTest(const std::string& name, const Value& value, CallArgs& args);

  // Namespaces and macro closures are tracked so that reference cycles
  // between them (a namespace holding itself, a macro stored in the scope it
  // closes over) are broken when the render ends.
  Value NewNamespace();
  void TrackScope(const std::shared_ptr<Scope>& scope) { tracked_scopes_.push_back(scope); }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  Flow ExecBody(const Body& body, const std::shared_ptr<Scope>& scope, std::string* out);
  Flow Exec(const Stmt& stmt, const std::shared_ptr<Scope>& scope, std::string* out);
  Flow ExecFor(const Stmt& stmt, const std::shared_ptr<Scope>& scope, std::string* out);
  void ExecSet(const Expr& target, const Value& value, const std::shared_ptr<Scope>& scope);
  void DefineMacro(const Stmt& stmt, const std::shared_ptr<Scope>& scope);
  Value CallMacro(const Stmt& macro, const std::shared_ptr<Scope>& closure, CallArgs& args);
  Value Eval(const Expr& expr, const std::shared_ptr<Scope>& scope);
  Value EvalImpl(const Expr& expr, const std::shared_ptr<Scope>& scope);
  Value EvalFilter(const Expr& expr, const Value& input, const std::shared_ptr<Scope>& scope);
  void EvalArgs(const Expr& expr, size_t first, const std::shared_ptr<Scope>& scope, CallArgs* args);
  Value Lookup(const std::string& name, const std::shared_ptr<Scope>& scope);
  void Append(std::string* out, std::string_view text);
  [[noreturn]] void StepLimitReached();
  [[noreturn]] void SizeLimitReached();
  void EnterNesting(int line);
  void CheckStack(int line);

  Limits limits_;
  std::tm now_;
  uint64_t steps_ = 0;
  int macro_depth_ = 0;
  int recursion_ = 0;
  uintptr_t stack_limit_ = 0;  // lowest frame address allowed
  std::shared_ptr<Scope> globals_;
  std::vector<std::shared_ptr<Namespace>> tracked_namespaces_;
  std::vector<std::shared_ptr<Scope>> tracked_scopes_;

  friend class RecursionGuard;
};

// Lowest address the current thread's stack may grow to, leaving `reserve`
// bytes unused; 0 when unknown.
uintptr_t StackLimit(size_t reserve);
inline uintptr_t FrameAddress() { return reinterpret_cast<uintptr_t>(__builtin_frame_address(0)); }

}  // namespace epwa::jinja::internal
