// The relations of one database as the cache needs them, fetched from its primary: OIDs by
// schema and name (resolved through a search_path), kinds, persistence, row-level security, user
// triggers, what reading a relation really reads (views → their base relations, partitioned and
// inherited tables → their children) and what writing one may change (foreign keys with
// cascading actions).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sluice::cache {

struct Relation {
  std::uint32_t oid = 0;
  std::string schema;
  std::string name;
  char kind = 'r';         // pg_class.relkind: r table, v view, m matview, p partitioned, f foreign
  char persistence = 'p';  // p permanent, u unlogged, t temporary
  bool rls = false;        // relrowsecurity
  // Every policy on it depends on the role alone (policy_role_only(), no user-defined function
  // or operator): cache.rls: by_role may cache it per role.
  bool rls_role_only = true;
  bool user_triggers = false;
  bool deterministic = true;  // a view: its definition calls only immutable functions
  bool system() const {
    return schema == "pg_catalog" || schema == "information_schema" || schema == "pg_toast";
  }
};

// A name as written in a statement: schema empty when unqualified.
struct RelationName {
  std::string schema;
  std::string name;
  bool operator==(const RelationName&) const = default;
};

// search_path's value split into schema names ("$user" replaced by `role`).
std::vector<std::string> parse_search_path(std::string_view value, std::string_view role);

class RelationCatalog {
 public:
  void add(Relation r);
  // Reading `from` reads `to` as well (a view's base relation, a table's child).
  void add_dependency(std::uint32_t from, std::uint32_t to);
  // Writing `referenced` may change `referencing` (ON DELETE/UPDATE CASCADE, SET NULL...).
  void add_foreign_key(std::uint32_t referenced, std::uint32_t referencing);
  // The search_path a role gets when its client sets none: server default, then
  // ALTER DATABASE/ROLE ... SET search_path (nullopt: cannot be known, do not resolve).
  void set_default_search_path(std::optional<std::string> value) {
    default_search_path_ = std::move(value);
  }
  void add_search_path_override(std::string role, std::string value) {
    overrides_[std::move(role)] = std::move(value);
  }
  // The search_path text in effect for `role` when the session set none, or nullopt.
  std::optional<std::string> default_search_path(const std::string& role) const;

  const Relation* find(std::uint32_t oid) const;
  // `n` as the server would resolve it with `search_path` (pg_catalog first); null when unknown.
  const Relation* resolve(const RelationName& n, const std::vector<std::string>& search_path) const;
  // `oid`, and every relation reading it reads (views and children, transitively), each once.
  // False when `oid` is unknown or a view on the way calls a function that is not immutable.
  bool expand(std::uint32_t oid, std::vector<std::uint32_t>& out) const;
  // Relations a write to `oid` may change besides those `expand` gives (cascading foreign keys).
  void cascades(std::uint32_t oid, std::vector<std::uint32_t>& out) const;
  std::size_t size() const { return by_oid_.size(); }

 private:
  std::unordered_map<std::uint32_t, Relation> by_oid_;
  std::map<std::pair<std::string, std::string>, std::uint32_t> by_name_;  // (schema, name)
  std::unordered_map<std::uint32_t, std::vector<std::uint32_t>> deps_;
  std::unordered_map<std::uint32_t, std::vector<std::uint32_t>> fks_;
  std::optional<std::string> default_search_path_ = "\"$user\", public";
  std::map<std::string, std::string> overrides_;  // role ("" = every role) → search_path
};

// The SQL that fills a RelationCatalog, one query per result (see fill_relations()).
inline constexpr std::string_view kRelationsSql =
    "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, "
    "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT "
    "t.tgisinternal), CASE WHEN c.relkind = 'v' THEN pg_catalog.pg_get_viewdef(c.oid) END "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')";
// Row-level security policies: (table, USING, WITH CHECK, whether the policy depends on a
// user-defined function or operator). Built-in objects are pinned: pg_depend has no rows for them.
inline constexpr std::string_view kPoliciesSql =
    "SELECT p.polrelid, pg_catalog.pg_get_expr(p.polqual, p.polrelid), "
    "pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), EXISTS (SELECT 1 FROM "
    "pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND "
    "d.objid = p.oid AND d.refclassid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, "
    "'pg_catalog.pg_operator'::pg_catalog.regclass)) FROM pg_catalog.pg_policy p";
// (from, to): views to the relations their rules read; parents to their children.
inline constexpr std::string_view kDependenciesSql =
    "SELECT DISTINCT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r JOIN "
    "pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND "
    "d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND "
    "d.refobjid <> r.ev_class UNION SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits";
inline constexpr std::string_view kForeignKeysSql =
    "SELECT confrelid, conrelid FROM pg_catalog.pg_constraint WHERE contype = 'f'";
// The server-wide default (when not set per database or role) and the per role/database ones.
inline constexpr std::string_view kSearchPathSql =
    "SELECT '', s.setting, s.source FROM pg_catalog.pg_settings s WHERE s.name = 'search_path' "
    "UNION ALL SELECT COALESCE(r.rolname, ''), c, 'override' FROM pg_catalog.pg_db_role_setting d "
    "LEFT JOIN pg_catalog.pg_roles r ON r.oid = d.setrole, pg_catalog.unnest(d.setconfig) c "
    "WHERE d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = "
    "pg_catalog.current_database())) AND c LIKE 'search\\_path=%'";

}  // namespace sluice::cache
