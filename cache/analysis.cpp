#include "cache/analysis.hpp"

#include <pg_query.h>

#include <algorithm>
#include <boost/json.hpp>

#include "routing/parse_tree.hpp"

namespace sluice::cache {
namespace json = boost::json;
using routing::str_field;

namespace {

struct Walk {
  CacheFacts& facts;
  bool dml = false;       // INSERT/UPDATE/DELETE/MERGE somewhere
  bool locks = false;     // FOR UPDATE/SHARE
  bool into = false;      // SELECT INTO
  bool unstable = false;  // CURRENT_DATE and friends, TABLESAMPLE, WHERE CURRENT OF
  bool too_deep = false;
};

RelationName name_of(const json::object& range_var) {
  RelationName n;
  n.schema = std::string(str_field(range_var, "schemaname"));
  n.name = std::string(str_field(range_var, "relname"));
  return n;
}

template <class T>
void add_once(std::vector<T>& list, T v) {
  if (std::find(list.begin(), list.end(), v) == list.end()) list.push_back(std::move(v));
}

void add_function(const json::object& call, CacheFacts& facts) {
  if (auto f = routing::function_ref(call)) add_once(facts.functions, std::move(*f));
}

void walk(const json::value& v, Walk& w, int depth) {
  if (depth > 200) {
    w.too_deep = true;
    return;
  }
  if (v.is_array()) {
    for (const auto& e : v.get_array()) walk(e, w, depth + 1);
    return;
  }
  if (!v.is_object()) return;
  for (const auto& [key, child] : v.get_object()) {
    if (key == "RangeVar" && child.is_object())
      add_once(w.facts.reads, name_of(child.get_object()));
    if ((key == "InsertStmt" || key == "UpdateStmt" || key == "DeleteStmt" || key == "MergeStmt") &&
        child.is_object()) {
      w.dml = true;
      if (const auto* rel = child.get_object().if_contains("relation"); rel && rel->is_object())
        add_once(w.facts.writes, name_of(rel->get_object()));
    }
    if (key == "lockingClause") w.locks = true;
    if (key == "intoClause") w.into = true;
    if (key == "SQLValueFunction" || key == "RangeTableSample" || key == "CurrentOfExpr")
      w.unstable = true;
    if (key == "CommonTableExpr" && child.is_object())
      add_once(w.facts.ctes, std::string(str_field(child.get_object(), "ctename")));
    if (key == "FuncCall" && child.is_object()) add_function(child.get_object(), w.facts);
    walk(child, w, depth + 1);
  }
}

bool one_of(std::string_view type, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), type) != names.end();
}

// Statements that change neither data nor what a cached SELECT returns.
bool neutral(std::string_view type) {
  return one_of(type, {"VariableSetStmt",   "VariableShowStmt", "TransactionStmt", "DeallocateStmt",
                       "DiscardStmt",       "ListenStmt",       "UnlistenStmt",    "NotifyStmt",
                       "DeclareCursorStmt", "FetchStmt",        "ClosePortalStmt", "LockStmt",
                       "CheckPointStmt",    "VacuumStmt",       "PrepareStmt",     "ExplainStmt",
                       "SelectStmt",        "InsertStmt",       "UpdateStmt",      "DeleteStmt",
                       "MergeStmt"});
}

bool role_change(std::string_view type) {
  return one_of(type, {"CreateRoleStmt", "AlterRoleStmt", "DropRoleStmt", "GrantRoleStmt",
                       "AlterRoleSetStmt", "ReassignOwnedStmt", "DropOwnedStmt"});
}

bool nocache_hint(std::string_view sql) {
  std::size_t i = 0;
  while (i < sql.size() && std::isspace(static_cast<unsigned char>(sql[i]))) ++i;
  if (sql.substr(i, 2) != "/*") return false;
  auto end = sql.find("*/", i + 2);
  if (end == std::string_view::npos) return false;
  auto body = sql.substr(i + 2, end - i - 2);
  return body.find("sluice:nocache") != std::string_view::npos;
}

}  // namespace

