// Read/write classification from libpg_query's JSON parse tree (read with Boost.JSON).
#include "routing/classify.hpp"

#include <algorithm>
#include <cctype>

#include "routing/parse_tree.hpp"

namespace sluice::routing {
namespace json = boost::json;

std::optional<FunctionRef> function_ref(const json::object& call) {
  const auto* names = call.if_contains("funcname");
  if (names == nullptr || !names->is_array()) return std::nullopt;
  std::vector<std::string_view> parts;
  for (const auto& n : names->get_array()) {
    const auto* s = n.is_object() ? n.get_object().if_contains("String") : nullptr;
    if (s && s->is_object()) parts.push_back(str_field(s->get_object(), "sval"));
  }
  if (parts.empty()) return std::nullopt;
  FunctionRef f;
  f.name = std::string(parts.back());
  if (parts.size() >= 2) f.schema = std::string(parts[parts.size() - 2]);
  f.args = argument_count(call);
  return f;
}

namespace {

// Reads whose answer names the server that runs them: its backend (a pid the client then passes
// to pg_cancel_backend or looks up in pg_stat_activity, which run on the primary), its start, its
// configuration load, its log, its lock waits. They run on the primary. Not here:
// inet_server_addr() and inet_server_port(), which clients call to learn where a read ran (and
// with several replicas, which one), nor pg_is_in_recovery() (volatile in pg_proc: the catalog
// already sends it to the primary).
constexpr std::string_view kServerIdentity[] = {
    "pg_backend_pid",      "pg_postmaster_start_time", "pg_conf_load_time",
    "pg_current_logfile",  "pg_blocking_pids",         "pg_safe_snapshot_blocking_pids",
    "pg_stat_get_activity"};
// ... and every function named with this prefix (per-backend statistics by backend id).
constexpr std::string_view kServerIdentityPrefix = "pg_stat_get_backend_";

// What walking one statement's tree found.
struct TreeFacts {
  bool modifies = false;  // INSERT/UPDATE/DELETE/MERGE anywhere (data-modifying CTE)
  bool locks = false;     // FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE
  bool into = false;      // SELECT INTO
};

void add_function(const json::object& call, ReadFacts& facts) {
  auto f = function_ref(call);
  if (f && std::find(facts.functions.begin(), facts.functions.end(), *f) == facts.functions.end())
    facts.functions.push_back(std::move(*f));
}

void walk(const json::value& v, ReadFacts& facts, TreeFacts& tree, int depth) {
  if (depth > 200) {  // the parser bounds nesting too; this keeps recursion finite
    tree.modifies = true;
    return;
  }
  if (v.is_array()) {
    for (const auto& e : v.get_array()) walk(e, facts, tree, depth + 1);
    return;
  }
  if (!v.is_object()) return;
  for (const auto& [key, child] : v.get_object()) {
    if (key == "InsertStmt" || key == "UpdateStmt" || key == "DeleteStmt" || key == "MergeStmt")
      tree.modifies = true;
    if (key == "lockingClause") tree.locks = true;
    if (key == "intoClause") tree.into = true;
    if (key == "FuncCall" && child.is_object()) add_function(child.get_object(), facts);
    walk(child, facts, tree, depth + 1);
  }
}

// The truth of a DefElem argument: an A_Const {ival|boolval|sval} (transaction modes) or a bare
// Integer/Boolean/String node (EXPLAIN options). No argument means true, as in EXPLAIN (ANALYZE).
bool truth(const json::value* arg) {
  if (arg == nullptr || !arg->is_object()) return true;
  const json::object* o = &arg->get_object();
  if (const auto* c = o->if_contains("A_Const"); c && c->is_object()) o = &c->get_object();
  auto inner = [&](std::string_view node, std::string_view field) -> const json::value* {
    const auto* n = o->if_contains(node);
    if (n == nullptr || !n->is_object()) return nullptr;
    const auto* v = n->get_object().if_contains(field);
    return v ? v : n;  // a zero or false value is left out of the JSON
  };
  for (auto node : {"ival", "Integer"}) {
    if (const auto* v = inner(node, "ival")) return v->is_int64() && v->get_int64() != 0;
  }
  for (auto node : {"boolval", "Boolean"}) {
    if (const auto* v = inner(node, "boolval")) return v->is_bool() && v->get_bool();
  }
  for (auto node : {"sval", "String"}) {
    if (const auto* v = inner(node, "sval")) {
      auto s = v->is_string() ? lower(v->get_string()) : std::string();
      return s != "false" && s != "off" && s != "0" && s != "no";
    }
  }
  return true;
}

// A DefElem `name` in the list `list` whose argument's truth is `value`.
bool has_flag(const json::object& n, std::string_view list, std::string_view name, bool value) {
  const auto* opts = n.if_contains(list);
  if (opts == nullptr || !opts->is_array()) return false;
  for (const auto& o : opts->get_array()) {
    const auto* d = o.is_object() ? o.get_object().if_contains("DefElem") : nullptr;
    if (d == nullptr || !d->is_object() || str_field(d->get_object(), "defname") != name) continue;
    if (truth(d->get_object().if_contains("arg")) == value) return true;
  }
  return false;
}

bool is_routine_or_extension(std::string_view object_type) {
  return object_type == "OBJECT_FUNCTION" || object_type == "OBJECT_PROCEDURE" ||
         object_type == "OBJECT_ROUTINE" || object_type == "OBJECT_AGGREGATE" ||
         object_type == "OBJECT_EXTENSION" || object_type == "OBJECT_SCHEMA";
}

enum class Kind { kRead, kNeutral, kWrite };

// One statement: a read, session/transaction state only, or anything else.
Kind classify(const json::object& stmt, ReadFacts& facts) {
  if (stmt.empty()) return Kind::kWrite;
  const auto& [type, node] = *stmt.begin();
  if (!node.is_object()) return Kind::kWrite;
  const auto& n = node.get_object();
  TreeFacts tree;
  if (type == "SelectStmt") {
    walk(node, facts, tree, 0);
    return tree.modifies || tree.locks || tree.into ? Kind::kWrite : Kind::kRead;
  }
  if (type == "VariableShowStmt") return Kind::kRead;
  if (type == "ExplainStmt") {
    if (has_flag(n, "options", "analyze", true)) return Kind::kWrite;
    walk(node, facts, tree, 0);  // functions are not run without ANALYZE, but stay careful
    return Kind::kRead;
  }
  if (type == "VariableSetStmt") {
    if (lower(str_field(n, "name")) == "transaction") {
      if (has_flag(n, "args", "transaction_read_only", true)) facts.read_only_tx = true;
      if (has_flag(n, "args", "transaction_read_only", false)) facts.read_write_tx = true;
    }
    walk(node, facts, tree, 0);
    return Kind::kNeutral;
  }
  if (type == "TransactionStmt") {
    auto kind = str_field(n, "kind");
    if (kind == "TRANS_STMT_BEGIN" || kind == "TRANS_STMT_START") {
      facts.begins = true;
      if (has_flag(n, "options", "transaction_read_only", true)) facts.read_only_tx = true;
      if (has_flag(n, "options", "transaction_read_only", false)) facts.read_write_tx = true;
      return Kind::kNeutral;
    }
    if (kind == "TRANS_STMT_PREPARE" || kind == "TRANS_STMT_COMMIT_PREPARED" ||
        kind == "TRANS_STMT_ROLLBACK_PREPARED")
      return Kind::kWrite;
    return Kind::kNeutral;  // COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO
  }
  if (type == "DeallocateStmt" || type == "DiscardStmt") return Kind::kNeutral;
  if (type == "CreateFunctionStmt" || type == "AlterFunctionStmt" ||
      type == "CreateExtensionStmt" || type == "AlterExtensionStmt" ||
      type == "AlterExtensionContentsStmt" || type == "CreateSchemaStmt") {
    facts.catalog_change = true;
  } else if (type == "DropStmt") {
    facts.catalog_change |= is_routine_or_extension(str_field(n, "removeType"));
  } else if (type == "RenameStmt") {
    facts.catalog_change |= is_routine_or_extension(str_field(n, "renameType"));
  } else if (type == "AlterObjectSchemaStmt") {
    facts.catalog_change |= is_routine_or_extension(str_field(n, "objectType"));
  }
  return Kind::kWrite;
}

}  // namespace

bool is_set_route_primary(std::string_view sql) {
  while (!sql.empty() && std::isspace(static_cast<unsigned char>(sql.front())))
    sql.remove_prefix(1);
  if (sql.size() > 64 || sql.size() < 3 || (sql[0] | 0x20) != 's' || (sql[1] | 0x20) != 'e' ||
      (sql[2] | 0x20) != 't')
    return false;  // the common case, without building anything
  std::vector<std::string> words;
  std::string w;
  for (char c : sql) {
    auto u = static_cast<unsigned char>(c);
    if (std::isspace(u) || c == ';' || c == '=') {
      if (!w.empty()) words.push_back(std::move(w));
      w.clear();
      if (c == '=') words.emplace_back("=");
      continue;
    }
    w += static_cast<char>(std::tolower(u));
  }
  if (!w.empty()) words.push_back(std::move(w));
  if (!words.empty() && words[0] == "set" && words.size() > 1 && words[1] == "session")
    words.erase(words.begin() + 1);
  return words.size() == 4 && words[0] == "set" && words[1] == "sluice.route" &&
         (words[2] == "=" || words[2] == "to") && words[3] == "primary";
}

Hint leading_hint(std::string_view sql) {
  while (!sql.empty() && std::isspace(static_cast<unsigned char>(sql.front())))
    sql.remove_prefix(1);
  if (!sql.starts_with("/*")) return Hint::kNone;
  auto end = sql.find("*/");
  if (end == std::string_view::npos) return Hint::kNone;
  auto body = sql.substr(2, end - 2);
  auto has = [&](std::string_view word) {
    for (auto at = body.find(word); at != std::string_view::npos; at = body.find(word, at + 1)) {
      auto after = at + word.size();
      bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(body[at - 1]));
      bool right = after == body.size() || !std::isalnum(static_cast<unsigned char>(body[after]));
      if (left && right) return true;
    }
    return false;
  };
  if (has("sluice:primary")) return Hint::kPrimary;
  if (has("sluice:replica")) return Hint::kReplica;
  return Hint::kNone;
}

