// The admin console's commands other than SHOW: parsing, who may run what, and RELOAD, PAUSE,
// RESUME, DISABLE, ENABLE, KILL, RECONNECT and SHUTDOWN.
#include <spdlog/spdlog.h>

#include <cctype>

#include "server/admin_console.hpp"

namespace sluice::server::admin_detail {

namespace {

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// Words of a command, without a trailing semicolon; "quoted" words keep their case.
std::vector<std::string> words(std::string_view sql) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < sql.size()) {
    while (i < sql.size() && (std::isspace(static_cast<unsigned char>(sql[i])) || sql[i] == ';'))
      ++i;
    if (i >= sql.size()) break;
    std::string w;
    if (sql[i] == '"') {
      ++i;
      while (i < sql.size() && sql[i] != '"') w += sql[i++];
      ++i;
    } else {
      while (i < sql.size() && !std::isspace(static_cast<unsigned char>(sql[i])) && sql[i] != ';')
        w += sql[i++];
    }
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace

awaitable<AdminResult> AdminConsole::execute(const std::string& sql) {
  auto w = words(sql);
  if (w.empty()) co_return AdminResult{};
  auto cmd = upper(w[0]);
  std::string arg = w.size() > 1 ? w[1] : std::string();
  if (cmd == "SHOW") {
    if (w.size() != 2) co_return error("42601", "SHOW takes one word", "try SHOW HELP");
    co_return show(upper(arg));
  }
  if (!who_.full)
    co_return error("42501", "user \"" + who_.user + "\" may only run SHOW commands",
                    "list the user under admin.users for " + cmd);
  if (w.size() > 2) co_return error("42601", "too many arguments for " + cmd);
  spdlog::info("admin console: user {} runs {}", who_.user, sql);
  if (cmd == "RELOAD") {
    std::string failure = "reload is not available";
    if (rt_->reload) failure = rt_->reload();
    if (!failure.empty())
      co_return error("F0000", "reload failed: " + failure,
                      "fix the configuration file; the running one is kept");
    co_return done("RELOAD");
  }
  if (cmd == "PAUSE" || cmd == "KILL" || cmd == "RESUME" || cmd == "DISABLE" || cmd == "ENABLE" ||
      cmd == "RECONNECT") {
    if (!arg.empty() && !rt_->config()->database(arg))
      co_return error("3D000", "no such database: " + arg,
                      "name a database under databases: in the configuration");
    if ((cmd == "KILL" || cmd == "DISABLE" || cmd == "ENABLE") && arg.empty())
      co_return error("42601", cmd + " needs a database name");
  }
  if (cmd == "PAUSE") {
    auto r = co_await pause(arg);
    co_return r;
  }
  if (cmd == "RESUME") {
    rt_->control.resume(arg);
    spdlog::info("admin console: resumed {}", arg.empty() ? "every database" : arg);
    co_return done("RESUME");
  }
  if (cmd == "DISABLE" || cmd == "ENABLE") {
    rt_->control.set_disabled(arg, cmd == "DISABLE");
    co_return done(cmd);
  }
  if (cmd == "KILL") {
    auto r = co_await kill(arg);
    co_return r;
  }
  if (cmd == "RECONNECT") {
    for (auto& p : rt_->pools.of_database(arg)) p->reconnect();
    co_return done("RECONNECT");
  }
  if (cmd == "SHUTDOWN") {
    bool wait = upper(arg) == "WAIT_FOR_CLIENTS";
    if (!arg.empty() && !wait)
      co_return error("42601", "SHUTDOWN takes no argument or WAIT_FOR_CLIENTS");
    if (rt_->stop) rt_->stop(wait ? StopMode::kWaitForClients : StopMode::kImmediate);
    stop_after_ = !wait;
    co_return done("SHUTDOWN");
  }
  co_return error("42601", "unknown admin command: " + sql, "try SHOW HELP");
}

awaitable<AdminResult> AdminConsole::pause(std::string db) {
  rt_->control.pause(db);
  spdlog::info("admin console: pausing {}; waiting for transactions to finish",
               db.empty() ? "every database" : db);
  auto started = Clock::now();
  for (;;) {
    std::uint32_t busy = 0;
    for (auto& p : rt_->pools.of_database(db)) {
      auto s = p->snapshot(false);
      busy += s.active + s.tested + s.login;
    }
    if (busy == 0) break;
    co_await sleep_for(std::chrono::milliseconds(20));
    if (!rt_->control.paused(db)) co_return error("57014", "PAUSE ended by RESUME");
  }
  for (auto& p : rt_->pools.of_database(db)) p->close_idle();
  spdlog::info(
      "admin console: {} paused after {} ms", db.empty() ? "every database" : db,
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
  co_return done("PAUSE");
}

awaitable<AdminResult> AdminConsole::kill(std::string db) {
  rt_->control.pause(db);
  for (const auto& h : rt_->sessions()) {
    auto info = h->snapshot();
    if (info.admin || info.database() != db) continue;
    h->admin_kill = true;
    asio::post(h->ex, [h] {
      if (h->kill) h->kill();
    });
  }
  for (int i = 0; i < 100; ++i) {  // up to 2 s for the sessions to end
    bool left = false;
    for (const auto& h : rt_->sessions()) {
      auto info = h->snapshot();
      if (!info.admin && info.database() == db) left = true;
    }
    if (!left) break;
    co_await sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& p : rt_->pools.of_database(db)) p->close_idle();
  co_return done("KILL");
}

}  // namespace sluice::server::admin_detail
