#include "routing/mongo.hpp"

#include <bson/bson.h>

#include <catch2/catch.hpp>
#include <vector>

namespace rm = sluice::routing::mongo;

namespace {

// A command document's bytes (libbson's BCON).
struct Body {
  explicit Body(bson_t* b) : doc(b) {}
  ~Body() { bson_destroy(doc); }
  Body(const Body&) = delete;
  Body& operator=(const Body&) = delete;
  rm::Span span() const { return {bson_get_data(doc), doc->len}; }
  bson_t* doc;
};

rm::Command analyze(bson_t* b) {
  Body body(b);
  return rm::analyze(body.span());
}

}  // namespace

TEST_CASE("mongo commands are classified by name", "[routing][mongo]") {
  auto find =
      analyze(BCON_NEW("find", BCON_UTF8("items"), "filter", "{", "}", "$db", BCON_UTF8("shop")));
  CHECK(find.route == rm::Route::kRead);
  CHECK(find.db == "shop");
  CHECK(find.collection == "items");
  CHECK(find.cacheable);
  CHECK(find.reads == std::vector<std::string>{"items"});
  CHECK(find.writes.empty());

  auto insert = analyze(BCON_NEW("insert", BCON_UTF8("items"), "$db", BCON_UTF8("shop")));
  CHECK(insert.route == rm::Route::kWrite);
  CHECK(insert.writes == std::vector<rm::Written>{{"shop", "items"}});
  CHECK_FALSE(insert.cacheable);

  auto drop_db = analyze(BCON_NEW("dropDatabase", BCON_INT32(1), "$db", BCON_UTF8("shop")));
  CHECK(drop_db.route == rm::Route::kWrite);
  CHECK(drop_db.writes == std::vector<rm::Written>{{"shop", ""}});  // the whole database

  auto rename = analyze(BCON_NEW("renameCollection", BCON_UTF8("shop.a"), "to", BCON_UTF8("shop.b"),
                                 "$db", BCON_UTF8("admin")));
  CHECK(rename.writes == std::vector<rm::Written>{{"shop", "b"}, {"shop", "a"}});
  auto apply = analyze(BCON_NEW("applyOps", "[", "]", "$db", BCON_UTF8("admin")));
  CHECK(apply.writes == std::vector<rm::Written>{{"*", ""}});  // any database
  auto status = analyze(BCON_NEW("serverStatus", BCON_INT32(1), "$db", BCON_UTF8("admin")));
  CHECK(status.route == rm::Route::kWrite);  // the primary...
  CHECK(status.writes.empty());              // ...and nothing to invalidate

  auto unknown = analyze(BCON_NEW("frobnicate", BCON_UTF8("x"), "$db", BCON_UTF8("shop")));
  CHECK(unknown.route == rm::Route::kWrite);
  CHECK(unknown.writes == std::vector<rm::Written>{{"shop", ""}});
  CHECK(rm::command_label("frobnicate") == "other");
  CHECK(rm::command_label("find") == "find");

  for (const char* local : {"hello", "isMaster", "ping", "endSessions"}) {
    auto c = analyze(BCON_NEW(local, BCON_INT32(1), "$db", BCON_UTF8("admin")));
    CHECK(c.route == rm::Route::kLocal);
  }
  auto more = analyze(BCON_NEW("getMore", BCON_INT64(42), "collection", BCON_UTF8("items"), "$db",
                               BCON_UTF8("shop")));
  CHECK(more.route == rm::Route::kCursor);
  CHECK(more.cursors == std::vector<std::int64_t>{42});
  auto kill = analyze(BCON_NEW("killCursors", BCON_UTF8("items"), "cursors", "[", BCON_INT64(1),
                               BCON_INT64(2), "]", "$db", BCON_UTF8("shop")));
  CHECK(kill.cursors == std::vector<std::int64_t>{1, 2});
}