ReadFacts read_facts(std::string_view sql) {
  ReadFacts facts;
  facts.hint = leading_hint(sql);
  auto tree = parse_tree(sql);
  if (!tree) return facts;
  const json::value& root = *tree;
  facts.parsed = true;
  const auto* stmts = root.get_object().if_contains("stmts");
  if (stmts == nullptr || !stmts->is_array() || stmts->get_array().empty()) return facts;
  bool all_read = true;
  const auto& list = stmts->get_array();
  facts.statements = static_cast<std::uint32_t>(list.size());
  for (const auto& raw : list) {
    const auto* stmt = raw.is_object() ? raw.get_object().if_contains("stmt") : nullptr;
    if (stmt == nullptr || !stmt->is_object()) {
      all_read = false;
      continue;
    }
    const auto kind = classify(stmt->get_object(), facts);
    if (kind == Kind::kWrite) all_read = false;
    if (list.size() == 1) {
      facts.plain_select = kind == Kind::kRead && stmt->get_object().contains("SelectStmt");
      const auto* show = stmt->get_object().if_contains("VariableShowStmt");
      if (show && show->is_object() &&
          lower(str_field(show->get_object(), "name")) == "sluice.last_write_lsn")
        facts.show_last_write_lsn = true;
    }
  }
  facts.read = all_read;
  facts.server_identity = std::any_of(facts.functions.begin(), facts.functions.end(), names_server);
  return facts;
}

