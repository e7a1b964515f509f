// Admin console: PgBouncer's SHOW commands with PgBouncer 1.18's columns, sluice's SHOW QUERIES,
// and the operational commands. Simple query protocol only, like PgBouncer's. This file: the
// session's message loop and how results go on the wire.
#include "server/admin.hpp"

#include "server/admin_console.hpp"

namespace sluice::server {

namespace admin_detail {

namespace {

constexpr std::uint32_t kMaxAdminQuery = 64 * 1024;

}  // namespace

AdminResult error(std::string sqlstate, std::string message, std::string hint) {
  AdminResult r;
  r.sqlstate = std::move(sqlstate);
  r.error = std::move(message);
  r.hint = std::move(hint);
  return r;
}

AdminResult done(std::string tag) {
  AdminResult r;
  r.tag = std::move(tag);
  return r;
}

awaitable<std::string> AdminConsole::run() {
  bool skipping = false;  // after an extended-protocol message, until Sync
  for (;;) {
    auto m = co_await reader_.next(client_, false, kMaxAdminQuery);
    if (m.ec) co_return "client disconnected";
    if (m.bad) {
      send_error(error("08P01", "invalid message length on the admin console"));
      co_await flush();
      co_return "protocol violation";
    }
    if (m.frame.type == 'X') co_return "client terminated";
    if (m.frame.type == 'S') {
      skipping = false;
      pg::encode_ready_for_query(out_, 'I');
      co_await flush();
      continue;
    }
    if (m.frame.type != 'Q') {
      if (!skipping)
        send_error(error("0A000", "the sluice admin console supports only simple queries",
                         "use psql, or a driver's simple query mode"));
      skipping = true;
      co_await flush();
      continue;
    }
    auto sql = pg::decode_query(m.frame.body);
    std::string text = sql ? std::string(*sql) : std::string();
    auto result = co_await execute(text);
    write(result);
    pg::encode_ready_for_query(out_, 'I');
    if (!co_await flush()) co_return "client disconnected";
    if (stop_after_) co_return "admin SHUTDOWN";
  }
}

awaitable<bool> AdminConsole::flush() {
  pg::Buffer out = std::move(out_);
  out_.clear();
  auto ec = co_await client_.write_all(asio::buffer(out));
  co_return !ec;
}

void AdminConsole::send_error(const AdminResult& r) {
  pg::encode_error_response(out_, {"ERROR", r.sqlstate, r.error, {}, r.hint});
}

void AdminConsole::write(const AdminResult& r) {
  for (const auto& n : r.notices) pg::encode_notice_response(out_, {"NOTICE", "00000", n});
  if (!r.error.empty()) {
    send_error(r);
    return;
  }
  if (r.tag.empty()) {  // an empty query string
    pg::encode_empty_message(out_, 'I');
    return;
  }
  if (!r.columns.empty()) {
    pg::encode_row_description(out_, r.columns);
    std::vector<std::optional<std::string_view>> values;
    for (const auto& row : r.rows) {
      values.clear();
      for (const auto& v : row)
        values.emplace_back(v ? std::optional<std::string_view>(*v) : std::nullopt);
      pg::encode_data_row(out_, values);
    }
  }
  pg::encode_command_complete(out_, r.tag);
}

}  // namespace admin_detail

awaitable<std::string> run_admin_console(Stream& client, FramedReader& reader,
                                         std::shared_ptr<Runtime> rt, AdminClient who) {
  admin_detail::AdminConsole console(client, reader, std::move(rt), std::move(who));
  auto reason = co_await console.run();
  co_return reason;
}

}  // namespace sluice::server
