#include "routing/mongo.hpp"

#include <bson/bson.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <set>

namespace sluice::routing::mongo {

namespace {

// A read-only libbson view of validated bytes.
struct View {
  explicit View(Span s) { ok = bson_init_static(&doc, s.data(), s.size()); }
  bson_t doc{};
  bool ok = false;
};

std::string_view key_of(const bson_iter_t& it) {
  return {bson_iter_key(&it), bson_iter_key_len(&it)};
}

std::string utf8_of(const bson_iter_t& it) {
  std::uint32_t len = 0;
  const char* s = bson_iter_utf8(&it, &len);
  return {s, len};
}

bool truthy(const bson_iter_t& it) {
  return bson_iter_as_bool(&it);
}

// The sub-document (or array) at `it` as a span.
Span sub(const bson_iter_t& it) {
  std::uint32_t len = 0;
  const std::uint8_t* data = nullptr;
  if (BSON_ITER_HOLDS_DOCUMENT(&it))
    bson_iter_document(&it, &len, &data);
  else if (BSON_ITER_HOLDS_ARRAY(&it))
    bson_iter_array(&it, &len, &data);
  return data ? Span(data, len) : Span();
}

struct Entry {
  std::string_view name;
  Route route;
};
// Everything not listed routes as a write (to the primary) and, with a cache, bumps its
// database: unknown commands are assumed to change anything.
constexpr std::array kCommands{
    Entry{"hello", Route::kLocal},
    Entry{"isMaster", Route::kLocal},
    Entry{"ismaster", Route::kLocal},
    Entry{"ping", Route::kLocal},
    Entry{"buildInfo", Route::kLocal},
    Entry{"buildinfo", Route::kLocal},
    Entry{"endSessions", Route::kLocal},
    Entry{"whatsmyuri", Route::kLocal},
    // Authentication is connection state on a server: forwarded over a pooled connection it
    // would hand one client's identity to the next. sluice refuses it (answered locally).
    Entry{"saslStart", Route::kLocal},
    Entry{"saslContinue", Route::kLocal},
    Entry{"authenticate", Route::kLocal},
    Entry{"logout", Route::kLocal},
    Entry{"find", Route::kRead},
    Entry{"aggregate", Route::kRead},  // a write with $out / $merge (below)
    Entry{"count", Route::kRead},
    Entry{"distinct", Route::kRead},
    Entry{"listIndexes", Route::kRead},
    Entry{"listCollections", Route::kRead},
    Entry{"dbStats", Route::kRead},
    Entry{"collStats", Route::kRead},
    Entry{"dataSize", Route::kRead},
    Entry{"explain", Route::kRead},
    Entry{"getMore", Route::kCursor},
    Entry{"killCursors", Route::kCursor},
    Entry{"commitTransaction", Route::kTransaction},
    Entry{"abortTransaction", Route::kTransaction},
};

// Writes whose first value names the collection written.
constexpr std::array<std::string_view, 12> kCollectionWrites{
    "insert", "update",        "delete",      "findAndModify", "findandmodify",   "create",
    "drop",   "createIndexes", "dropIndexes", "collMod",       "convertToCapped", "compact"};

// Commands for the primary that change no data (monitoring, sessions, diagnostics): no bump.
constexpr std::array<std::string_view, 22> kNoDataChange{"serverStatus",
                                                         "listDatabases",
                                                         "hostInfo",
                                                         "getParameter",
                                                         "connectionStatus",
                                                         "replSetGetStatus",
                                                         "getLog",
                                                         "currentOp",
                                                         "top",
                                                         "getCmdLineOpts",
                                                         "listCommands",
                                                         "validate",
                                                         "dbHash",
                                                         "killOp",
                                                         "killSessions",
                                                         "killAllSessions",
                                                         "refreshSessions",
                                                         "startSession",
                                                         "getDefaultRWConcern",
                                                         "features",
                                                         "lockInfo",
                                                         "profile"};

// "db.collection" → (db, collection); nullopt without a dot.
std::optional<Written> namespace_of(const std::string& full) {
  auto dot = full.find('.');
  if (dot == std::string::npos || dot == 0) return std::nullopt;
  return Written{full.substr(0, dot), full.substr(dot + 1)};
}

// Result-changing reads that a cached copy cannot stand for.
constexpr std::array<std::string_view, 10> kUncacheableStages{
    "$sample",    "$currentOp",  "$listSessions",   "$listLocalSessions",
    "$collStats", "$indexStats", "$planCacheStats", "$changeStream",
    "$rand",      "$$NOW"};

bool contains_bytes(Span body, std::string_view needle) {
  auto it = std::search(body.begin(), body.end(), needle.begin(), needle.end(),
                        [](std::uint8_t a, char b) { return a == static_cast<std::uint8_t>(b); });
  return it != body.end();
}

// Collections a pipeline reads besides its own ($lookup, $graphLookup, $unionWith, nested).
void pipeline_reads(Span doc, std::vector<std::string>& out, bool* unknown, int depth = 0) {
  if (depth > 32) {
    *unknown = true;
    return;
  }
  View v(doc);
  bson_iter_t it;
  if (!v.ok || !bson_iter_init(&it, &v.doc)) return;
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if ((key == "$lookup" || key == "$graphLookup") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t from;
      if (bson_iter_recurse(&it, &from) && bson_iter_find(&from, "from")) {
        if (BSON_ITER_HOLDS_UTF8(&from))
          out.push_back(utf8_of(from));
        else
          *unknown = true;  // {db, coll}: another database
      }
    } else if (key == "$unionWith") {
      if (BSON_ITER_HOLDS_UTF8(&it)) {
        out.push_back(utf8_of(it));
      } else if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
        bson_iter_t coll;
        if (bson_iter_recurse(&it, &coll) && bson_iter_find(&coll, "coll") &&
            BSON_ITER_HOLDS_UTF8(&coll))
          out.push_back(utf8_of(coll));
        else
          *unknown = true;
      }
    }
    if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it))
      pipeline_reads(sub(it), out, unknown, depth + 1);
  }
}

