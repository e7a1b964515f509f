// sluice's own libpq connections: parameters (TLS included), connect, ping, the function catalog.
#include "routing/libpq.hpp"

#include <cstdlib>
#include <vector>

namespace sluice::routing {

namespace {

// Notices (a replica's "terminating connection due to immediate shutdown") are not printed to
// stderr: the caller reports failures itself.
void ignore_notice(void*, const char*) {}

// Keyword/value arrays for PQconnectdbParams and PQpingParams, valid while `t` and `o` live.
struct Params {
  Params(const LibpqTarget& t, const LibpqOptions& o)
      : port(std::to_string(t.port)), timeout(std::to_string(o.connect_timeout_s)) {
    add("host", t.host.c_str());
    add("port", port.c_str());
    add("dbname", t.dbname.c_str());
    if (!t.user.empty()) {
      add("user", t.user.c_str());
      add("password", t.password.c_str());
    }
    add("connect_timeout", timeout.c_str());
    add("application_name", o.application_name);
    add("sslmode", t.sslmode.c_str());
    if (!t.sslrootcert.empty()) add("sslrootcert", t.sslrootcert.c_str());
    if (o.options) add("options", o.options);
    if (o.replication) add("replication", o.replication);
    keys.push_back(nullptr);
    values.push_back(nullptr);
  }
  void add(const char* k, const char* v) {
    keys.push_back(k);
    values.push_back(v);
  }
  std::string port;
  std::string timeout;
  std::vector<const char*> keys;
  std::vector<const char*> values;
};

}  // namespace

void apply_server_tls(LibpqTarget& t, const config::Tls& tls) {
  switch (tls.server_tls) {
    case config::ServerTls::kDisable:
      t.sslmode = "disable";
      break;
    case config::ServerTls::kPrefer:
      t.sslmode = "prefer";
      break;
    case config::ServerTls::kRequire:
      t.sslmode = "require";
      break;
    case config::ServerTls::kVerifyFull:
      t.sslmode = "verify-full";
      break;
  }
  // libpq checks the chain against sslrootcert for verify-full; for require a root file would
  // turn it into verify-ca, which sluice's own connections do not do either.
  t.sslrootcert = tls.server_tls == config::ServerTls::kVerifyFull ? tls.server_ca_file : "";
}

PgConnPtr libpq_connect(const LibpqTarget& t, const LibpqOptions& o) {
  Params p(t, o);
  PgConnPtr conn(PQconnectdbParams(p.keys.data(), p.values.data(), 0), PQfinish);
  if (conn) PQsetNoticeProcessor(conn.get(), ignore_notice, nullptr);
  return conn;
}

PGPing libpq_ping(const LibpqTarget& t, const LibpqOptions& o) {
  Params p(t, o);
  return PQpingParams(p.keys.data(), p.values.data(), 0);
}

std::shared_ptr<FunctionCatalog> load_function_catalog(PGconn* conn) {
  PGresult* r = PQexec(conn, std::string(kFunctionCatalogSql).c_str());
  std::shared_ptr<FunctionCatalog> catalog;
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    catalog = std::make_shared<FunctionCatalog>();
    for (int i = 0; i < PQntuples(r); ++i) {
      catalog->add(PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2)[0],
                   std::atoi(PQgetvalue(r, i, 3)), std::atoi(PQgetvalue(r, i, 4)),
                   PQgetvalue(r, i, 5)[0] == 't');
    }
  }
  PQclear(r);
  return catalog;
}

}  // namespace sluice::routing
