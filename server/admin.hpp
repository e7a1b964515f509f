// The admin console: the special database "sluice", spoken to over the Postgres protocol with
// PgBouncer-compatible SHOW commands and controls (PAUSE, RESUME, RELOAD, KILL, SHUTDOWN...).
#pragma once

#include <memory>
#include <string>

#include "server/framed_reader.hpp"
#include "server/runtime.hpp"
#include "server/stream.hpp"

namespace sluice::server {

inline constexpr std::string_view kAdminDatabase = "sluice";

struct AdminClient {
  std::string user;
  bool full = false;  // admin.users: every command; stats_users: SHOW only
};

// Serves one logged-in admin client until it terminates; returns why the session ended.
// The caller has sent AuthenticationOk.
awaitable<std::string> run_admin_console(Stream& client, FramedReader& reader,
                                         std::shared_ptr<Runtime> rt, AdminClient who);

// One admin command's text result (for tests and SHOW output): columns and rows.
struct AdminResult {
  std::vector<pg::Column> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;
  std::string tag;    // CommandComplete tag
  std::string error;  // non-empty: an ErrorResponse with `sqlstate`
  std::string sqlstate;
  std::string hint;
  std::vector<std::string> notices;
};

}  // namespace sluice::server