TEST_CASE("mongo aggregate: $out/$merge write, lookups are read", "[routing][mongo]") {
  auto out =
      analyze(BCON_NEW("aggregate", BCON_UTF8("orders"), "pipeline", "[", "{", "$match", "{", "}",
                       "}", "{", "$out", BCON_UTF8("report"), "}", "]", "$db", BCON_UTF8("shop")));
  CHECK(out.route == rm::Route::kWrite);
  CHECK(out.writes == std::vector<rm::Written>{{"shop", "report"}});
  CHECK_FALSE(out.cacheable);

  auto merge = analyze(BCON_NEW("aggregate", BCON_UTF8("orders"), "pipeline", "[", "{", "$merge",
                                "{", "into", "{", "db", BCON_UTF8("other"), "coll",
                                BCON_UTF8("totals"), "}", "}", "}", "]", "$db", BCON_UTF8("shop")));
  CHECK(merge.route == rm::Route::kWrite);
  CHECK(merge.writes == std::vector<rm::Written>{{"other", "totals"}});

  auto lookup = analyze(BCON_NEW("aggregate", BCON_UTF8("orders"), "pipeline", "[", "{", "$lookup",
                                 "{", "from", BCON_UTF8("customers"), "}", "}", "{", "$unionWith",
                                 BCON_UTF8("archive"), "}", "]", "$db", BCON_UTF8("shop")));
  CHECK(lookup.route == rm::Route::kRead);
  CHECK(lookup.cacheable);
  CHECK(lookup.reads == std::vector<std::string>{"orders", "customers", "archive"});

  auto sample =
      analyze(BCON_NEW("aggregate", BCON_UTF8("orders"), "pipeline", "[", "{", "$sample", "{",
                       "size", BCON_INT32(3), "}", "}", "]", "$db", BCON_UTF8("shop")));
  CHECK(sample.route == rm::Route::kRead);
  CHECK_FALSE(sample.cacheable);  // random: a cached copy cannot stand for it
}

TEST_CASE("mongo sessions, transactions and read preferences are read", "[routing][mongo]") {
  const std::uint8_t uuid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  auto c = analyze(BCON_NEW("update", BCON_UTF8("a"), "lsid", "{", "id",
                            BCON_BIN(BSON_SUBTYPE_UUID, uuid, 16), "}", "txnNumber", BCON_INT64(1),
                            "startTransaction", BCON_BOOL(true), "autocommit", BCON_BOOL(false),
                            "$db", BCON_UTF8("shop")));
  CHECK(c.lsid.size() == 16);
  CHECK(c.in_transaction);
  CHECK(c.starts_transaction);
  auto in_txn_find = analyze(
      BCON_NEW("find", BCON_UTF8("a"), "autocommit", BCON_BOOL(false), "$db", BCON_UTF8("shop")));
  CHECK_FALSE(in_txn_find.cacheable);

  auto pref = analyze(BCON_NEW("find", BCON_UTF8("a"), "$readPreference", "{", "mode",
                               BCON_UTF8("secondaryPreferred"), "tags", "[", "{", "dc",
                               BCON_UTF8("east"), "}", "]", "maxStalenessSeconds", BCON_INT32(5),
                               "}", "$db", BCON_UTF8("shop")));
  CHECK(pref.pref_error.empty());
  CHECK(pref.pref.mode == rm::Mode::kSecondaryPreferred);
  REQUIRE(pref.pref.tag_sets.size() == 1);
  CHECK(pref.pref.tag_sets[0].at("dc") == "east");
  CHECK(pref.pref.max_staleness_seconds == 5);

  auto bad = analyze(BCON_NEW("find", BCON_UTF8("a"), "$readPreference", "{", "mode",
                              BCON_UTF8("sometimes"), "}", "$db", BCON_UTF8("shop")));
  CHECK(bad.pref_error.find("sometimes") != std::string::npos);
  auto primary_bound =
      analyze(BCON_NEW("find", BCON_UTF8("a"), "$readPreference", "{", "mode", BCON_UTF8("primary"),
                       "maxStalenessSeconds", BCON_INT32(90), "}", "$db", BCON_UTF8("shop")));
  CHECK_FALSE(primary_bound.pref_error.empty());
}

TEST_CASE("mongo read concerns: the past is not cached", "[routing][mongo]") {
  auto after =
      analyze(BCON_NEW("find", BCON_UTF8("a"), "readConcern", "{", "level", BCON_UTF8("majority"),
                       "afterClusterTime", BCON_TIMESTAMP(5, 1), "}", "$db", BCON_UTF8("shop")));
  CHECK(after.cacheable);
  CHECK(after.read_concern == "majority");
  auto at = analyze(BCON_NEW("find", BCON_UTF8("a"), "readConcern", "{", "atClusterTime",
                             BCON_TIMESTAMP(5, 1), "}", "$db", BCON_UTF8("shop")));
  CHECK_FALSE(at.cacheable);
  auto snapshot = analyze(BCON_NEW("find", BCON_UTF8("a"), "readConcern", "{", "level",
                                   BCON_UTF8("snapshot"), "}", "$db", BCON_UTF8("shop")));
  CHECK_FALSE(snapshot.cacheable);
}