bool names_server(const FunctionRef& f) {
  if (!f.schema.empty() && f.schema != "pg_catalog") return false;
  return f.name.starts_with(kServerIdentityPrefix) ||
         std::find(std::begin(kServerIdentity), std::end(kServerIdentity), f.name) !=
             std::end(kServerIdentity);
}

bool explainable(const ReadFacts& facts, const FunctionCatalog& catalog) {
  if (!facts.parsed || facts.statements != 1 || !facts.plain_select) return false;
  return std::none_of(facts.functions.begin(), facts.functions.end(),
                      [&](const FunctionRef& f) { return catalog.may_write(f); });
}

void FunctionCatalog::add(std::string schema, std::string name, char volatility, int nargs,
                          int defaults, bool variadic) {
  by_name_[std::move(name)].push_back({std::move(schema), volatility, nargs, defaults, variadic});
  ++count_;
}

bool FunctionCatalog::candidate(const Entry& e, const FunctionRef& f) {
  if (!f.schema.empty() && e.schema != f.schema) return false;
  if (f.args < 0 || e.nargs < 0) return true;
  if (e.variadic) return f.args >= e.nargs - 1 - e.defaults;
  return f.args >= e.nargs - e.defaults && f.args <= e.nargs;
}

bool FunctionCatalog::every_overload(const FunctionRef& f, bool (*pred)(const Entry&)) const {
  auto it = by_name_.find(f.name);
  if (it == by_name_.end()) return false;
  bool found = false;
  for (const auto& e : it->second) {
    if (!candidate(e, f)) continue;
    found = true;
    if (!pred(e)) return false;
  }
  return found;
}

bool FunctionCatalog::may_write(const FunctionRef& f) const {
  return !every_overload(f, [](const Entry& e) { return e.volatility != 'v'; });
}

bool FunctionCatalog::immutable(const FunctionRef& f) const {
  return every_overload(f, [](const Entry& e) { return e.volatility == 'i'; });
}

bool FunctionCatalog::builtin(const FunctionRef& f) const {
  return every_overload(f, [](const Entry& e) { return e.schema == "pg_catalog"; });
}

}  // namespace sluice::routing