CacheFacts cache_facts(std::string_view sql) {
  CacheFacts facts;
  facts.nocache_hint = nocache_hint(sql);
  auto tree = routing::parse_tree(sql);
  const json::array* stmts = nullptr;
  if (tree && tree->is_object()) {
    if (const auto* s = tree->get_object().if_contains("stmts"); s && s->is_array())
      stmts = &s->get_array();
  }
  if (!stmts) {
    facts.writes_unknown = true;
    return facts;
  }
  facts.parsed = true;
  {
    const std::string text(sql);
    auto fp = pg_query_fingerprint(text.c_str());
    if (!fp.error && fp.fingerprint_str) facts.fingerprint = fp.fingerprint_str;
    pg_query_free_fingerprint_result(fp);
  }
  Walk w{facts};
  std::size_t selects = 0;
  for (const auto& entry : *stmts) {
    const auto* stmt = entry.is_object() ? entry.get_object().if_contains("stmt") : nullptr;
    if (stmt == nullptr || !stmt->is_object() || stmt->get_object().empty()) {
      facts.writes_unknown = true;
      continue;
    }
    const auto& [type, node] = *stmt->get_object().begin();
    if (!node.is_object()) {
      facts.writes_unknown = true;
      continue;
    }
    const auto& n = node.get_object();
    if (type == "SelectStmt") ++selects;
    if (type == "TruncateStmt") {
      if (const auto* rels = n.if_contains("relations"); rels && rels->is_array()) {
        for (const auto& r : rels->get_array()) {
          const auto* rv = r.is_object() ? r.get_object().if_contains("RangeVar") : nullptr;
          if (rv && rv->is_object()) add_once(facts.writes, name_of(rv->get_object()));
        }
      }
      continue;
    }
    if (type == "CopyStmt") {
      const auto* from = n.if_contains("is_from");
      const auto* rel = n.if_contains("relation");
      if (from && from->is_bool() && from->get_bool() && rel && rel->is_object())
        add_once(facts.writes, name_of(rel->get_object()));
      walk(*stmt, w, 0);
      continue;
    }
    if (role_change(type)) {
      facts.writes_roles = facts.writes_unknown = true;
      continue;
    }
    if (!neutral(type)) {  // DDL, GRANT, DO, CALL, EXECUTE, REFRESH MATERIALIZED VIEW...
      facts.writes_unknown = facts.catalog_change = true;
      continue;
    }
    walk(*stmt, w, 0);  // the statement's own node too: an UPDATE is a write of its relation
  }
  if (w.too_deep) facts.writes_unknown = true;
  if (w.into) facts.writes_unknown = facts.catalog_change = true;  // SELECT INTO creates a table
  facts.select = stmts->size() == 1 && selects == 1 && !w.dml && !w.locks && !w.into &&
                 !w.unstable && !w.too_deep;
  return facts;
}

bool all_immutable(const routing::FunctionCatalog& catalog,
                   const std::vector<routing::FunctionRef>& functions) {
  return std::all_of(functions.begin(), functions.end(),
                     [&](const auto& f) { return catalog.immutable(f); });
}

bool user_function_may_write(const routing::FunctionCatalog& catalog,
                             const std::vector<routing::FunctionRef>& functions) {
  return std::any_of(functions.begin(), functions.end(),
                     [&](const auto& f) { return catalog.may_write(f) && !catalog.builtin(f); });
}

namespace {

// Raw parse tree node types an expression depending on the role alone may contain.
bool role_only_type(std::string_view t) {
  static constexpr std::string_view kAllowed[] = {
      "SelectStmt",      "ResTarget",     "A_Expr",        "A_Const",    "BoolExpr",
      "ColumnRef",       "TypeCast",      "TypeName",      "NullTest",   "BooleanTest",
      "CaseExpr",        "CaseWhen",      "CoalesceExpr",  "MinMaxExpr", "A_ArrayExpr",
      "RowExpr",         "CollateClause", "A_Indirection", "A_Indices",  "A_Star",
      "String",          "Integer",       "Float",         "Boolean",    "BitString",
      "SQLValueFunction"};
  return std::find(std::begin(kAllowed), std::end(kAllowed), t) != std::end(kAllowed);
}

bool role_only(const json::value& v, int depth) {
  if (depth > 200) return false;
  if (v.is_array()) {
    for (const auto& e : v.get_array()) {
      if (!role_only(e, depth + 1)) return false;
    }
    return true;
  }
  if (!v.is_object()) return true;
  for (const auto& [key, child] : v.get_object()) {
    const std::string_view k(key.data(), key.size());
    // Node types are the keys in PascalCase; fields are lower case.
    if (!k.empty() && k.front() >= 'A' && k.front() <= 'Z') {
      if (!role_only_type(k)) return false;
      if (k == "SQLValueFunction") {
        const auto op = child.is_object() ? str_field(child.get_object(), "op") : "";
        if (op != "SVFOP_CURRENT_USER" && op != "SVFOP_CURRENT_ROLE" &&
            op != "SVFOP_SESSION_USER" && op != "SVFOP_USER")
          return false;
      }
    }
    if (!role_only(child, depth + 1)) return false;
  }
  return true;
}

}  // namespace

bool policy_role_only(std::string_view expr) {
  if (expr.empty()) return true;
  auto tree = routing::parse_tree("SELECT (" + std::string(expr) + ")");
  if (!tree || !tree->is_object()) return false;
  const auto* stmts = tree->get_object().if_contains("stmts");
  if (stmts == nullptr || !stmts->is_array() || stmts->get_array().size() != 1) return false;
  const auto& raw = stmts->get_array()[0];
  const auto* stmt = raw.is_object() ? raw.get_object().if_contains("stmt") : nullptr;
  return stmt != nullptr && role_only(*stmt, 0);
}

}  // namespace sluice::cache
