// A small libmongoc program driving sluice's Mongo listener through the acceptance operations of
// issue 8. Usage: mongo_c_client URI DB. Prints one line of figures; exits 1 at the first failed
// check, naming it.
#include <bson/bson.h>
#include <mongoc/mongoc.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what, const bson_error_t* e = nullptr) {
  std::fprintf(stderr, "FAILED: %s%s%s\n", what.c_str(), e ? ": " : "", e ? e->message : "");
  std::exit(1);
}

void check(bool ok, const std::string& what, const bson_error_t* e = nullptr) {
  if (!ok) die(what, e);
}

struct Doc {
  Doc() : b(bson_new()) {}
  explicit Doc(bson_t* owned) : b(owned) {}
  ~Doc() { bson_destroy(b); }
  Doc(const Doc&) = delete;
  Doc& operator=(const Doc&) = delete;
  bson_t* b;
};

// Storage libmongoc initializes as a reply (it must not hold a document already).
struct Reply {
  Reply() = default;
  ~Reply() { bson_destroy(&storage); }
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  bson_t storage = BSON_INITIALIZER;
  bson_t* b = &storage;
};

std::int64_t count(mongoc_collection_t* c, const bson_t* filter) {
  bson_error_t e;
  auto n = mongoc_collection_count_documents(c, filter, nullptr, nullptr, nullptr, &e);
  check(n >= 0, "count_documents", &e);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s URI DB\n", argv[0]);
    return 2;
  }
  mongoc_init();
  bson_error_t e;
  mongoc_uri_t* uri = mongoc_uri_new_with_error(argv[1], &e);
  check(uri != nullptr, "uri", &e);
  mongoc_client_t* client = mongoc_client_new_from_uri_with_error(uri, &e);
  check(client != nullptr, "client", &e);
  mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
  mongoc_client_set_appname(client, "sluice-c-test");
  const char* dbname = argv[2];

  {
    Doc ping(BCON_NEW("ping", BCON_INT32(1)));
    Reply reply;
    check(mongoc_client_command_simple(client, "admin", ping.b, nullptr, reply.b, &e), "ping", &e);
  }
  mongoc_collection_t* items = mongoc_client_get_collection(client, dbname, "citems");
  {
    Doc all;
    check(mongoc_collection_delete_many(items, all.b, nullptr, nullptr, &e), "clear", &e);
  }
  // insert_one, then insert_many of 1 000 documents (one message).
  {
    Doc d(BCON_NEW("_id", BCON_INT32(0), "n", BCON_INT32(0), "group", BCON_UTF8("g0")));
    check(mongoc_collection_insert_one(items, d.b, nullptr, nullptr, &e), "insert_one", &e);
  }
  {
    std::vector<bson_t*> docs;
    for (int i = 1; i <= 1000; ++i) {
      std::string g = "g" + std::to_string(i % 5);
      docs.push_back(
          BCON_NEW("_id", BCON_INT32(i), "n", BCON_INT32(i), "group", BCON_UTF8(g.c_str())));
    }
    Reply reply;
    bool ok = mongoc_collection_insert_many(items, const_cast<const bson_t**>(docs.data()),
                                            docs.size(), nullptr, reply.b, &e);
    for (auto* d : docs) bson_destroy(d);
    check(ok, "insert_many", &e);
    bson_iter_t it;
    check(bson_iter_init_find(&it, reply.b, "insertedCount") && bson_iter_as_int64(&it) == 1000,
          "insert_many inserted 1000");
  }
  // find with filter, sort, limit.
  {
    Doc filter(BCON_NEW("n", "{", "$gte", BCON_INT32(500), "}"));
    Doc opts(BCON_NEW("sort", "{", "n", BCON_INT32(-1), "}", "limit", BCON_INT64(5)));
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(items, filter.b, opts.b, nullptr);
    const bson_t* d;
    std::vector<int> got;
    while (mongoc_cursor_next(cur, &d)) {
      bson_iter_t it;
      if (bson_iter_init_find(&it, d, "n")) got.push_back(bson_iter_int32(&it));
    }
    check(!mongoc_cursor_error(cur, &e), "find", &e);
    mongoc_cursor_destroy(cur);
    check(got == std::vector<int>{1000, 999, 998, 997, 996}, "find sort/limit order");
  }
  // 20 000 documents through getMore batches.
  mongoc_collection_t* big = mongoc_client_get_collection(client, dbname, "cbig");
  {
    Doc all;
    check(mongoc_collection_delete_many(big, all.b, nullptr, nullptr, &e), "clear big", &e);
    for (int start = 0; start < 20000; start += 5000) {
      std::vector<bson_t*> docs;
      for (int i = start; i < start + 5000; ++i)
        docs.push_back(BCON_NEW("_id", BCON_INT32(i), "v", BCON_INT32(2 * i)));
      bool ok = mongoc_collection_insert_many(big, const_cast<const bson_t**>(docs.data()),
                                              docs.size(), nullptr, nullptr, &e);
      for (auto* d : docs) bson_destroy(d);
      check(ok, "insert big", &e);
    }
    Doc opts(BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}", "batchSize", BCON_INT32(1000)));
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(big, all.b, opts.b, nullptr);
    const bson_t* d;
    long long seen = 0, sum = 0;
    while (mongoc_cursor_next(cur, &d)) {
      bson_iter_t it;
      check(bson_iter_init_find(&it, d, "_id") && bson_iter_int32(&it) == seen, "big order");
      check(bson_iter_init_find(&it, d, "v"), "big v");
      sum += bson_iter_int32(&it);
      ++seen;
    }
    check(!mongoc_cursor_error(cur, &e), "big find", &e);
    mongoc_cursor_destroy(cur);
    check(seen == 20000 && sum == 19999LL * 20000, "20000 documents iterated");
  }
  // update, delete, count, distinct, aggregate.
  {
    Doc sel(BCON_NEW("group", BCON_UTF8("g1")));
    Doc upd(BCON_NEW("$set", "{", "flagged", BCON_BOOL(true), "}"));
    Reply reply;
    check(mongoc_collection_update_many(items, sel.b, upd.b, nullptr, reply.b, &e), "update", &e);
    bson_iter_t it;
    check(bson_iter_init_find(&it, reply.b, "modifiedCount") && bson_iter_as_int64(&it) == 200,
          "update modified 200");
    Doc flagged(BCON_NEW("flagged", BCON_BOOL(true)));
    check(count(items, flagged.b) == 200, "count after update");
    Doc g2(BCON_NEW("group", BCON_UTF8("g2")));
    Reply dreply;
    check(mongoc_collection_delete_many(items, g2.b, nullptr, dreply.b, &e), "delete", &e);
    check(bson_iter_init_find(&it, dreply.b, "deletedCount") && bson_iter_as_int64(&it) == 200,
          "deleted 200");
    Doc all;
    check(count(items, all.b) == 801, "count after delete");

    Doc distinct(BCON_NEW("distinct", BCON_UTF8("citems"), "key", BCON_UTF8("group")));
    Reply dr;
    check(mongoc_collection_read_command_with_opts(items, distinct.b, nullptr, nullptr, dr.b, &e),
          "distinct", &e);
    bson_iter_t values;
    check(bson_iter_init_find(&it, dr.b, "values") && BSON_ITER_HOLDS_ARRAY(&it) &&
              bson_iter_recurse(&it, &values),
          "distinct values");
    int n = 0;
    while (bson_iter_next(&values)) ++n;
    check(n == 4, "4 distinct groups");

    Doc pipeline(BCON_NEW("pipeline", "[", "{", "$match", "{", "n", "{", "$gt", BCON_INT32(0), "}",
                          "}", "}", "{", "$group", "{", "_id", BCON_UTF8("$group"), "c", "{",
                          "$sum", BCON_INT32(1), "}", "}", "}", "]"));
    mongoc_cursor_t* cur =
        mongoc_collection_aggregate(items, MONGOC_QUERY_NONE, pipeline.b, nullptr, nullptr);
    const bson_t* d;
    int groups = 0;
    while (mongoc_cursor_next(cur, &d)) {
      check(bson_iter_init_find(&it, d, "c") && bson_iter_as_int64(&it) == 200, "group count");
      ++groups;
    }
    check(!mongoc_cursor_error(cur, &e), "aggregate", &e);
    mongoc_cursor_destroy(cur);
    check(groups == 4, "4 groups");
  }
  // A transaction that commits and one that aborts.
  mongoc_collection_t* acc = mongoc_client_get_collection(client, dbname, "caccounts");
  {
    Doc all;
    check(mongoc_collection_delete_many(acc, all.b, nullptr, nullptr, &e), "clear accounts", &e);
    Doc a(BCON_NEW("_id", BCON_UTF8("a"), "bal", BCON_INT32(100)));
    check(mongoc_collection_insert_one(acc, a.b, nullptr, nullptr, &e), "insert a", &e);
    for (bool commit : {true, false}) {
      mongoc_client_session_t* s = mongoc_client_start_session(client, nullptr, &e);
      check(s != nullptr, "start_session", &e);
      check(mongoc_client_session_start_transaction(s, nullptr, &e), "start_transaction", &e);
      Doc opts;
      check(mongoc_client_session_append(s, opts.b, &e), "session append", &e);
      Doc sel(BCON_NEW("_id", BCON_UTF8("a")));
      Doc inc(BCON_NEW("$inc", "{", "bal", BCON_INT32(-10), "}"));
      check(mongoc_collection_update_one(acc, sel.b, inc.b, opts.b, nullptr, &e), "txn update", &e);
      Doc b(BCON_NEW("_id", BCON_UTF8(commit ? "b" : "c"), "bal", BCON_INT32(10)));
      check(mongoc_collection_insert_one(acc, b.b, opts.b, nullptr, &e), "txn insert", &e);
      if (commit)
        check(mongoc_client_session_commit_transaction(s, nullptr, &e), "commit", &e);
      else
        check(mongoc_client_session_abort_transaction(s, &e), "abort", &e);
      mongoc_client_session_destroy(s);
    }
    Doc all2;
    check(count(acc, all2.b) == 2, "commit kept b, abort dropped c");
    Doc sel(BCON_NEW("_id", BCON_UTF8("a")));
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(acc, sel.b, nullptr, nullptr);
    const bson_t* d;
    bson_iter_t it;
    check(mongoc_cursor_next(cur, &d) && bson_iter_init_find(&it, d, "bal") &&
              bson_iter_as_int64(&it) == 90,
          "balance 90 after one commit and one abort");
    mongoc_cursor_destroy(cur);
  }
  std::printf("{\"inserted\": 1001, \"iterated\": 20000, \"transactions\": \"commit+abort\"}\n");
  mongoc_collection_destroy(acc);
  mongoc_collection_destroy(big);
  mongoc_collection_destroy(items);
  mongoc_client_destroy(client);
  mongoc_uri_destroy(uri);
  mongoc_cleanup();
  return 0;
}