// The collection an aggregate's $out / $merge writes, when the pipeline has one.
std::optional<Written> aggregate_output(Span pipeline, const std::string& db) {
  View v(pipeline);
  bson_iter_t stage;
  if (!v.ok || !bson_iter_init(&stage, &v.doc)) return std::nullopt;
  while (bson_iter_next(&stage)) {
    if (!BSON_ITER_HOLDS_DOCUMENT(&stage)) continue;
    bson_iter_t op;
    if (!bson_iter_recurse(&stage, &op) || !bson_iter_next(&op)) continue;
    auto key = key_of(op);
    if (key != "$out" && key != "$merge") continue;
    Written w{db, ""};
    if (BSON_ITER_HOLDS_UTF8(&op)) {
      w.collection = utf8_of(op);
    } else if (BSON_ITER_HOLDS_DOCUMENT(&op)) {
      bson_iter_t f;
      // $out: {db, coll}; $merge: {into: "c" | {db, coll}}
      bson_iter_t into;
      if (bson_iter_recurse(&op, &into) && bson_iter_find(&into, "into")) {
        if (BSON_ITER_HOLDS_UTF8(&into)) {
          w.collection = utf8_of(into);
          return w;
        }
        if (!BSON_ITER_HOLDS_DOCUMENT(&into) || !bson_iter_recurse(&into, &f)) return w;
      } else if (!bson_iter_recurse(&op, &f)) {
        return w;
      }
      while (bson_iter_next(&f)) {
        if (key_of(f) == "db" && BSON_ITER_HOLDS_UTF8(&f)) w.db = utf8_of(f);
        if (key_of(f) == "coll" && BSON_ITER_HOLDS_UTF8(&f)) w.collection = utf8_of(f);
      }
    }
    return w;
  }
  return std::nullopt;
}

// --- Access: what the listener opens to clients it does not authenticate ------------------