TEST_CASE("mongo server selection", "[routing][mongo]") {
  const std::map<std::string, std::string> east{{"dc", "east"}}, west{{"dc", "west"}};
  std::vector<rm::ServerView> s{
      {true, true, 1.0, 0.0, nullptr},  // 0 primary
      {false, true, 2.0, 5.0, &east},   // 1 secondary, 5 s behind
      {false, true, 3.0, 50.0, &west},  // 2 secondary, 50 s behind
      {false, true, 40.0, 1.0, &east},  // 3 secondary, far away
  };
  rm::ReadPreference p;
  CHECK(rm::select(s, p, 0, 0).server == 0u);
  p.mode = rm::Mode::kSecondary;
  // Latency window: 3 (40 ms) is more than 15 ms above the nearest (2 ms); 1 and 2 alternate.
  CHECK(rm::select(s, p, 0, 0).server == 1u);
  CHECK(rm::select(s, p, 0, 1).server == 2u);
  p.tag_sets = {{{"dc", "west"}}};
  CHECK(rm::select(s, p, 0, 0).server == 2u);
  p.tag_sets = {{{"dc", "north"}}, {}};  // no north: the empty set matches all
  CHECK(rm::select(s, p, 0, 7).server.has_value());
  p.tag_sets.clear();
  p.max_staleness_seconds = 10;  // below mongos' 90 s floor: sluice measures lag itself
  CHECK(rm::select(s, p, 0, 1).server == 1u);
  auto floor = rm::select(s, p, 90, 0);
  CHECK_FALSE(floor.server);
  CHECK(floor.code == 2);
  p.max_staleness_seconds = 0.5;  // nobody is that fresh
  auto none = rm::select(s, p, 0, 0);
  CHECK_FALSE(none.server);
  CHECK(none.code == 133);
  p.mode = rm::Mode::kSecondaryPreferred;
  CHECK(rm::select(s, p, 0, 0).server == 0u);  // falls back to the primary
  // Unknown lag: not eligible under a bound, eligible without one.
  std::vector<rm::ServerView> unknown{{true, true, 1, 0.0, nullptr},
                                      {false, true, 1, std::nullopt, nullptr}};
  p.max_staleness_seconds = 100;
  CHECK(rm::select(unknown, p, 0, 0).server == 0u);
  p.max_staleness_seconds.reset();
  CHECK(rm::select(unknown, p, 0, 0).server == 1u);
  // The primary down: primary fails, primaryPreferred uses a secondary.
  unknown[0].up = false;
  p.mode = rm::Mode::kPrimary;
  CHECK(rm::select(unknown, p, 0, 0).code == 133);
  p.mode = rm::Mode::kPrimaryPreferred;
  CHECK(rm::select(unknown, p, 0, 0).server == 1u);
}

TEST_CASE("mongo cache key: sorted top level, session fields dropped", "[routing][mongo]") {
  const std::uint8_t uuid[16] = {};
  Body a(BCON_NEW("find", BCON_UTF8("c"), "filter", "{", "x", BCON_INT32(1), "y", BCON_INT32(2),
                  "}", "sort", "{", "b", BCON_INT32(1), "a", BCON_INT32(1), "}", "lsid", "{", "id",
                  BCON_BIN(BSON_SUBTYPE_UUID, uuid, 16), "}", "$db", BCON_UTF8("shop")));
  Body b(BCON_NEW("find", BCON_UTF8("c"), "$db", BCON_UTF8("shop"), "sort", "{", "b", BCON_INT32(1),
                  "a", BCON_INT32(1), "}", "filter", "{", "x", BCON_INT32(1), "y", BCON_INT32(2),
                  "}"));
  CHECK(rm::canonical_command(a.span()) == rm::canonical_command(b.span()));
  // Nested order is kept: a different sort is a different key.
  Body c(BCON_NEW("find", BCON_UTF8("c"), "filter", "{", "x", BCON_INT32(1), "y", BCON_INT32(2),
                  "}", "sort", "{", "a", BCON_INT32(1), "b", BCON_INT32(1), "}", "$db",
                  BCON_UTF8("shop")));
  CHECK(rm::canonical_command(a.span()) != rm::canonical_command(c.span()));
}

