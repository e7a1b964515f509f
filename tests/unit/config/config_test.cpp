// Config loading: the documented example loads; every error names the key and the line.
#include "config/config.hpp"

#include <catch2/catch.hpp>
#include <cstdlib>

using namespace sluice::config;
using Catch::Matchers::Contains;

namespace {
const char* kExample = R"(listen:
  postgres: 127.0.0.1:6432
  http: 127.0.0.1:9930
databases:
  appdb:
    primary: { host: 127.0.0.1, port: 5432 }
    replicas:
      - { host: 127.0.0.1, port: 5433 }
users:
  - name: app
    password: ${SLUICE_TEST_PASSWORD}
pool:
  mode: transaction
  size: 20
cache:
  redis: redis://127.0.0.1:6379
)";

std::string error_of(const std::string& yaml) {
  try {
    load_string(yaml, "test.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("the documented example loads") {
  setenv("SLUICE_TEST_PASSWORD", "secret", 1);
  auto c = load_string(kExample);
  CHECK(c->listen_postgres.port == 6432);
  REQUIRE(c->listen_http);
  CHECK(c->listen_http->port == 9930);
  auto* db = c->database("appdb");
  REQUIRE(db);
  CHECK(db->primary.dbname == "appdb");
  CHECK(db->primary.port == 5432);
  REQUIRE(db->replicas.size() == 1);
  CHECK(db->replicas[0].port == 5433);
  auto* u = c->user("app");
  REQUIRE(u);
  CHECK(u->server_user == "app");
  CHECK(u->server_password == "secret");
  CHECK(u->md5_hash.starts_with("md5"));
  CHECK(c->pool.mode == PoolMode::kTransaction);
  CHECK(c->pool.size == 20);
  CHECK(c->cache.redis == "redis://127.0.0.1:6379");
  CHECK(c->pool_size_for(*db, *u) == 20);
}

TEST_CASE("a typo'd key names the key, the line and a suggestion") {
  auto e = error_of("databases:\n  appdb:\n    primary: {host: h}\npool:\n  sise: 3\n");
  CHECK_THAT(e, Contains("test.yaml:5"));
  CHECK_THAT(e, Contains("pool.sise"));
  CHECK_THAT(e, Contains("did you mean 'size'"));
}

TEST_CASE("bad values name the key and the line") {
  CHECK_THAT(error_of("databases:\n  d:\n    primary: {host: h, port: 99999}\nusers: []\n"),
             Contains("test.yaml:3: key 'databases.d.primary.port'"));
  CHECK_THAT(
      error_of("databases:\n  d:\n    primary: {host: h}\npool:\n  mode: sometimes\n"),
      Contains("test.yaml:5: key 'pool.mode': expected one of session | transaction | statement"));
  CHECK_THAT(error_of("databases:\n  d:\n    primary: {host: h}\nusers:\n  - name: u\n"),
             Contains("users[0].password"));
  CHECK_THAT(error_of("listen:\n  postgres: nope\ndatabases: {}\n"), Contains("listen.postgres"));
  CHECK_THAT(error_of("databases:\n  d:\n    primary: {port: 1}\n"),
             Contains("databases.d.primary.host"));
  CHECK_THAT(error_of("a: [\n"), Contains("invalid YAML"));
  CHECK_THAT(
      error_of(
          "databases:\n  d:\n    primary: {host: h}\nauth_type: trust\nshutdown_timeout: soon\n"),
      Contains("test.yaml:5: key 'shutdown_timeout'"));
}

TEST_CASE("missing environment variables are errors, defaults apply") {
  unsetenv("SLUICE_NOT_SET");
  CHECK_THAT(
      error_of("databases:\n  d:\n    primary: {host: h}\nusers:\n  - name: u\n    password: "
               "${SLUICE_NOT_SET}\n"),
      Contains(
          "test.yaml:6: key 'users[0].password': environment variable SLUICE_NOT_SET is not set"));
  auto c = load_string(
      "databases:\n  d:\n    primary: {host: h}\nusers:\n  - name: u\n    password: "
      "${SLUICE_NOT_SET:-pw}\n");
  CHECK(c->user("u")->server_password == "pw");
}

TEST_CASE("database names may come from the environment (the container image's config)") {
  setenv("SLUICE_TEST_DB", "orders", 1);
  auto c = load_string(
      "databases:\n  ${SLUICE_TEST_DB}:\n    primary: {host: h}\n  ${SLUICE_NOT_SET:-billing}:\n"
      "    primary: {host: h}\nauth_type: trust\n");
  REQUIRE(c->database("orders"));
  CHECK(c->database("orders")->primary.dbname == "orders");
  REQUIRE(c->database("billing"));
  CHECK_THAT(error_of("databases:\n  ${SLUICE_NOT_SET}:\n    primary: {host: h}\n"),
             Contains("test.yaml:2: key 'databases': environment variable SLUICE_NOT_SET"));
  setenv("SLUICE_TEST_DB", "sluice", 1);
  CHECK_THAT(error_of("databases:\n  ${SLUICE_TEST_DB}:\n    primary: {host: h}\n"),
             Contains("test.yaml:2: key 'databases.sluice': the name 'sluice' is reserved"));
  setenv("SLUICE_TEST_DB", "billing", 1);
  CHECK_THAT(error_of("databases:\n  billing:\n    primary: {host: h}\n  ${SLUICE_TEST_DB}:\n"
                      "    primary: {host: h}\n"),
             Contains("test.yaml:4: key 'databases.billing': is listed twice"));
  unsetenv("SLUICE_TEST_DB");
}

TEST_CASE("SCRAM verifiers and md5 hashes are accepted as passwords") {
  auto c = load_string(
      "databases:\n  d:\n    primary: {host: h}\nusers:\n"
      "  - name: a\n    password: SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
      "  - name: b\n    password: md5" +
      std::string(32, 'a') + "\n");
  CHECK(c->user("a")->scram.iterations == 4096);
  CHECK(c->user("a")->server_password.empty());
  CHECK(c->user("b")->md5_hash == "md5" + std::string(32, 'a'));
  CHECK(c->user("b")->scram.salt.empty());
}

TEST_CASE("durations and per-database overrides") {
  auto c = load_string(
      "databases:\n  d:\n    primary: {host: h, dbname: real}\n    pool: {size: 3, mode: session}\n"
      "auth_type: trust\npool:\n  query_wait_timeout: 500ms\n  server_lifetime: 2m\n"
      "  client_login_timeout: 3s\n  query_timeout: 1m\nshutdown_timeout: 7\n");
  CHECK(c->pool.query_wait_timeout == Duration(500));
  CHECK(c->pool.server_lifetime == Duration(120'000));
  CHECK(c->pool.client_login_timeout == Duration(3000));
  CHECK(c->pool.query_timeout == Duration(60'000));
  CHECK(c->pool.client_idle_timeout == Duration(0));
  CHECK(c->shutdown_timeout == Duration(7000));
  CHECK(c->database("d")->primary.dbname == "real");
  CHECK(c->database("d")->pool_size == 3u);
}

TEST_CASE("transaction pooling settings: pinning, statement cache, database cap") {
  auto c = load_string(
      "auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n"
      "    pool: {max_db_connections: 4}\n  e:\n    primary: {host: h}\n"
      "pool:\n  pinning: error\n  max_prepared_statements: 50\n  max_db_connections: 9\n"
      "  park_idle_above: 0\n");
  CHECK(c->pool.pin_is_error);
  CHECK(c->pool.park_idle_above == 0u);
  CHECK(c->pool.max_prepared_statements == 50u);
  CHECK(c->max_db_connections_for(*c->database("d")) == 4u);
  CHECK(c->max_db_connections_for(*c->database("e")) == 9u);
  auto defaults = load_string("auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n");
  CHECK(!defaults->pool.pin_is_error);
  CHECK(defaults->pool.mode == PoolMode::kTransaction);
  CHECK(defaults->max_db_connections_for(*defaults->database("d")) == 0u);
  CHECK(defaults->pool.park_idle_above == 256u);
  CHECK_THAT(error_of("auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n"
                      "pool:\n  pinning: maybe\n"),
             Contains("test.yaml:6") && Contains("pool.pinning") && Contains("pin | error"));
}

TEST_CASE("observability keys: admin users, insights, http, health and stats periods") {
  const std::string base =
      "databases:\n  appdb:\n    primary: { host: 127.0.0.1 }\nusers:\n"
      "  - { name: app, password: x }\n  - { name: ops, password: y }\n";
  auto c = load_string(base +
                       "listen: { http: 0.0.0.0:9931, so_reuseport: true }\n"
                       "admin: { users: [ops], stats_users: [app] }\n"
                       "insights: { slow_query_threshold: 250ms, slow_log_interval: 10s, "
                       "explain: on, seq_scan_rows: 500, top_n: 5 }\n"
                       "health_check_interval: 500ms\nstats_period: 30s\n");
  REQUIRE(c->listen_http);
  CHECK(c->listen_http->to_string() == "0.0.0.0:9931");
  CHECK(c->so_reuseport);
  CHECK(c->is_admin("ops"));
  CHECK_FALSE(c->is_admin("app"));
  CHECK(c->is_stats_user("app"));
  CHECK(c->is_stats_user("ops"));
  CHECK_FALSE(c->is_stats_user("nobody"));
  CHECK(c->insights.slow_query_threshold == Duration(250));
  CHECK(c->insights.slow_log_interval == Duration(10'000));
  CHECK(c->insights.explain);
  CHECK(c->insights.seq_scan_rows == 500);
  CHECK(c->insights.top_n == 5);
  CHECK(c->health_check_interval == Duration(500));
  CHECK(c->stats_period == Duration(30'000));

  auto defaults = load_string(base);
  REQUIRE(defaults->listen_http);
  CHECK(defaults->listen_http->to_string() == "127.0.0.1:9930");
  CHECK(defaults->insights.slow_query_threshold == Duration(1'000));
  CHECK_FALSE(load_string(base + "listen: { http: off }\n")->listen_http);

  CHECK_THAT(error_of(base + "admin: { users: [nobody] }\n"),
             Contains("test.yaml:7: key 'admin.users[0]': user 'nobody' is not listed"));
  CHECK_THAT(error_of(base + "admin: { userz: [ops] }\n"), Contains("did you mean 'users'"));
  CHECK_THAT(error_of(base + "health_check_interval: 10ms\n"),
             Contains("key 'health_check_interval': must be at least 100ms"));
  CHECK_THAT(error_of(base + "insights: { explain: maybe }\n"),
             Contains("key 'insights.explain': expected one of true | false | on | off"));
  CHECK_THAT(error_of("databases:\n  sluice:\n    primary: { host: h }\nauth_type: trust\n"),
             Contains("key 'databases.sluice': the name 'sluice' is reserved"));
}

TEST_CASE("routing keys: policy, lag limits, read-your-writes, weights, the health user") {
  const std::string base =
      "databases:\n  appdb:\n    primary: { host: 127.0.0.1 }\n"
      "    replicas: [{ host: 127.0.0.2, weight: 3 }]\nusers:\n"
      "  - { name: ops, password: y }\n  - { name: app, password: x }\n"
      "admin: { users: [ops] }\n";
  auto c = load_string(base +
                       "routing: { load_balancing: least_outstanding, primary_reads: include, "
                       "primary_weight: 2, all_replicas_banned: error, max_replica_lag_bytes: "
                       "1000, max_replica_lag_seconds: 500ms, ban_time: 3s, read_your_writes: "
                       "window, read_your_writes_window: 250ms, catalog_refresh: 5m, "
                       "health_user: ops, read_consistency: eventual, max_consistency_wait: "
                       "50ms }\n");
  const auto& r = c->routing;
  CHECK(r.enabled);
  CHECK(r.load_balancing == Routing::Balance::kLeastOutstanding);
  CHECK(r.primary_reads == Routing::PrimaryReads::kInclude);
  CHECK(r.primary_weight == 2);
  CHECK(r.error_when_all_banned);
  CHECK(r.max_replica_lag_bytes == 1000);
  CHECK(r.max_replica_lag == Duration(500));
  CHECK(r.ban_time == Duration(3'000));
  CHECK(r.read_your_writes == Routing::ReadYourWrites::kWindow);
  CHECK(r.read_your_writes_window == Duration(250));
  CHECK(r.catalog_refresh == Duration(300'000));
  CHECK(r.read_consistency == Routing::Consistency::kEventual);
  CHECK(r.max_consistency_wait == Duration(50));
  CHECK(c->health_user()->name == "ops");
  CHECK(c->databases.at("appdb").replicas.at(0).weight == 3);

  auto defaults = load_string(base);
  CHECK(defaults->routing.read_your_writes == Routing::ReadYourWrites::kLsn);
  CHECK(defaults->routing.read_consistency == Routing::Consistency::kGlobal);
  CHECK(defaults->routing.max_consistency_wait == Duration(20));
  CHECK(defaults->routing.primary_reads == Routing::PrimaryReads::kFallbackOnly);
  CHECK(defaults->health_user()->name == "app");  // not the admin-only user
  CHECK_FALSE(load_string(base + "routing: { enabled: false }\n")->routing.enabled);

  CHECK_THAT(error_of(base + "routing: { read_your_writes: always }\n"),
             Contains("test.yaml:9: key 'routing.read_your_writes': expected one of off | "
                      "window | lsn"));
  CHECK_THAT(error_of(base + "routing: { read_consistency: strong }\n"),
             Contains("test.yaml:9: key 'routing.read_consistency': expected one of global | "
                      "session | eventual"));
  CHECK_THAT(error_of(base + "routing: { max_consistency_wait: 1m }\n"),
             Contains("key 'routing.max_consistency_wait': must be at most 10s"));
  CHECK_THAT(error_of(base + "routing: { health_user: nobody }\n"),
             Contains("key 'routing.health_user': user 'nobody' is not listed under users"));
  CHECK_THAT(error_of(base + "routing: { ban_tme: 1s }\n"), Contains("did you mean 'ban_time'"));
  CHECK_THAT(error_of(base + "routing: { catalog_refresh: 10ms }\n"),
             Contains("key 'routing.catalog_refresh': must be at least 1s"));
  CHECK_THAT(error_of("databases:\n  appdb:\n    primary: { host: h }\n"
                      "    replicas: [{ host: r, weight: 0 }]\nauth_type: trust\n"),
             Contains("key 'databases.appdb.replicas[0].weight': expected a whole number"));
}

TEST_CASE("cache keys: Redis, TTLs, sizes, rules, RLS; errors name the key") {
  const std::string base =
      "databases:\n  d:\n    primary: {host: h}\nusers:\n  - {name: u, password: p}\n";
  auto c = load_string(base +
                       "cache:\n  redis: redis://127.0.0.1:6379/1\n  mode: rules\n"
                       "  default_ttl: 30s\n  max_entry_bytes: 65536\n  l1_bytes: 0\n"
                       "  command_timeout: 50ms\n  rls: by_role\n  rules:\n"
                       "    - {name: products, tables: [public.products, Prices], ttl: 5m}\n"
                       "    - {tables: [audit], action: skip}\n"
                       "    - {fingerprints: [A1B2C3D4E5F60708]}\n");
  CHECK(c->cache.redis == "redis://127.0.0.1:6379/1");
  CHECK_FALSE(c->cache.all);
  CHECK(c->cache.default_ttl == std::chrono::seconds(30));
  CHECK(c->cache.max_entry_bytes == 65536);
  CHECK(c->cache.l1_bytes == 0);
  CHECK(c->cache.command_timeout == std::chrono::milliseconds(50));
  CHECK(c->cache.rls_by_role);
  CHECK(c->cache.invalidation);
  REQUIRE(c->cache.rules.size() == 3);
  CHECK(c->cache.rules[0].name == "products");
  CHECK(c->cache.rules[0].tables == std::vector<std::string>{"public.products", "prices"});
  CHECK(c->cache.rules[0].ttl == std::chrono::minutes(5));
  CHECK(c->cache.rules[1].name == "rule2");
  CHECK_FALSE(c->cache.rules[1].cache);
  CHECK(c->cache.rules[2].fingerprints == std::vector<std::string>{"a1b2c3d4e5f60708"});
  // Defaults with only a URL: everything cacheable, 60 s.
  auto d = load_string(base + "cache: {redis: 'redis://r:6379'}\n");
  CHECK(d->cache.all);
  CHECK(d->cache.default_ttl == std::chrono::seconds(60));
  CHECK(d->cache.enabled);
  CHECK_FALSE(d->cache.rls_by_role);
  CHECK_THAT(error_of(base + "cache:\n  redis: localhost:6379\n"),
             Contains("test.yaml:7: key 'cache.redis'"));
  CHECK_THAT(error_of(base + "cache:\n  rules:\n    - {name: x}\n"),
             Contains("cache.rules[0]': a rule needs tables or fingerprints"));
  CHECK_THAT(error_of(base + "cache:\n  rules:\n    - {tables: [t], action: maybe}\n"),
             Contains("cache.rules[0].action"));
  CHECK_THAT(error_of(base + "cache:\n  rls: always\n"), Contains("cache.rls"));
  CHECK_THAT(error_of(base + "cache:\n  ttl: 5s\n"), Contains("cache.ttl"));
}

TEST_CASE("cache: the WAL follower and admission; errors name the key and line") {
  const std::string base =
      "databases:\n  d:\n    primary: {host: h}\nusers:\n  - {name: u, password: p}\n";
  auto d = load_string(base + "cache: {redis: 'redis://r:6379'}\n");
  CHECK(d->cache.follow_wal);
  CHECK(d->cache.follows_wal());
  CHECK(d->cache.max_invalidation_lag == std::chrono::seconds(1));
  CHECK(d->cache.wal_slot == "sluice");
  CHECK(d->cache.wal_publication == "sluice");
  CHECK(d->cache.admit_repeated);
  CHECK(d->cache.admit_after == std::chrono::milliseconds(10));
  auto c = load_string(base +
                       "cache:\n  redis: redis://r:6379\n  follow_wal: false\n"
                       "  max_invalidation_lag: 250ms\n  wal_slot: proxy_cache\n"
                       "  wal_publication: everything\n  admission: always\n"
                       "  admit_after: 50ms\n");
  CHECK_FALSE(c->cache.follows_wal());
  CHECK(c->cache.max_invalidation_lag == std::chrono::milliseconds(250));
  CHECK(c->cache.wal_slot == "proxy_cache");
  CHECK(c->cache.wal_publication == "everything");
  CHECK_FALSE(c->cache.admit_repeated);
  CHECK(c->cache.admit_after == std::chrono::milliseconds(50));
  // Without Redis, or with invalidation off, nothing follows.
  CHECK_FALSE(load_string(base)->cache.follows_wal());
  CHECK_FALSE(load_string(base + "cache: {redis: 'redis://r:6379', invalidation: false}\n")
                  ->cache.follows_wal());
  CHECK_THAT(error_of(base + "cache:\n  max_invalidation_lag: 10ms\n"),
             Contains("test.yaml:7: key 'cache.max_invalidation_lag'"));
  CHECK_THAT(error_of(base + "cache:\n  wal_slot: My-Slot\n"),
             Contains("test.yaml:7: key 'cache.wal_slot'"));
  CHECK_THAT(error_of(base + "cache:\n  wal_publication: ''\n"), Contains("cache.wal_publication"));
  CHECK_THAT(error_of(base + "cache:\n  admission: sometimes\n"), Contains("cache.admission"));
}

TEST_CASE("mongo: section, static servers, uri and cache rules") {
  const std::string base = "auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n";
  CHECK_FALSE(load_string(base)->mongo);
  auto c = load_string(base +
                       "cache: {redis: 'redis://127.0.0.1:6379'}\n"
                       "listen: {mongo: '127.0.0.1:27999'}\n"
                       "mongo:\n"
                       "  servers:\n"
                       "    - {host: a, port: 27017, role: primary}\n"
                       "    - {host: b, role: secondary, tags: {dc: east}}\n"
                       "  pool_size: 7\n"
                       "  min_max_staleness: 30s\n"
                       "  cache:\n"
                       "    - {collections: ['shop.products', 'cat.*'], ttl: 5s}\n");
  REQUIRE(c->mongo);
  CHECK(c->mongo->listen.port == 27999);
  REQUIRE(c->mongo->servers.size() == 2);
  CHECK(c->mongo->servers[0].primary);
  CHECK(c->mongo->servers[1].port == 27017);
  CHECK(c->mongo->servers[1].tags.at("dc") == "east");
  CHECK(c->mongo->pool_size == 7);
  CHECK(c->mongo->max_staleness_floor.count() == 30'000);
  REQUIRE(c->mongo->cache.size() == 1);
  CHECK(c->mongo->cache[0].name == "mongo1");
  CHECK(c->mongo->cache[0].ttl.count() == 5'000);
  auto d = load_string(base + "mongo: {uri: 'mongodb://a:27017,b:27017/?replicaSet=rs0'}\n");
  CHECK(d->mongo->listen.port == 27018);  // the default listener

  CHECK(error_of(base + "mongo: {}\n").find("set exactly one of uri") != std::string::npos);
  CHECK(error_of(base + "mongo: {uri: 'mongodb://u:p@a/'}\n").find("credentials") !=
        std::string::npos);
  CHECK(error_of(base + "mongo:\n  servers:\n    - {host: a}\n")
            .find("test.yaml:7: key "
                  "'mongo.servers[0].role'") != std::string::npos);
  CHECK(error_of(base + "mongo:\n  servers:\n    - {host: a, role: primary}\n"
                        "    - {host: b, role: primary}\n")
            .find("more than one server has role: primary") != std::string::npos);
  CHECK(error_of(base + "mongo:\n  servers: [{host: a, role: primary}]\n"
                        "  cache: [{collections: [products]}]\n")
            .find("needs cache.redis") != std::string::npos);
  CHECK(error_of(base + "listen: {mongo: '127.0.0.1:1'}\n").find("no mongo: section") !=
        std::string::npos);
}

TEST_CASE("mongo: listen.mongo off loopback needs mongo.allow_remote") {
  const std::string base = "auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n";
  const std::string servers = "mongo:\n  servers: [{host: a, role: primary}]\n";
  for (const char* host : {"127.0.0.1:27018", "127.3.2.1:27018", "'[::1]:27018'", "localhost:27018",
                           "'[::ffff:127.0.0.1]:27018'"}) {
    INFO(host);
    auto c = load_string(base + "listen:\n  mongo: " + host + "\n" + servers);
    CHECK_FALSE(c->mongo->allow_remote);
  }
  for (const char* host : {"0.0.0.0:27018", "10.0.0.5:27018", "'[::]:27018'", "db.example:27018",
                           "128.0.0.1:27018", "127.0.0.1.example:27018"}) {
    INFO(host);
    auto e = error_of(base + "listen:\n  mongo: " + host + "\n" + servers);
    CHECK_THAT(e, Contains("test.yaml:6: key 'listen.mongo'"));
    CHECK_THAT(e, Contains("not a loopback address"));
    CHECK_THAT(e, Contains("mongo.allow_remote: true"));
  }
  auto remote =
      load_string(base + "listen:\n  mongo: 0.0.0.0:27018\n" + servers + "  allow_remote: true\n");
  CHECK(remote->mongo->allow_remote);
  CHECK_THAT(error_of(base + servers + "  allow_remote: perhaps\n"),
             Contains("test.yaml:7: key 'mongo.allow_remote'"));
}

TEST_CASE("mongo: allow_commands") {
  const std::string base =
      "auth_type: trust\ndatabases:\n  d:\n    primary: {host: h}\n"
      "mongo:\n  servers: [{host: a, role: primary}]\n";
  CHECK(load_string(base)->mongo->allow_commands.empty());
  auto c = load_string(base + "  allow_commands: [serverStatus, getLog, $currentOp]\n");
  CHECK(c->mongo->allow_commands ==
        std::vector<std::string>{"serverStatus", "getLog", "$currentOp"});
  CHECK_THAT(error_of(base + "  allow_commands: shutdown\n"),
             Contains("test.yaml:7: key 'mongo.allow_commands'"));
  CHECK_THAT(error_of(base + "  allow_commands: [ping, 'drop me']\n"),
             Contains("key 'mongo.allow_commands[1]'"));
  CHECK_THAT(error_of(base + "  allow_commands: [$sample]\n"),
             Contains("$currentOp, $listSessions or $listLocalSessions"));
}

TEST_CASE("hosts: and role: auto learn the roles; until then no primary is known") {
  auto c = load_string(
      "databases:\n  d:\n    hosts:\n      - {host: a, port: 5432}\n      - {host: b}\n"
      "failover_timeout: 5s\nusers:\n  - {name: u, password: p}\n");
  const auto& d = c->databases.at("d");
  REQUIRE(d.auto_roles());
  CHECK(d.hosts.size() == 2);
  CHECK(d.hosts[1].port == 5432);
  CHECK_FALSE(d.primary_known);
  CHECK(d.replicas.empty());
  CHECK(c->failover_timeout == std::chrono::seconds(5));
  auto a = load_string(
      "databases:\n  d:\n    primary: {host: a, role: auto}\n    replicas:\n"
      "      - {host: b, role: auto}\nusers:\n  - {name: u, password: p}\n");
  CHECK(a->databases.at("d").hosts.size() == 2);
  CHECK(a->failover_timeout == std::chrono::seconds(30));
  auto fixed = load_string(
      "databases:\n  d:\n    primary: {host: a, role: primary}\nusers:\n  - {name: u, password: "
      "p}\n");
  CHECK_FALSE(fixed->databases.at("d").auto_roles());
  CHECK(fixed->databases.at("d").primary_known);
}

TEST_CASE("hosts: errors name the key and the line") {
  CHECK_THAT(error_of("databases:\n  d:\n    primary: {host: a}\n    hosts:\n      - {host: b}\n"
                      "users:\n  - {name: u, password: p}\n"),
             Contains("test.yaml:5: key 'databases.d.hosts': replaces primary and replicas"));
  CHECK_THAT(error_of("databases:\n  d:\n    hosts:\n      - {host: a}\n      - {host: a}\n"
                      "users:\n  - {name: u, password: p}\n"),
             Contains("a:5432 is listed twice"));
  CHECK_THAT(error_of("databases:\n  d:\n    primary: {host: a, role: replica}\n"
                      "users:\n  - {name: u, password: p}\n"),
             Contains("key 'databases.d.primary.role': expected one of primary | auto"));
  CHECK_THAT(error_of("databases:\n  d:\n    hosts:\n      - {host: a, role: auto}\n"
                      "users:\n  - {name: u, password: p}\n"),
             Contains("databases.d.hosts[0].role': is not used here"));
  CHECK_THAT(error_of("databases:\n  d:\n    hosts:\n      - {host: a}\nauth_type: trust\n"),
             Contains("learns its servers' roles"));
}
