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
    case Pin::kLexer:
      return "lexer";
    case Pin::kPrepareText:
      return "prepare_text";
  }
  return "?";
}

bool lexer_agrees(std::string_view name, std::string_view value) {
  const auto n = lower(name);
  if (n == "standard_conforming_strings") {
    // parse_bool()'s spellings of true (prefixes included); anything else is off or unknown.
    const auto v = lower(value);
    for (std::string_view on : {"on", "true", "tru", "tr", "t", "yes", "ye", "y", "1"}) {
      if (v == on) return true;
    }
    return false;
  }
  if (n != "client_encoding") return true;
  // Names as the server compares them (alphanumerics, lower case); every server encoding and
  // their aliases. Unknown names count as unsafe (the server refuses them anyway).
  std::string e;
  for (char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c)) e.push_back(static_cast<char>(std::tolower(c)));
  }
  static constexpr std::string_view kSafe[] = {
      "utf8",        "unicode",     "sqlascii",     "euccn",       "eucjp",       "eucjis2004",
      "euckr",       "euctw",       "muleinternal", "koi8",        "koi8r",       "koi8u",
      "latin1",      "latin2",      "latin3",       "latin4",      "latin5",      "latin6",
      "latin7",      "latin8",      "latin9",       "latin10",     "iso88591",    "iso88592",
      "iso88593",    "iso88594",    "iso88595",     "iso88596",    "iso88597",    "iso88598",
      "iso88599",    "iso885910",   "iso885913",    "iso885914",   "iso885915",   "iso885916",
      "win",         "alt",         "abc",          "tcvn",        "tcvn5712",    "vscii",
      "win866",      "win874",      "win1250",      "win1251",     "win1252",     "win1253",
      "win1254",     "win1255",     "win1256",      "win1257",     "win1258",     "windows866",
      "windows874",  "windows1250", "windows1251",  "windows1252", "windows1253", "windows1254",
      "windows1255", "windows1256", "windows1257",  "windows1258"};
  return std::find(std::begin(kSafe), std::end(kSafe), e) != std::end(kSafe);
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
  if (!lexer_agrees(s.name, s.value)) add_pin(a, Pin::kLexer);
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

// The value of SET name = <one literal> as the server reads it; "" for anything else.
std::string set_value(const json::object& n) {
  const auto* args = n.if_contains("args");
  if (args == nullptr || !args->is_array() || args->get_array().size() != 1) return {};
  const auto& v = args->get_array()[0];
  if (auto s = string_literal(v)) return std::string(*s);
  const auto* c = v.is_object() ? v.get_object().if_contains("A_Const") : nullptr;
  const auto* i = c && c->is_object() ? c->get_object().if_contains("ival") : nullptr;
  if (i == nullptr || !i->is_object()) return {};
  const auto* inner = i->get_object().if_contains("ival");  // absent for 0
  return inner && inner->is_int64() ? std::to_string(inner->get_int64()) : "0";
}

// Settings that decide how the server lexes SQL (see lexer_agrees()).
bool lexer_setting(std::string_view name) {
  return name == "standard_conforming_strings" || name == "client_encoding";
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
    s.value = set_value(n);
  }
  // RESET and DEFAULT restore a value sluice cannot see; RESET ALL restores the login values
  // (checked at login), and the server reports any change in ParameterStatus anyway.
  if (lexer_setting(s.name) && (s.kind == StatementKind::kReset || !lexer_agrees(s.name, s.value)))
    add_pin(a, Pin::kLexer);
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

// SQL PREPARE text sluice may replay on another server connection: one PREPARE statement for
// libpg_query, and no backslash (with standard_conforming_strings off or a client-only encoding
// on that connection, the server could read it as more than one statement).
bool replayable_prepare(std::string_view text) {
  if (text.find('\\') != std::string_view::npos) return false;
  auto tree = parse_tree(text);
  if (!tree || !tree->is_object()) return false;
  const auto* stmts = tree->get_object().if_contains("stmts");
  if (stmts == nullptr || !stmts->is_array() || stmts->get_array().size() != 1) return false;
  const auto& raw = stmts->get_array()[0];
  const auto* stmt = raw.is_object() ? raw.get_object().if_contains("stmt") : nullptr;
  return stmt && stmt->is_object() && stmt->get_object().contains("PrepareStmt");
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
    if (s.kind == StatementKind::kPrepare && !replayable_prepare(s.text))
      add_pin(a, Pin::kPrepareText);
    walk(o.at("stmt"), a, 0);
    a.statements.push_back(std::move(s));
  }
  return a;
}

}  // namespace sluice::routing