TEST_CASE("mongo reply facts", "[routing][mongo]") {
  Body done(BCON_NEW("cursor", "{", "id", BCON_INT64(0), "ns", BCON_UTF8("s.c"), "firstBatch", "[",
                     "]", "}", "ok", BCON_DOUBLE(1)));
  auto f = rm::reply_facts(done.span());
  CHECK(f.ok);
  CHECK(f.cursor_id == 0);
  Body open(BCON_NEW("cursor", "{", "id", BCON_INT64(77), "}", "ok", BCON_INT32(1)));
  CHECK(rm::reply_facts(open.span()).cursor_id == 77);
  Body err(BCON_NEW("ok", BCON_DOUBLE(0), "errorLabels", "[",
                    BCON_UTF8("TransientTransactionError"), "]"));
  auto e = rm::reply_facts(err.span());
  CHECK_FALSE(e.ok);
  CHECK(e.transient_txn_error);
}

TEST_CASE("mongo allow-list: what drivers send is open", "[routing][mongo][access]") {
  const std::uint8_t uuid[16] = {7};
  for (const char* name : {"hello",
                           "isMaster",
                           "ismaster",
                           "ping",
                           "buildInfo",
                           "whatsmyuri",
                           "endSessions",
                           "saslStart",
                           "find",
                           "aggregate",
                           "count",
                           "distinct",
                           "getMore",
                           "killCursors",
                           "insert",
                           "update",
                           "delete",
                           "findAndModify",
                           "bulkWrite",
                           "explain",
                           "listDatabases",
                           "listCollections",
                           "listIndexes",
                           "dbStats",
                           "collStats",
                           "create",
                           "drop",
                           "createIndexes",
                           "dropIndexes",
                           "collMod",
                           "dropDatabase",
                           "commitTransaction",
                           "abortTransaction",
                           "startSession",
                           "refreshSessions",
                           "serverStatus",
                           "hostInfo",
                           "connectionStatus",
                           "listCommands"}) {
    auto c =
        analyze(BCON_NEW(name, BCON_UTF8("items"), "lsid", "{", "id",
                         BCON_BIN(BSON_SUBTYPE_UUID, uuid, 16), "}", "$db", BCON_UTF8("shop")));
    INFO(name);
    CHECK_FALSE(c.refusal);
  }
  auto rename = analyze(BCON_NEW("renameCollection", BCON_UTF8("shop.a"), "to", BCON_UTF8("shop.b"),
                                 "$db", BCON_UTF8("admin")));
  CHECK_FALSE(rename.refusal);
  // A pipeline with ordinary stages, lookups and a change stream.
  auto agg = analyze(BCON_NEW("aggregate", BCON_UTF8("orders"), "pipeline", "[", "{",
                              "$changeStream", "{", "}", "}", "{", "$lookup", "{", "from",
                              BCON_UTF8("customers"), "}", "}", "]", "$db", BCON_UTF8("shop")));
  CHECK_FALSE(agg.refusal);
}

TEST_CASE("mongo allow-list: administration is refused, by name", "[routing][mongo][access]") {
  const auto refused = [](bson_t* b) {
    auto c = analyze(b);
    return c.refusal.value_or(rm::Refusal{"(open)", ""});
  };
  auto shutdown = refused(BCON_NEW("shutdown", BCON_INT32(1), "$db", BCON_UTF8("admin")));
  CHECK(shutdown.allow_as == "shutdown");
  CHECK(shutdown.what == "server administration");
  auto user = refused(BCON_NEW("createUser", BCON_UTF8("eve"), "pwd", BCON_UTF8("x"), "roles", "[",
                               BCON_UTF8("root"), "]", "$db", BCON_UTF8("admin")));
  CHECK(user.allow_as == "createUser");
  CHECK(user.what == "user and role management");
  for (const char* name : {"dropUser", "updateUser", "grantRolesToUser", "createRole", "usersInfo",
                           "dropAllUsersFromDatabase"})
    CHECK(refused(BCON_NEW(name, BCON_UTF8("x"), "$db", BCON_UTF8("shop"))).what ==
          "user and role management");
  for (const char* name : {"fsync", "fsyncUnlock", "setParameter", "applyOps", "replSetReconfig",
                           "replSetStepDown", "replSetFreeze", "logRotate"})
    CHECK(refused(BCON_NEW(name, BCON_INT32(1), "$db", BCON_UTF8("admin"))).what ==
          "server administration");
  for (const char* name : {"currentOp", "killOp", "killSessions", "killAllSessions",
                           "killAllSessionsByPattern", "getLog"})
    CHECK(refused(BCON_NEW(name, BCON_INT32(1), "$db", BCON_UTF8("admin"))).what ==
          "other clients' operations and sessions");
  // Unknown commands, and names in another case than the server's, are not on the list.
  auto unknown = refused(BCON_NEW("frobnicate", BCON_INT32(1), "$db", BCON_UTF8("shop")));
  CHECK(unknown.allow_as == "frobnicate");
  CHECK(refused(BCON_NEW("Shutdown", BCON_INT32(1), "$db", BCON_UTF8("admin"))).allow_as ==
        "Shutdown");
}

