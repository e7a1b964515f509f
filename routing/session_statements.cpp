// Session-state analysis of SQL with libpg_query's parse tree (JSON, read with Boost.JSON).
#include "routing/session_statements.hpp"

#include <algorithm>
#include <cctype>

#include "routing/parse_tree.hpp"

namespace sluice::routing {
namespace json = boost::json;

std::string_view to_string(Pin p) {
  switch (p) {
    case Pin::kListen:
      return "listen";
    case Pin::kAdvisoryLock:
      return "advisory_lock";
    case Pin::kTempRelation:
      return "temp_relation";
    case Pin::kWithHoldCursor:
      return "with_hold_cursor";
    case Pin::kSetRole:
      return "set_role";
    case Pin::kSessionAuthorization:
      return "session_authorization";
    case Pin::kUntrackedSetConfig:
      return "untracked_set_config";
  }
  return "?";
}

namespace {

constexpr int kCursorOptHold = 0x0020;  // CURSOR_OPT_HOLD in nodes/parsenodes.h

// The string of an A_Const string literal, if `v` is one.
std::optional<std::string_view> string_literal(const json::value& v) {
  const auto* c = v.is_object() ? v.get_object().if_contains("A_Const") : nullptr;
  const auto* s = c && c->is_object() ? c->get_object().if_contains("sval") : nullptr;
  if (s == nullptr || !s->is_object()) return std::nullopt;
  return str_field(s->get_object(), "sval");
}

// A boolean literal: {"boolval":{"boolval":true}} or {"boolval":{}} for false.
std::optional<bool> bool_literal(const json::value& v) {
  const auto* c = v.is_object() ? v.get_object().if_contains("A_Const") : nullptr;
  const auto* b = c && c->is_object() ? c->get_object().if_contains("boolval") : nullptr;
  if (b == nullptr || !b->is_object()) return std::nullopt;
  const auto* inner = b->get_object().if_contains("boolval");
  return inner != nullptr && inner->is_bool() && inner->get_bool();
}

std::string_view function_name(const json::object& call) {
  const auto* names = call.if_contains("funcname");
  if (names == nullptr || !names->is_array() || names->get_array().empty()) return {};
  const auto& last = names->get_array().back();
  const auto* s = last.is_object() ? last.get_object().if_contains("String") : nullptr;
  return s && s->is_object() ? str_field(s->get_object(), "sval") : std::string_view{};
}

bool is_session_advisory_lock(std::string_view f) {
  return f == "pg_advisory_lock" || f == "pg_advisory_lock_shared" || f == "pg_try_advisory_lock" ||
         f == "pg_try_advisory_lock_shared";
}

void add_pin(Analysis& a, Pin p) {
  if (std::find(a.pins.begin(), a.pins.end(), p) == a.pins.end()) a.pins.push_back(p);
}

// set_config(name, value, is_local) with literal arguments behaves like SET [LOCAL].
void note_set_config(const json::object& call, Analysis& a) {
  const auto* args = call.if_contains("args");
  if (args == nullptr || !args->is_array() || args->get_array().size() != 3) {
    add_pin(a, Pin::kUntrackedSetConfig);
    return;
  }
  const auto& list = args->get_array();
  auto name = string_literal(list[0]);
  auto value = string_literal(list[1]);
  auto local = bool_literal(list[2]);
  if (!name || !value || !local) {
    add_pin(a, Pin::kUntrackedSetConfig);
    return;
  }
  Statement s;
  s.kind = *local ? StatementKind::kSetLocal : StatementKind::kSet;
  s.name = lower(*name);
  s.value = std::string(*value);
  a.set_config_calls.push_back(std::move(s));
}

// Looks through a whole statement tree for function calls and temporary relations.
void walk(const json::value& v, Analysis& a, int depth) {
  if (depth > 200) return;  // the parser bounds nesting too; this keeps recursion finite
  if (v.is_array()) {
    for (const auto& e : v.get_array()) walk(e, a, depth + 1);
    return;
  }
  if (!v.is_object()) return;
  const auto& o = v.get_object();
  if (str_field(o, "relpersistence") == "t") add_pin(a, Pin::kTempRelation);
  if (const auto* call = o.if_contains("FuncCall"); call && call->is_object()) {
    auto f = function_name(call->get_object());
    if (is_session_advisory_lock(f)) add_pin(a, Pin::kAdvisoryLock);
    if (f == "set_config") note_set_config(call->get_object(), a);
  }
  for (const auto& [key, child] : o) walk(child, a, depth + 1);
}

void classify_set(const json::object& n, Statement& s, Analysis& a) {
  auto kind = str_field(n, "kind");
  bool local = n.contains("is_local") && n.at("is_local").is_bool() && n.at("is_local").get_bool();
  s.name = lower(str_field(n, "name"));
  if (s.name == "role") add_pin(a, Pin::kSetRole);
  if (s.name == "session_authorization") add_pin(a, Pin::kSessionAuthorization);
  if (kind == "VAR_RESET_ALL") {
    s.kind = StatementKind::kResetAll;
  } else if (kind == "VAR_RESET" || (kind == "VAR_SET_DEFAULT" && !local)) {
    s.kind = StatementKind::kReset;
  } else if (kind == "VAR_SET_MULTI" && s.name == "transaction") {
    s.kind = StatementKind::kOther;  // SET TRANSACTION: this transaction only
  } else {
    s.kind = local ? StatementKind::kSetLocal : StatementKind::kSet;
  }
}

void classify_transaction(std::string_view kind, Statement& s) {
  if (kind == "TRANS_STMT_BEGIN" || kind == "TRANS_STMT_START") {
    s.kind = StatementKind::kBegin;
  } else if (kind == "TRANS_STMT_COMMIT" || kind == "TRANS_STMT_PREPARE") {
    s.kind = StatementKind::kCommit;  // PREPARE TRANSACTION also ends the session's transaction
  } else if (kind == "TRANS_STMT_ROLLBACK") {
    s.kind = StatementKind::kRollback;
  }
}

void classify(const json::object& stmt, Statement& s, Analysis& a) {
  if (stmt.empty()) return;
  const auto& [type, node] = *stmt.begin();
  if (!node.is_object()) return;
  const auto& n = node.get_object();
  if (type == "VariableSetStmt") {
    classify_set(n, s, a);
  } else if (type == "PrepareStmt") {
    s.kind = StatementKind::kPrepare;
    s.name = str_field(n, "name");
  } else if (type == "ExecuteStmt") {
    s.kind = StatementKind::kExecute;
    s.name = str_field(n, "name");
  } else if (type == "DeallocateStmt") {
    s.name = str_field(n, "name");
    s.kind = s.name.empty() ? StatementKind::kDeallocateAll : StatementKind::kDeallocate;
  } else if (type == "DiscardStmt") {
    if (str_field(n, "target") == "DISCARD_ALL") s.kind = StatementKind::kDiscardAll;
  } else if (type == "TransactionStmt") {
    classify_transaction(str_field(n, "kind"), s);
  } else if (type == "ListenStmt") {
    add_pin(a, Pin::kListen);
  } else if (type == "DeclareCursorStmt") {
    const auto* opts = n.if_contains("options");
    if (opts && opts->is_int64() && (opts->get_int64() & kCursorOptHold) != 0)
      add_pin(a, Pin::kWithHoldCursor);
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && (std::isspace(static_cast<unsigned char>(s.back())) || s.back() == ';'))
    s.remove_suffix(1);
  return s;
}

std::size_t size_field(const json::object& o, std::string_view key, std::size_t fallback) {
  const auto* v = o.if_contains(key);
  return v && v->is_int64() && v->get_int64() >= 0 ? static_cast<std::size_t>(v->get_int64())
                                                   : fallback;
}

}  // namespace

Analysis analyze(std::string_view sql) {
  Analysis a;
  auto tree = parse_tree(sql);
  if (!tree) return a;
  const json::value& root = *tree;
  a.parsed = true;
  const auto* stmts = root.get_object().if_contains("stmts");
  if (stmts == nullptr || !stmts->is_array()) return a;  // empty or comment-only input
  for (const auto& raw : stmts->get_array()) {
    if (!raw.is_object() || !raw.get_object().contains("stmt")) continue;
    const auto& o = raw.get_object();
    // Locations are byte offsets; a missing stmt_len means "to the end of the string".
    std::size_t at = std::min(size_field(o, "stmt_location", 0), sql.size());
    std::size_t len = size_field(o, "stmt_len", sql.size() - at);
    Statement s;
    s.text = std::string(trim(sql.substr(at, len)));
    if (o.at("stmt").is_object()) classify(o.at("stmt").get_object(), s, a);
    walk(o.at("stmt"), a, 0);
    a.statements.push_back(std::move(s));
  }
  return a;
}

}  // namespace sluice::routing