// Open to every client: what drivers send for CRUD, cursors, sessions and transactions, the
// collection and index DDL applications run through the drivers' own APIs (dropDatabase and
// renameCollection included: no more than drop and delete, which must be open), and the
// handshake and read-only diagnostics drivers and tools ask for. The rest, unknown commands and
// names in another case than the server's included, is refused unless mongo.allow_commands
// names it. saslStart and the like are answered locally (refused with 18).
constexpr auto kOpen = std::to_array<std::string_view>({"hello",
                                                        "isMaster",
                                                        "ismaster",
                                                        "ping",
                                                        "buildInfo",
                                                        "buildinfo",
                                                        "whatsmyuri",
                                                        "endSessions",
                                                        "saslStart",
                                                        "saslContinue",
                                                        "authenticate",
                                                        "logout",
                                                        "getLastError",
                                                        "connectionStatus",
                                                        "hostInfo",
                                                        "serverStatus",
                                                        "listCommands",
                                                        "find",
                                                        "aggregate",
                                                        "count",
                                                        "distinct",
                                                        "getMore",
                                                        "killCursors",
                                                        "explain",
                                                        "mapReduce",
                                                        "insert",
                                                        "update",
                                                        "delete",
                                                        "findAndModify",
                                                        "findandmodify",
                                                        "bulkWrite",
                                                        "listDatabases",
                                                        "listCollections",
                                                        "listIndexes",
                                                        "dbStats",
                                                        "dbstats",
                                                        "collStats",
                                                        "collstats",
                                                        "dataSize",
                                                        "datasize",
                                                        "create",
                                                        "drop",
                                                        "createIndexes",
                                                        "dropIndexes",
                                                        "deleteIndexes",
                                                        "collMod",
                                                        "renameCollection",
                                                        "dropDatabase",
                                                        "startSession",
                                                        "refreshSessions",
                                                        "commitTransaction",
                                                        "abortTransaction",
                                                        "listSearchIndexes",
                                                        "createSearchIndexes",
                                                        "updateSearchIndex",
                                                        "dropSearchIndex"});

constexpr std::string_view kUserAdmin = "user and role management";
constexpr std::string_view kOthers = "other clients' operations and sessions";
constexpr std::string_view kServerAdmin = "server administration";
constexpr auto kUserCommands = std::to_array<std::string_view>(
    {"createUser", "dropUser", "updateUser", "dropAllUsersFromDatabase", "grantRolesToUser",
     "revokeRolesFromUser", "createRole", "updateRole", "dropRole", "dropAllRolesFromDatabase",
     "grantPrivilegesToRole", "revokePrivilegesFromRole", "grantRolesToRole", "revokeRolesFromRole",
     "usersInfo", "rolesInfo", "invalidateUserCache"});
// What shows or ends other clients' work: their operations, sessions (whose ids authorize a
// session's transaction and cursors through sluice) and the log lines that name them.
constexpr auto kOthersCommands =
    std::to_array<std::string_view>({"currentOp", "killOp", "killSessions", "killAllSessions",
                                     "killAllSessionsByPattern", "getLog"});
constexpr auto kOthersStages =
    std::to_array<std::string_view>({"$currentOp", "$listSessions", "$listLocalSessions"});
constexpr auto kServerCommands = std::to_array<std::string_view>(
    {"shutdown", "fsync", "fsyncUnlock", "setParameter", "getParameter", "applyOps", "logRotate",
     "getCmdLineOpts", "setFeatureCompatibilityVersion", "compact", "reIndex", "validate",
     "profile", "top", "setDefaultRWConcern", "cleanupOrphaned", "dbHash", "lockInfo"});

constexpr std::string_view kInternal = "the servers' internal collections";

template <std::size_t N>
bool listed_in(const std::array<std::string_view, N>& table, std::string_view name) {
  return std::find(table.begin(), table.end(), name) != table.end();
}

// config (system.sessions, transactions: other clients' session ids), local (the oplog), and
// admin's system collections (users, roles, the keys that sign $clusterTime).
bool internal(const Written& ns) {
  return ns.db == "config" || ns.db == "local" ||
         (ns.db == "admin" && ns.collection.starts_with("system."));
}

// What the walk of a pipeline-bearing command found.
struct Found {
  std::string stage;  // a stage of kOthersStages
  bool internal = false;
  bool too_deep = false;
};

// Keys whose string value names a collection of the database in scope (explain's inner
// command included).
constexpr auto kCollectionKeys = std::to_array<std::string_view>(
    {"from", "coll", "$unionWith", "$out", "into", "viewOn", "out", "replace", "merge", "reduce",
     "find", "aggregate", "count", "distinct", "update", "delete", "findAndModify"});

// A {db: "x", coll: "y"} document ($lookup from, $out, $merge into, $unionWith, mapReduce out)
// names a collection of another database: that database, else the one in scope.
std::string scope_of(const bson_t* doc, const std::string& db) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "db") || !BSON_ITER_HOLDS_UTF8(&it)) return db;
  for (const char* key : {"coll", "replace", "merge", "reduce"}) {
    bson_iter_t c;
    if (bson_iter_init_find(&c, doc, key) && BSON_ITER_HOLDS_UTF8(&c)) return utf8_of(it);
  }
  return db;
}