TEST_CASE("mongo allow-list: stages that list other clients' sessions",
          "[routing][mongo][access]") {
  auto current =
      analyze(BCON_NEW("aggregate", BCON_INT32(1), "pipeline", "[", "{", "$currentOp", "{",
                       "allUsers", BCON_BOOL(true), "}", "}", "]", "$db", BCON_UTF8("admin")));
  REQUIRE(current.refusal);
  CHECK(current.refusal->allow_as == "$currentOp");
  CHECK(current.refusal->what == "other clients' operations and sessions");
  // Nested in a sub-pipeline, or under explain, it is found too.
  auto nested =
      analyze(BCON_NEW("aggregate", BCON_UTF8("c"), "pipeline", "[", "{", "$unionWith", "{", "coll",
                       BCON_UTF8("d"), "pipeline", "[", "{", "$listLocalSessions", "{", "}", "}",
                       "]", "}", "}", "]", "$db", BCON_UTF8("shop")));
  REQUIRE(nested.refusal);
  CHECK(nested.refusal->allow_as == "$listLocalSessions");
  auto explained =
      analyze(BCON_NEW("explain", "{", "aggregate", BCON_UTF8("system.sessions"), "pipeline", "[",
                       "{", "$listSessions", "{", "}", "}", "]", "}", "$db", BCON_UTF8("shop")));
  REQUIRE(explained.refusal);
  CHECK(explained.refusal->allow_as == "$listSessions");
  // A string value that merely looks like a stage is data.
  auto data =
      analyze(BCON_NEW("aggregate", BCON_UTF8("c"), "pipeline", "[", "{", "$match", "{", "op",
                       BCON_UTF8("$currentOp"), "}", "}", "]", "$db", BCON_UTF8("shop")));
  CHECK_FALSE(data.refusal);
}

TEST_CASE("mongo allow-list: the servers' internal databases", "[routing][mongo][access]") {
  const auto what = [](bson_t* b) {
    auto c = analyze(b);
    return c.refusal ? c.refusal->allow_as + "|" + c.refusal->what : std::string("open");
  };
  const std::string internal = "|the servers' internal collections";
  CHECK(what(BCON_NEW("find", BCON_UTF8("system.sessions"), "$db", BCON_UTF8("config"))) ==
        internal);
  CHECK(what(BCON_NEW("find", BCON_UTF8("oplog.rs"), "$db", BCON_UTF8("local"))) == internal);
  CHECK(what(BCON_NEW("find", BCON_UTF8("system.users"), "$db", BCON_UTF8("admin"))) == internal);
  CHECK(what(BCON_NEW("insert", BCON_UTF8("system.users"), "$db", BCON_UTF8("admin"))) == internal);
  // Reached from elsewhere: a lookup into another database, an $out, a rename.
  CHECK(what(BCON_NEW("aggregate", BCON_UTF8("c"), "pipeline", "[", "{", "$lookup", "{", "from",
                      "{", "db", BCON_UTF8("config"), "coll", BCON_UTF8("transactions"), "}", "}",
                      "}", "]", "$db", BCON_UTF8("shop"))) == internal);
  CHECK(what(BCON_NEW("aggregate", BCON_UTF8("c"), "pipeline", "[", "{", "$lookup", "{", "from",
                      BCON_UTF8("system.keys"), "}", "}", "]", "$db", BCON_UTF8("admin"))) ==
        internal);
  CHECK(what(BCON_NEW("aggregate", BCON_UTF8("c"), "pipeline", "[", "{", "$out", "{", "db",
                      BCON_UTF8("local"), "coll", BCON_UTF8("x"), "}", "}", "]", "$db",
                      BCON_UTF8("shop"))) == internal);
  CHECK(what(BCON_NEW("renameCollection", BCON_UTF8("shop.a"), "to",
                      BCON_UTF8("admin.system.roles"), "$db", BCON_UTF8("admin"))) == internal);
  // An application's own collections named like that elsewhere are its own.
  CHECK(what(BCON_NEW("find", BCON_UTF8("system.views"), "$db", BCON_UTF8("shop"))) == "open");
  CHECK(what(BCON_NEW("listDatabases", BCON_INT32(1), "$db", BCON_UTF8("admin"))) == "open");
}
