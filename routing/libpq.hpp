// sluice's own libpq connections (health checks, catalog fetches, EXPLAIN): one way to open
// them, with the TLS of tls.server_tls, and the function catalog read over them.
#pragma once

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <string>

#include "config/config.hpp"
#include "routing/classify.hpp"

namespace sluice::routing {

// How sluice reaches one server: the address, the login and the TLS the configuration asks for.
struct LibpqTarget {
  std::string host;
  std::uint16_t port = 5432;
  std::string dbname;
  std::string user;  // empty: no login (PQping only)
  std::string password;
  std::string sslmode = "disable";  // libpq's words for tls.server_tls
  std::string sslrootcert;          // the CA for verify-full
  bool operator==(const LibpqTarget&) const = default;
};

// libpq's sslmode (and root certificate) for tls.server_tls: the same checks as sluice's pooled
// server connections, so no side connection is weaker than the data path.
void apply_server_tls(LibpqTarget& t, const config::Tls& tls);

struct LibpqOptions {
  const char* application_name = "sluice";
  int connect_timeout_s = 5;
  const char* options = nullptr;      // "-c name=value ...", or none
  const char* replication = nullptr;  // "database": a logical replication connection
};

using PgConnPtr = std::unique_ptr<PGconn, decltype(&PQfinish)>;
// A blocking connection (check PQstatus); notices are not printed to stderr.
PgConnPtr libpq_connect(const LibpqTarget& t, const LibpqOptions& o);
// Whether the server answers at all (no login).
PGPing libpq_ping(const LibpqTarget& t, const LibpqOptions& o);
// pg_proc.provolatile of every function (kFunctionCatalogSql); null when the query failed.
std::shared_ptr<FunctionCatalog> load_function_catalog(PGconn* conn);

}  // namespace sluice::routing