// Every key of `doc` at any depth: refused stages, and collections in the servers' internal
// databases.
void walk(Span doc, const std::string& db, Found& f, int depth) {
  if (depth > 64) {
    f.too_deep = true;
    return;
  }
  View v(doc);
  bson_iter_t it;
  if (!v.ok || !bson_iter_init(&it, &v.doc)) return;
  const std::string scope = scope_of(&v.doc, db);
  if (internal({scope, ""})) f.internal = true;
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if (f.stage.empty() && listed_in(kOthersStages, key)) f.stage = std::string(key);
    if (BSON_ITER_HOLDS_UTF8(&it) && listed_in(kCollectionKeys, key) &&
        internal({scope, utf8_of(it)}))
      f.internal = true;
    if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it))
      walk(sub(it), scope, f, depth + 1);
  }
}

std::optional<Refusal> access(const Command& c, Span body) {
  // hello, ping, endSessions...: answered by sluice, whatever $db they name.
  const bool data = c.route != Route::kLocal;
  if (data &&
      (internal({c.db, c.collection}) ||
       std::any_of(c.writes.begin(), c.writes.end(), [](const Written& w) { return internal(w); })))
    return Refusal{std::string(kInternal), ""};
  if (listed_in(kUserCommands, c.name)) return Refusal{std::string(kUserAdmin), c.name};
  if (listed_in(kOthersCommands, c.name)) return Refusal{std::string(kOthers), c.name};
  if (listed_in(kServerCommands, c.name) || c.name.starts_with("replSet"))
    return Refusal{std::string(kServerAdmin), c.name};
  if (!listed_in(kOpen, c.name))
    return Refusal{"a command not on sluice's list of what drivers need", c.name};
  if (c.name != "aggregate" && c.name != "explain" && c.name != "create" && c.name != "collMod" &&
      c.name != "mapReduce")
    return std::nullopt;
  Found f;
  walk(body, c.db, f, 0);
  if (f.internal) return Refusal{std::string(kInternal), ""};
  if (!f.stage.empty()) return Refusal{std::string(kOthers), f.stage};
  if (f.too_deep) return Refusal{"a pipeline nested too deeply to check", ""};
  return std::nullopt;
}

std::optional<Mode> parse_mode(std::string_view s) {
  if (s == "primary") return Mode::kPrimary;
  if (s == "primaryPreferred") return Mode::kPrimaryPreferred;
  if (s == "secondary") return Mode::kSecondary;
  if (s == "secondaryPreferred") return Mode::kSecondaryPreferred;
  if (s == "nearest") return Mode::kNearest;
  return std::nullopt;
}

std::string parse_preference(const bson_iter_t& at, ReadPreference& p) {
  if (!BSON_ITER_HOLDS_DOCUMENT(&at)) return "$readPreference must be a document";
  bson_iter_t it;
  bson_iter_recurse(&at, &it);
  bool have_mode = false;
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if (key == "mode") {
      if (!BSON_ITER_HOLDS_UTF8(&it)) return "$readPreference.mode must be a string";
      auto mode = parse_mode(utf8_of(it));
      if (!mode) return "unknown $readPreference mode '" + utf8_of(it) + "'";
      p.mode = *mode;
      have_mode = true;
    } else if (key == "tags") {
      if (!BSON_ITER_HOLDS_ARRAY(&it)) return "$readPreference.tags must be an array";
      bson_iter_t set;
      bson_iter_recurse(&it, &set);
      while (bson_iter_next(&set)) {
        if (!BSON_ITER_HOLDS_DOCUMENT(&set)) return "each tag set must be a document";
        std::map<std::string, std::string> tags;
        bson_iter_t tag;
        bson_iter_recurse(&set, &tag);
        while (bson_iter_next(&tag)) {
          if (!BSON_ITER_HOLDS_UTF8(&tag)) return "tag values must be strings";
          tags[std::string(key_of(tag))] = utf8_of(tag);
        }
        p.tag_sets.push_back(std::move(tags));
      }
    } else if (key == "maxStalenessSeconds") {
      if (!BSON_ITER_HOLDS_NUMBER(&it)) return "maxStalenessSeconds must be a number";
      const double s = static_cast<double>(bson_iter_as_int64(&it));
      if (s != -1) p.max_staleness_seconds = s;
    }
  }
  if (!have_mode) return "$readPreference needs a mode";
  if (p.mode == Mode::kPrimary && (!p.tag_sets.empty() || p.max_staleness_seconds))
    return "mode primary does not allow tags or maxStalenessSeconds";
  if (p.max_staleness_seconds && *p.max_staleness_seconds <= 0)
    return "maxStalenessSeconds must be positive";
  return {};
}

}  // namespace

