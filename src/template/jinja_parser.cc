// The parser: jinja2.parser.Parser's grammar, function for function, so that
// precedence and the odd corners (filters binding tighter than unary minus,
// left-associative **, tests taking one bare argument) match.
#include <algorithm>

#include "template/jinja_internal.h"

namespace epwa::jinja::internal {
namespace {

// Tags this parser knows but refuses, with the reason.
const char* UnsupportedTag(std::string_view name) {
  if (name == "extends" || name == "include" || name == "import" || name == "from" || name == "block")
    return "template inheritance and inclusion are not supported (a chat template is one string)";
  if (name == "call") return "call blocks are not supported";
  if (name == "autoescape") return "autoescape blocks are not supported";
  if (name == "do") return nullptr;  // not enabled by transformers: an unknown tag, as in Jinja2
  return nullptr;
}

std::string DescribeToken(const Token& t) {
  switch (t.type) {
    case Tok::kName:
    case Tok::kOperator:
      return t.text;
    case Tok::kString: return "string";
    case Tok::kInteger: return "integer";
    case Tok::kFloat: return "float";
    case Tok::kData: return "template data / text";
    case Tok::kBlockBegin: return "begin of statement block";
    case Tok::kBlockEnd: return "end of statement block";
    case Tok::kVariableBegin: return "begin of print statement";
    case Tok::kVariableEnd: return "end of print statement";
    case Tok::kEof: return "end of template";
  }
  return "token";
}

// Whether the expression tree below `e` reads the variable `name`.
bool ReadsName(const Expr* e, std::string_view name) {
  if (e == nullptr) return false;
  if (e->type == ExprType::kName && e->name == name) return true;
  for (const auto& a : e->args)
    if (ReadsName(a.get(), name)) return true;
  for (const auto& [key, value] : e->kwargs)
    if (ReadsName(value.get(), name)) return true;
  return false;
}

bool BodyReadsName(const Body& body, std::string_view name) {
  for (const auto& s : body) {
    if (ReadsName(s->expr.get(), name) || ReadsName(s->cond.get(), name)) return true;
    for (const auto& e : s->exprs)
      if (ReadsName(e.get(), name)) return true;
    for (const auto& e : s->defaults)
      if (ReadsName(e.get(), name)) return true;
    if (BodyReadsName(s->body, name) || BodyReadsName(s->else_body, name)) return true;
  }
  return false;
}

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, const Limits& limits)
      : toks_(tokens), limits_(limits), stack_limit_(StackLimit(256 << 10)) {}

  Body ParseTemplate() {
    Body body = Subparse(nullptr);
    CheckUnresolved(body, false);
    return body;
  }

 private:
  using EndTokens = std::vector<std::string_view>;

  // Nesting guard: blocks and expressions may nest Limits::max_nesting deep,
  // and never deeper than the stack allows.
  class Nest {
   public:
    Nest(Parser* p, int line) : p_(p) {
      if (++p_->nesting_ > p_->limits_.max_nesting ||
          (p_->stack_limit_ != 0 && FrameAddress() < p_->stack_limit_)) {
        throw TemplateError(line, "LimitError",
                            "the template nests blocks or expressions more than " +
                                std::to_string(p_->limits_.max_nesting) + " levels deep");
      }
    }
    ~Nest() { --p_->nesting_; }

   private:
    Parser* p_;
  };