std::string_view to_string(Mode m) {
  switch (m) {
    case Mode::kPrimary:
      return "primary";
    case Mode::kPrimaryPreferred:
      return "primaryPreferred";
    case Mode::kSecondary:
      return "secondary";
    case Mode::kSecondaryPreferred:
      return "secondaryPreferred";
    case Mode::kNearest:
      return "nearest";
  }
  return "primary";
}

std::string_view command_label(std::string_view name) {
  for (const auto& e : kCommands) {
    if (e.name == name) return e.name;
  }
  for (auto w : kCollectionWrites) {
    if (w == name) return w;
  }
  for (std::string_view other : {"bulkWrite", "dropDatabase", "renameCollection", "listDatabases",
                                 "saslStart", "saslContinue", "serverStatus"}) {
    if (other == name) return other;
  }
  return "other";
}

Command analyze(Span body) {
  Command c;
  c.name = std::string(sluice::mongo::command_name(body));
  View v(body);
  bson_iter_t it;
  if (!v.ok || !bson_iter_init(&it, &v.doc)) return c;
  c.route = Route::kWrite;
  for (const auto& e : kCommands) {
    if (e.name == c.name) c.route = e.route;
  }
  std::optional<Span> pipeline;
  bool first = true;
  bool autocommit_false = false;
  bool write_concern_zero = false;
  bool historical = false;
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if (first) {
      first = false;
      if (BSON_ITER_HOLDS_UTF8(&it)) c.collection = utf8_of(it);
      if (c.name == "getMore" && BSON_ITER_HOLDS_INT64(&it))
        c.cursors.push_back(bson_iter_int64(&it));
      continue;
    }
    if (key == "$db" && BSON_ITER_HOLDS_UTF8(&it)) {
      c.db = utf8_of(it);
    } else if (key == "$readPreference") {
      c.pref_error = parse_preference(it, c.pref);
    } else if (key == "lsid" && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t id;
      if (bson_iter_recurse(&it, &id) && bson_iter_find(&id, "id") && BSON_ITER_HOLDS_BINARY(&id)) {
        bson_subtype_t subtype;
        std::uint32_t len = 0;
        const std::uint8_t* data = nullptr;
        bson_iter_binary(&id, &subtype, &len, &data);
        c.lsid.assign(reinterpret_cast<const char*>(data), len);
      }
    } else if (key == "autocommit") {
      autocommit_false = !truthy(it);
    } else if (key == "startTransaction") {
      c.starts_transaction = truthy(it);
    } else if (key == "pipeline" && BSON_ITER_HOLDS_ARRAY(&it)) {
      pipeline = sub(it);
    } else if (key == "cursors" && c.name == "killCursors" && BSON_ITER_HOLDS_ARRAY(&it)) {
      bson_iter_t id;
      bson_iter_recurse(&it, &id);
      while (bson_iter_next(&id)) {
        if (BSON_ITER_HOLDS_INT64(&id)) c.cursors.push_back(bson_iter_int64(&id));
      }
    } else if (key == "readConcern" && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      // afterClusterTime is met by any entry under the current versions (a write through sluice
      // bumps them before its client can read); atClusterTime and snapshot read the past.
      bson_iter_t rc;
      bson_iter_recurse(&it, &rc);
      while (bson_iter_next(&rc)) {
        if (key_of(rc) == "level" && BSON_ITER_HOLDS_UTF8(&rc)) c.read_concern = utf8_of(rc);
        if (key_of(rc) == "atClusterTime") historical = true;
      }
    } else if (key == "writeConcern" && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t w;
      if (bson_iter_recurse(&it, &w) && bson_iter_find(&w, "w") && BSON_ITER_HOLDS_NUMBER(&w))
        write_concern_zero = bson_iter_as_int64(&w) == 0;
    } else if (key == "to" && c.name == "renameCollection" && BSON_ITER_HOLDS_UTF8(&it)) {
      if (auto w = namespace_of(utf8_of(it))) c.writes.push_back(*w);
    } else if (key == "nsInfo" && c.name == "bulkWrite" && BSON_ITER_HOLDS_ARRAY(&it)) {
      bson_iter_t ns;
      bson_iter_recurse(&it, &ns);
      while (bson_iter_next(&ns)) {
        bson_iter_t f;
        if (BSON_ITER_HOLDS_DOCUMENT(&ns) && bson_iter_recurse(&ns, &f) &&
            bson_iter_find(&f, "ns") && BSON_ITER_HOLDS_UTF8(&f)) {
          if (auto w = namespace_of(utf8_of(f))) c.writes.push_back(*w);
        }
      }
    }
  }
  c.in_transaction = autocommit_false;
  c.unacknowledged = write_concern_zero;
  std::optional<Written> output;
  if (c.name == "aggregate" && pipeline) output = aggregate_output(*pipeline, c.db);
  if (output) {
    c.route = Route::kWrite;
    c.writes.push_back(*output);
  }
  const auto listed = [&](const auto& table) {
    return std::find(table.begin(), table.end(), c.name) != table.end();
  };
  if (c.name == "renameCollection") {
    // {renameCollection: "db.a", to: "db.b"} on admin: both names change.
    if (auto w = namespace_of(c.collection)) c.writes.push_back(*w);
    if (c.writes.size() < 2) c.writes = {Written{"*", ""}};  // unreadable: everything
  } else if (c.route == Route::kWrite && c.writes.empty() && !listed(kNoDataChange)) {
    if (listed(kCollectionWrites) && !c.collection.empty())
      c.writes.push_back({c.db, c.collection});
    else if (c.name == "bulkWrite" || c.db == "admin" || c.db.empty())
      c.writes.push_back({"*", ""});  // applyOps and the like reach any database
    else
      c.writes.push_back({c.db, ""});  // dropDatabase, unknown commands
  }
  // Cacheable: a find or read-only aggregate on a named collection, outside a transaction, with
  // nothing in it whose result changes between identical runs.
  if (c.route == Route::kRead && !c.in_transaction && !c.collection.empty() &&
      (c.name == "find" || (c.name == "aggregate" && pipeline))) {
    bool unknown = false;
    c.reads.push_back(c.collection);
    if (pipeline) pipeline_reads(*pipeline, c.reads, &unknown);
    bool volatile_stage = false;
    for (auto s : kUncacheableStages) volatile_stage = volatile_stage || contains_bytes(body, s);
    volatile_stage = volatile_stage || contains_bytes(body, "$$CLUSTER_TIME") ||
                     contains_bytes(body, "tailable") || contains_bytes(body, "$where");
    c.cacheable = !unknown && !volatile_stage && c.pref_error.empty() && !historical &&
                  c.read_concern != "snapshot" && c.read_concern != "linearizable";
  }
  c.refusal = access(c, body);
  return c;
}

Selection select(const std::vector<ServerView>& servers, const ReadPreference& pref,
                 double max_staleness_floor_seconds, std::uint64_t turn) {
  Selection out;
  if (pref.max_staleness_seconds && *pref.max_staleness_seconds < max_staleness_floor_seconds) {
    out.code = 2;  // BadValue
    out.error = "maxStalenessSeconds must be at least " +
                std::to_string(static_cast<long long>(max_staleness_floor_seconds)) +
                " here (mongo.min_max_staleness)";
    return out;
  }
  std::optional<std::size_t> primary;
  for (std::size_t i = 0; i < servers.size(); ++i) {
    if (servers[i].primary && servers[i].up) primary = i;
  }
  auto eligible = [&](bool with_primary, bool with_secondaries) {
    std::vector<std::size_t> c;
    for (std::size_t i = 0; i < servers.size(); ++i) {
      const auto& s = servers[i];
      if (!s.up || (s.primary ? !with_primary : !with_secondaries)) continue;
      if (pref.max_staleness_seconds && !s.primary &&
          (!s.lag_seconds || *s.lag_seconds > *pref.max_staleness_seconds))
        continue;
      c.push_back(i);
    }
    // The first tag set that matches any server decides; an empty set matches every server.
    if (!pref.tag_sets.empty()) {
      std::vector<std::size_t> tagged;
      for (const auto& set : pref.tag_sets) {
        for (auto i : c) {
          const auto* tags = servers[i].tags;
          bool match = std::all_of(set.begin(), set.end(), [&](const auto& kv) {
            if (!tags) return false;
            auto t = tags->find(kv.first);
            return t != tags->end() && t->second == kv.second;
          });
          if (match) tagged.push_back(i);
        }
        if (!tagged.empty()) break;
      }
      c = std::move(tagged);
    }
    if (c.empty()) return c;
    // Latency window: within 15 ms of the nearest.
    double best = servers[c.front()].rtt_ms;
    for (auto i : c) best = std::min(best, servers[i].rtt_ms);
    std::erase_if(c, [&](std::size_t i) { return servers[i].rtt_ms > best + 15.0; });
    return c;
  };
  auto pick = [&](const std::vector<std::size_t>& c) -> std::optional<std::size_t> {
    if (c.empty()) return std::nullopt;
    return c[turn % c.size()];
  };
  switch (pref.mode) {
    case Mode::kPrimary:
      out.server = primary;
      break;
    case Mode::kPrimaryPreferred:
      out.server = primary ? primary : pick(eligible(false, true));
      break;
    case Mode::kSecondary:
      out.server = pick(eligible(false, true));
      break;
    case Mode::kSecondaryPreferred:
      out.server = pick(eligible(false, true));
      if (!out.server) out.server = primary;
      break;
    case Mode::kNearest:
      out.server = pick(eligible(true, true));
      break;
  }
  if (!out.server) {
    out.code = 133;  // FailedToSatisfyReadPreference
    out.error = "no server matches read preference " + std::string(to_string(pref.mode)) +
                (pref.mode == Mode::kPrimary || pref.mode == Mode::kPrimaryPreferred
                     ? ": the primary is unreachable"
                     : ": no reachable secondary within the tags and staleness bound");
  }
  return out;
}