  const Token& Cur() const { return toks_[i_]; }
  const Token& Look() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  const Token& Next() {
    const Token& t = toks_[i_];
    if (i_ + 1 < toks_.size()) ++i_;
    return t;
  }
  bool IsOp(std::string_view op) const { return Cur().type == Tok::kOperator && Cur().text == op; }
  bool IsName(std::string_view name) const { return Cur().type == Tok::kName && Cur().text == name; }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }

  [[noreturn]] void Fail(const std::string& message, int line) {
    throw TemplateError(line, "TemplateSyntaxError", message);
  }
  [[noreturn]] void FailExpected(const std::string& what) {
    if (Cur().type == Tok::kEof) Fail("unexpected end of template, expected '" + what + "'.", Cur().line);
    Fail("expected token '" + what + "', got '" + DescribeToken(Cur()) + "'", Cur().line);
  }
  const Token& ExpectOp(std::string_view op) {
    if (!IsOp(op)) FailExpected(std::string(op));
    return Next();
  }
  const Token& ExpectName(std::string_view name) {
    if (!IsName(name)) FailExpected(std::string(name));
    return Next();
  }
  const Token& ExpectAnyName() {
    if (Cur().type != Tok::kName) FailExpected("name");
    return Next();
  }
  void Expect(Tok type, const char* what) {
    if (Cur().type != type) FailExpected(what);
    Next();
  }

  // jinja2's _fail_ut_eof: the message for an unknown tag or the end of the
  // template inside a block.
  [[noreturn]] void FailUnknownTag(const std::string* name, int line) {
    std::string message = name ? "Encountered unknown tag '" + *name + "'." : "Unexpected end of template.";
    if (!end_token_stack_.empty()) {
      std::string looking;
      bool expected = false;
      for (const EndTokens* ends : end_token_stack_)
        for (std::string_view e : *ends)
          if (name && e == *name) expected = true;
      for (std::string_view e : *end_token_stack_.back())
        looking += (looking.empty() ? "'" : " or '") + std::string(e) + "'";
      if (expected) {
        message += " You probably made a nesting mistake. Jinja is expecting this tag, but currently looking for " +
                   looking + ".";
      } else {
        message += " Jinja was looking for the following tags: " + looking + ".";
      }
    }
    if (!tag_stack_.empty()) message += " The innermost block that needs to be closed is '" + tag_stack_.back() + "'.";
    Fail(message, line);
  }

  ExprPtr Make(ExprType type, int line) {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->line = line;
    return e;
  }
  // Computes the depth of a finished node from its children.
  ExprPtr Done(ExprPtr e) {
    int depth = 0;
    for (const auto& a : e->args)
      if (a) depth = std::max(depth, a->depth);
    for (const auto& [k, v] : e->kwargs) depth = std::max(depth, v->depth);
    e->depth = depth + 1;
    if (e->depth > limits_.max_nesting)
      throw TemplateError(e->line, "LimitError",
                          "an expression nests more than " + std::to_string(limits_.max_nesting) + " levels deep");
    return e;
  }
  ExprPtr Unary(ExprType type, int line, ExprPtr operand) {
    ExprPtr e = Make(type, line);
    e->args.push_back(std::move(operand));
    return Done(std::move(e));
  }
  ExprPtr Binary(ExprType type, int line, ExprPtr a, ExprPtr b) {
    ExprPtr e = Make(type, line);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return Done(std::move(e));
  }

  // Jinja2 fails at compile time on a filter or test it does not know,
  // unless the reference sits in a "soft" frame: the test and bodies of an
  // if statement, or a conditional expression. Loops, macros and blocks
  // inside those open frames of their own, which are not soft.
  void CheckUnresolved(const Expr* e, bool soft) {
    if (e == nullptr) return;
    if (e->type == ExprType::kCond) soft = true;
    if (!soft && ((e->type == ExprType::kFilter && e->filter == nullptr) ||
                  (e->type == ExprType::kTest && e->test == nullptr)))
      Fail(e->attr, e->line);
    for (const auto& a : e->args) CheckUnresolved(a.get(), soft);
    for (const auto& [k, v] : e->kwargs) CheckUnresolved(v.get(), soft);
  }

  void CheckUnresolved(const Body& body, bool soft) {
    for (const auto& s : body) {
      switch (s->type) {
        case StmtType::kIf:
          CheckUnresolved(s->expr.get(), true);
          CheckUnresolved(s->body, true);
          CheckUnresolved(s->else_body, true);
          break;
        case StmtType::kFor:
          CheckUnresolved(s->expr.get(), soft);
          CheckUnresolved(s->cond.get(), false);
          CheckUnresolved(s->body, false);
          CheckUnresolved(s->else_body, false);
          break;
        case StmtType::kSet:
        case StmtType::kPrint:
        case StmtType::kWith:
          CheckUnresolved(s->expr.get(), soft);
          for (const auto& e : s->exprs) CheckUnresolved(e.get(), soft);
          CheckUnresolved(s->body, false);
          break;
        default:
          CheckUnresolved(s->expr.get(), false);
          for (const auto& e : s->defaults) CheckUnresolved(e.get(), false);
          CheckUnresolved(s->body, false);
          CheckUnresolved(s->else_body, false);
          break;
      }
    }
  }

  // ---- Templates and statements.

  Body Subparse(const EndTokens* end_tokens) {
    Body body;
    if (end_tokens) end_token_stack_.push_back(end_tokens);
    while (Cur().type != Tok::kEof) {
      const Token& t = Cur();
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->type = StmtType::kText;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        Next();
      } else if (t.type == Tok::kVariableBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->type = StmtType::kPrint;
        s->line = Cur().line;
        s->exprs.push_back(ParseTuple(false, true, nullptr, false));
        Expect(Tok::kVariableEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        Next();
        if (end_tokens && Cur().type == Tok::kName &&
            std::find(end_tokens->begin(), end_tokens->end(), Cur().text) != end_tokens->end()) {
          end_token_stack_.pop_back();
          return body;
        }
        body.push_back(ParseStatement());
        Expect(Tok::kBlockEnd, "end of statement block");
      } else {
        Fail("unexpected '" + DescribeToken(t) + "'", t.line);
      }
    }
    if (end_tokens) end_token_stack_.pop_back();
    return body;
  }

  // parse_statements: an optional colon, the end of the opening tag, the
  // body up to one of `end_tokens` (left as the current token unless
  // drop_needle).
  Body ParseStatements(const EndTokens& end_tokens, bool drop_needle) {
    SkipOp(":");
    Expect(Tok::kBlockEnd, "end of statement block");
    Body body = Subparse(&end_tokens);
    if (Cur().type == Tok::kEof) {
      end_token_stack_.push_back(&end_tokens);
      FailUnknownTag(nullptr, Cur().line);
    }
    if (drop_needle) Next();
    return body;
  }

  StmtPtr ParseStatement() {
    const Token& t = Cur();
    if (t.type != Tok::kName) Fail("tag name expected", t.line);
    Nest nest(this, t.line);
    const std::string name = t.text;
    const int line = t.line;
    tag_stack_.push_back(name);
    StmtPtr s;
    if (name == "if") {
      s = ParseIf();
    } else if (name == "for") {
      s = ParseFor();
    } else if (name == "set") {
      s = ParseSet();
    } else if (name == "macro") {
      s = ParseMacro();
    } else if (name == "filter") {
      s = ParseFilterBlock();
    } else if (name == "with") {
      s = ParseWith();
    } else if (name == "print") {
      s = ParsePrint();
    } else if (name == "break" || name == "continue") {
      Next();
      if (loop_depth_ == 0) Fail("'" + name + "' is only allowed inside a for loop", line);
      s = std::make_unique<Stmt>();
      s->type = name == "break" ? StmtType::kBreak : StmtType::kContinue;
      s->line = line;
    } else if (name == "generation") {
      // transformers' AssistantTracker: the body renders as it is (it only
      // records where it went), inside a call block's own scope.
      Next();
      s = std::make_unique<Stmt>();
      s->type = StmtType::kScope;
      s->line = line;
      s->body = ParseStatements({"endgeneration"}, true);
    } else if (const char* why = UnsupportedTag(name)) {
      Fail(why, line);
    } else {
      tag_stack_.pop_back();
      FailUnknownTag(&name, line);
    }
    tag_stack_.pop_back();
    return s;
  }

  StmtPtr ParseIf() {
    auto result = std::make_unique<Stmt>();
    result->type = StmtType::kIf;
    result->line = ExpectName("if").line;
    Stmt* node = result.get();
    static const EndTokens kIfEnds = {"elif", "else", "endif"};
    static const EndTokens kElseEnds = {"endif"};
    while (true) {
      node->expr = ParseTuple(false, false, nullptr, false);
      node->body = ParseStatements(kIfEnds, false);
      const Token& t = Next();
      if (t.text == "elif") {
        auto elif = std::make_unique<Stmt>();
        elif->type = StmtType::kIf;
        elif->line = Cur().line;
        Stmt* next = elif.get();
        node->else_body.push_back(std::move(elif));
        node = next;
        continue;
      }
      if (t.text == "else") node->else_body = ParseStatements(kElseEnds, true);
      break;
    }
    return result;
  }

  StmtPtr ParseFor() {
    auto s = std::make_unique<Stmt>();
    s->type = StmtType::kFor;
    s->line = ExpectName("for").line;
    static const EndTokens kIn = {"in"};
    s->target = ParseAssignTarget(true, false, &kIn, false);
    ExpectName("in");
    static const EndTokens kRecursive = {"recursive"};
    s->expr = ParseTuple(false, false, &kRecursive, false);
    if (SkipName("if")) s->cond = ParseExpression(true);
    if (IsName("recursive")) Fail("recursive for loops are not supported", Cur().line);
    static const EndTokens kBodyEnds = {"endfor", "else"};
    static const EndTokens kElseEnds = {"endfor"};
    ++loop_depth_;
    s->body = ParseStatements(kBodyEnds, false);
    --loop_depth_;
    if (Next().text != "endfor") s->else_body = ParseStatements(kElseEnds, true);
    return s;
  }

  StmtPtr ParseSet() {
    auto s = std::make_unique<Stmt>();
    s->line = Next().line;
    s->target = ParseAssignTarget(true, false, nullptr, true);
    if (SkipOp("=")) {
      s->type = StmtType::kSet;
      s->expr = ParseTuple(false, true, nullptr, false);
      return s;
    }
    s->type = StmtType::kSetBlock;
    s->expr = ParseFilter(nullptr, false);
    static const EndTokens kEnds = {"endset"};
    s->body = ParseStatements(kEnds, true);
    return s;
  }

  StmtPtr ParseMacro() {
    auto s = std::make_unique<Stmt>();
    s->type = StmtType::kMacro;
    s->line = Next().line;
    s->name = ParseAssignTarget(false, true, nullptr, false)->name;
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!s->params.empty()) ExpectOp(",");
      const std::string param = ParseAssignTarget(false, true, nullptr, false)->name;
      if (SkipOp("=")) {
        s->defaults.push_back(ParseExpression(true));
      } else if (!s->defaults.empty()) {
        Fail("non-default argument follows default argument", Cur().line);
      }
      s->params.push_back(param);
    }
    ExpectOp(")");
    // A macro body is a function: break and continue there would not leave
    // the loop around the call.
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    static const EndTokens kEnds = {"endmacro"};
    s->body = ParseStatements(kEnds, true);
    loop_depth_ = saved_loops;
    s->uses_varargs = BodyReadsName(s->body, "varargs");
    s->uses_kwargs = BodyReadsName(s->body, "kwargs");
    if (BodyReadsName(s->body, "caller")) Fail("macros that use 'caller' are not supported (call blocks are not)", s->line);
    return s;
  }

  StmtPtr ParseFilterBlock() {
    auto s = std::make_unique<Stmt>();
    s->type = StmtType::kFilterBlock;
    s->line = Next().line;
    s->expr = ParseFilter(nullptr, true);
    static const EndTokens kEnds = {"endfilter"};
    s->body = ParseStatements(kEnds, true);
    return s;
  }

  StmtPtr ParseWith() {
    auto s = std::make_unique<Stmt>();
    s->type = StmtType::kWith;
    s->line = Next().line;
    while (Cur().type != Tok::kBlockEnd) {
      if (!s->targets.empty()) ExpectOp(",");
      s->targets.push_back(ParseAssignTarget(true, false, nullptr, false));
      ExpectOp("=");
      s->exprs.push_back(ParseExpression(true));
    }
    static const EndTokens kEnds = {"endwith"};
    s->body = ParseStatements(kEnds, true);
    return s;
  }

  StmtPtr ParsePrint() {
    auto s = std::make_unique<Stmt>();
    s->type = StmtType::kPrint;
    s->line = Next().line;
    while (Cur().type != Tok::kBlockEnd) {
      if (!s->exprs.empty()) ExpectOp(",");
      s->exprs.push_back(ParseExpression(true));
    }
    return s;
  }

  // ---- Expressions.

  ExprPtr ParseAssignTarget(bool with_tuple, bool name_only, const EndTokens* extra_end, bool with_namespace) {
    ExprPtr target;
    if (with_namespace && Look().type == Tok::kOperator && Look().text == ".") {
      const Token& ns = ExpectAnyName();
      Next();  // the dot
      const Token& attr = ExpectAnyName();
      target = Make(ExprType::kNSRef, ns.line);
      target->name = ns.text;
      target->attr = attr.text;
      return target;
    }
    if (name_only) {
      const Token& t = ExpectAnyName();
      target = Make(ExprType::kName, t.line);
      target->name = t.text;
    } else if (with_tuple) {
      target = ParseTuple(true, true, extra_end, false);
    } else {
      target = ParsePrimary();
    }
    auto assignable = [](const Expr& e) {
      return e.type == ExprType::kName && e.name != "true" && e.name != "false" && e.name != "none" &&
             e.name != "True" && e.name != "False" && e.name != "None";
    };
    bool ok = assignable(*target);
    if (target->type == ExprType::kTuple) {
      ok = true;
      for (const auto& item : target->args) ok = ok && assignable(*item);
    }
    if (!ok) Fail("can't assign to '" + std::string(target->type == ExprType::kConst ? "const" : "expression") + "'", target->line);
    return target;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    Nest nest(this, Cur().line);
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  ExprPtr ParseCondExpr() {
    int line = Cur().line;
    ExprPtr expr1 = ParseOr();
    while (SkipName("if")) {
      ExprPtr expr2 = ParseOr();
      ExprPtr expr3;
      if (SkipName("else")) {
        Nest nest(this, Cur().line);
        expr3 = ParseCondExpr();
      }
      ExprPtr e = Make(ExprType::kCond, line);
      e->args.push_back(std::move(expr2));
      e->args.push_back(std::move(expr1));
      e->args.push_back(std::move(expr3));
      expr1 = Done(std::move(e));
      line = Cur().line;
    }
    return expr1;
  }

  ExprPtr ParseOr() {
    int line = Cur().line;
    ExprPtr left = ParseAnd();
    while (SkipName("or")) {
      left = Binary(ExprType::kOr, line, std::move(left), ParseAnd());
      line = Cur().line;
    }
    return left;
  }

  ExprPtr ParseAnd() {
    int line = Cur().line;
    ExprPtr left = ParseNot();
    while (SkipName("and")) {
      left = Binary(ExprType::kAnd, line, std::move(left), ParseNot());
      line = Cur().line;
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      const int line = Next().line;
      Nest nest(this, line);
      return Unary(ExprType::kNot, line, ParseNot());
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    int line = Cur().line;
    ExprPtr expr = ParseMath1();
    ExprPtr cmp;
    while (true) {
      CmpOp op;
      if (IsOp("==")) {
        op = CmpOp::kEq;
      } else if (IsOp("!=")) {
        op = CmpOp::kNe;
      } else if (IsOp("<")) {
        op = CmpOp::kLt;
      } else if (IsOp("<=")) {
        op = CmpOp::kLe;
      } else if (IsOp(">")) {
        op = CmpOp::kGt;
      } else if (IsOp(">=")) {
        op = CmpOp::kGe;
      } else if (IsName("in")) {
        op = CmpOp::kIn;
      } else if (IsName("not") && Look().type == Tok::kName && Look().text == "in") {
        Next();
        op = CmpOp::kNotIn;
      } else {
        break;
      }
      Next();
      if (!cmp) {
        cmp = Make(ExprType::kCompare, line);
        cmp->args.push_back(std::move(expr));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(ParseMath1());
      line = Cur().line;
    }
    if (!cmp) return expr;
    cmp->line = line;
    return Done(std::move(cmp));
  }

  ExprPtr BinOpNode(BinOp op, int line, ExprPtr a, ExprPtr b) {
    ExprPtr e = Make(ExprType::kBinOp, line);
    e->binop = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return Done(std::move(e));
  }

  ExprPtr ParseMath1() {
    int line = Cur().line;
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const BinOp op = Next().text == "+" ? BinOp::kAdd : BinOp::kSub;
      left = BinOpNode(op, line, std::move(left), ParseConcat());
      line = Cur().line;
    }
    return left;
  }

  ExprPtr ParseConcat() {
    const int line = Cur().line;
    ExprPtr first = ParseMath2();
    if (!IsOp("~")) return first;
    ExprPtr e = Make(ExprType::kConcat, line);
    e->args.push_back(std::move(first));
    while (SkipOp("~")) e->args.push_back(ParseMath2());
    return Done(std::move(e));
  }

  ExprPtr ParseMath2() {
    int line = Cur().line;
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string& t = Next().text;
      const BinOp op = t == "*" ? BinOp::kMul : t == "/" ? BinOp::kDiv : t == "//" ? BinOp::kFloorDiv : BinOp::kMod;
      left = BinOpNode(op, line, std::move(left), ParsePow());
      line = Cur().line;
    }
    return left;
  }

  ExprPtr ParsePow() {
    int line = Cur().line;
    ExprPtr left = ParseUnary(true);
    while (SkipOp("**")) {
      left = BinOpNode(BinOp::kPow, line, std::move(left), ParseUnary(true));
      line = Cur().line;
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    const int line = Cur().line;
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const ExprType type = Next().text == "-" ? ExprType::kNeg : ExprType::kPos;
      Nest nest(this, line);
      node = Unary(type, line, ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    ExprPtr node;
    if (t.type == Tok::kName) {
      if (t.text == "true" || t.text == "false" || t.text == "True" || t.text == "False") {
        node = Make(ExprType::kConst, t.line);
        node->constant = Value::Bool(t.text == "true" || t.text == "True");
      } else if (t.text == "none" || t.text == "None") {
        node = Make(ExprType::kConst, t.line);
        node->constant = Value::None();
      } else {
        node = Make(ExprType::kName, t.line);
        node->name = t.text;
      }
      Next();
    } else if (t.type == Tok::kString) {
      node = Make(ExprType::kConst, t.line);
      std::string text = Next().text;
      while (Cur().type == Tok::kString) text += Next().text;
      node->constant = Value::Str(std::move(text));
    } else if (t.type == Tok::kInteger || t.type == Tok::kFloat) {
      node = Make(ExprType::kConst, t.line);
      node->constant = t.type == Tok::kInteger ? Value::Int(t.int_value) : Value::Float(t.float_value);
      Next();
    } else if (IsOp("(")) {
      Next();
      node = ParseTuple(false, true, nullptr, true);
      ExpectOp(")");
    } else if (IsOp("[")) {
      node = ParseList();
    } else if (IsOp("{")) {
      node = ParseDict();
    } else {
      Fail("unexpected '" + DescribeToken(t) + "'", t.line);
    }
    return node;
  }

  // parse_tuple: comma-separated expressions; a tuple only with a comma (or
  // empty parentheses).
  ExprPtr ParseTuple(bool simplified, bool with_condexpr, const EndTokens* extra_end, bool explicit_parentheses) {
    int line = Cur().line;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) ExpectOp(",");
      if (IsTupleEnd(extra_end)) break;
      if (simplified) {
        args.push_back(ParsePrimary());
      } else {
        args.push_back(ParseExpression(with_condexpr));
      }
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
      line = Cur().line;
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parentheses) Fail("Expected an expression, got '" + DescribeToken(Cur()) + "'", Cur().line);
    }
    ExprPtr e = Make(ExprType::kTuple, line);
    e->args = std::move(args);
    return Done(std::move(e));
  }

  bool IsTupleEnd(const EndTokens* extra_end) const {
    const Token& t = Cur();
    if (t.type == Tok::kVariableEnd || t.type == Tok::kBlockEnd || (t.type == Tok::kOperator && t.text == ")"))
      return true;
    if (extra_end && t.type == Tok::kName)
      return std::find(extra_end->begin(), extra_end->end(), t.text) != extra_end->end();
    return false;
  }

  ExprPtr ParseList() {
    const Token& open = ExpectOp("[");
    ExprPtr e = Make(ExprType::kList, open.line);
    while (!IsOp("]")) {
      if (!e->args.empty()) ExpectOp(",");
      if (IsOp("]")) break;
      e->args.push_back(ParseExpression(true));
    }
    ExpectOp("]");
    return Done(std::move(e));
  }

  ExprPtr ParseDict() {
    const Token& open = ExpectOp("{");
    ExprPtr e = Make(ExprType::kDict, open.line);
    while (!IsOp("}")) {
      if (!e->args.empty()) ExpectOp(",");
      if (IsOp("}")) break;
      e->args.push_back(ParseExpression(true));
      ExpectOp(":");
      e->args.push_back(ParseExpression(true));
    }
    ExpectOp("}");
    return Done(std::move(e));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".") || IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        break;
      }
    }
    return node;
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        node = ParseFilter(std::move(node), false);
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        break;
      }
    }
    return node;
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token& t = Next();
    if (t.text == ".") {
      const Token& attr = Next();
      if (attr.type == Tok::kName) {
        ExprPtr e = Make(ExprType::kGetattr, t.line);
        e->name = attr.text;
        e->args.push_back(std::move(node));
        return Done(std::move(e));
      }
      if (attr.type != Tok::kInteger) Fail("expected name or number", attr.line);
      ExprPtr key = Make(ExprType::kConst, attr.line);
      key->constant = Value::Int(attr.int_value);
      return Binary(ExprType::kGetitem, t.line, std::move(node), std::move(key));
    }
    // "[": one subscript, or several making a tuple.
    std::vector<ExprPtr> args;
    while (!IsOp("]")) {
      if (!args.empty()) ExpectOp(",");
      args.push_back(ParseSubscribed());
    }
    ExpectOp("]");
    ExprPtr key;
    if (args.size() == 1) {
      key = std::move(args[0]);
    } else {
      key = Make(ExprType::kTuple, t.line);
      key->args = std::move(args);
      key = Done(std::move(key));
    }
    return Binary(ExprType::kGetitem, t.line, std::move(node), std::move(key));
  }

  ExprPtr ParseSubscribed() {
    const int line = Cur().line;
    std::vector<ExprPtr> args;
    if (IsOp(":")) {
      Next();
      args.push_back(nullptr);
    } else {
      ExprPtr node = ParseExpression(true);
      if (!IsOp(":")) return node;
      Next();
      args.push_back(std::move(node));
    }
    if (IsOp(":")) {
      args.push_back(nullptr);
    } else if (!IsOp("]") && !IsOp(",")) {
      args.push_back(ParseExpression(true));
    } else {
      args.push_back(nullptr);
    }
    if (IsOp(":")) {
      Next();
      if (!IsOp("]") && !IsOp(",")) {
        args.push_back(ParseExpression(true));
      } else {
        args.push_back(nullptr);
      }
    } else {
      args.push_back(nullptr);
    }
    ExprPtr e = Make(ExprType::kSlice, line);
    e->args = std::move(args);
    return Done(std::move(e));
  }

  // parse_call_args into e->args (after any already there) and e->kwargs.
  void ParseCallArgs(Expr* e) {
    const Token& open = ExpectOp("(");
    bool require_comma = false;
    while (!IsOp(")")) {
      if (require_comma) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      if (IsOp("*") || IsOp("**")) Fail("*args and **kwargs in calls are not supported", Cur().line);
      if (Cur().type == Tok::kName && Look().type == Tok::kOperator && Look().text == "=") {
        const std::string key = Next().text;
        Next();
        e->kwargs.emplace_back(key, ParseExpression(true));
      } else {
        if (!e->kwargs.empty()) Fail("invalid syntax for function call expression", open.line);
        e->args.push_back(ParseExpression(true));
      }
      require_comma = true;
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node) {
    ExprPtr e = Make(ExprType::kCall, Cur().line);
    e->args.push_back(std::move(node));
    ParseCallArgs(e.get());
    return Done(std::move(e));
  }

  ExprPtr ParseFilter(ExprPtr node, bool start_inline) {
    while (IsOp("|") || start_inline) {
      if (!start_inline) Next();
      const Token& t = ExpectAnyName();
      std::string name = t.text;
      while (IsOp(".")) {
        Next();
        name += "." + ExpectAnyName().text;
      }
      ExprPtr e = Make(ExprType::kFilter, t.line);
      e->name = name;
      std::string why_not;
      // An unknown filter is an error when the template is parsed, except
      // inside an if block or conditional expression, where Jinja2 defers
      // it to when it runs (see CheckUnresolved).
      e->filter = FindFilter(name, &why_not);
      if (e->filter == nullptr) e->attr = why_not.empty() ? "unknown filter '" + name + "'" : why_not;
      e->args.push_back(std::move(node));
      if (IsOp("(")) ParseCallArgs(e.get());
      node = Done(std::move(e));
      start_inline = false;
    }
    return node;
  }

  ExprPtr ParseTest(ExprPtr node) {
    const Token& is = Next();
    const bool negated = SkipName("not");
    const Token& t = ExpectAnyName();
    std::string name = t.text;
    while (IsOp(".")) {
      Next();
      name += "." + ExpectAnyName().text;
    }
    ExprPtr e = Make(ExprType::kTest, is.line);
    e->name = name;
    std::string why_not;
    e->test = FindTest(name, &why_not);
    if (e->test == nullptr) e->attr = why_not.empty() ? "unknown test '" + name + "'" : why_not;
    e->args.push_back(std::move(node));
    const Token& c = Cur();
    if (IsOp("(")) {
      ParseCallArgs(e.get());
    } else if ((c.type == Tok::kName || c.type == Tok::kString || c.type == Tok::kInteger ||
                c.type == Tok::kFloat || IsOp("(") || IsOp("[") || IsOp("{")) &&
               !(c.type == Tok::kName && (c.text == "else" || c.text == "or" || c.text == "and"))) {
      if (IsName("is")) Fail("You cannot chain multiple tests with is", c.line);
      e->args.push_back(ParsePostfix(ParsePrimary()));
    }
    e = Done(std::move(e));
    if (negated) return Unary(ExprType::kNot, is.line, std::move(e));
    return e;
  }

  const std::vector<Token>& toks_;
  const Limits& limits_;
  uintptr_t stack_limit_;
  size_t i_ = 0;
  int nesting_ = 0;
  int loop_depth_ = 0;
  std::vector<std::string> tag_stack_;
  std::vector<const EndTokens*> end_token_stack_;
};

}  // namespace

Body Parse(const std::vector<Token>& tokens, const Limits& limits) { return Parser(tokens, limits).ParseTemplate(); }

}  // namespace epwa::jinja::internal