std::string canonical_command(Span body) {
  static const std::set<std::string_view> kDropped{
      "lsid",       "$clusterTime",     "$readPreference",      "$db",       "txnNumber",
      "autocommit", "startTransaction", "readConcern",          "maxTimeMS", "comment",
      "apiVersion", "apiStrict",        "apiDeprecationErrors", "$audit",    "batchSize"};
  View v(body);
  bson_iter_t it;
  std::vector<std::pair<std::string_view, Span>> fields;  // key, the whole element
  if (!v.ok || !bson_iter_init(&it, &v.doc)) return {};
  const std::uint8_t* base = body.data();
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if (kDropped.contains(key)) continue;
    // An element is type byte, key, NUL, value: from the type byte to the next element.
    const std::size_t start = it.off;
    const std::size_t end = it.next_off;
    fields.emplace_back(key, Span(base + start, end - start));
  }
  // The command name stays first (it is what the command is); the rest sorted by key.
  std::sort(fields.begin() + (fields.empty() ? 0 : 1), fields.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string out;
  for (const auto& [k, bytes] : fields)
    out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return out;
}

ReplyFacts reply_facts(Span body) {
  ReplyFacts f;
  View v(body);
  bson_iter_t it;
  if (!v.ok || !bson_iter_init(&it, &v.doc)) return f;
  while (bson_iter_next(&it)) {
    auto key = key_of(it);
    if (key == "ok") {
      f.ok = BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_double(&it) == 1.0 : truthy(it);
    } else if (key == "cursor" && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t id;
      if (bson_iter_recurse(&it, &id) && bson_iter_find(&id, "id") && BSON_ITER_HOLDS_INT64(&id))
        f.cursor_id = bson_iter_int64(&id);
    } else if (key == "errorLabels" && BSON_ITER_HOLDS_ARRAY(&it)) {
      bson_iter_t l;
      bson_iter_recurse(&it, &l);
      while (bson_iter_next(&l)) {
        if (BSON_ITER_HOLDS_UTF8(&l) && utf8_of(l) == "TransientTransactionError")
          f.transient_txn_error = true;
      }
    }
  }
  return f;
}

}  // namespace sluice::routing::mongo
