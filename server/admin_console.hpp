// The admin console's session class, shared by admin.cpp (the wire loop), admin_control.cpp
// (command dispatch and the operational commands) and admin_show.cpp (the SHOW commands).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "server/admin.hpp"

namespace sluice::server::admin_detail {

AdminResult error(std::string sqlstate, std::string message, std::string hint = {});
AdminResult done(std::string tag);

struct PoolRow {
  PoolSnapshot pool;
  std::uint32_t cl_active = 0, cl_waiting = 0;
  Clock::duration max_wait{};
};

class AdminConsole {
 public:
  AdminConsole(Stream& client, FramedReader& reader, std::shared_ptr<Runtime> rt, AdminClient who)
      : client_(client), reader_(reader), rt_(std::move(rt)), who_(std::move(who)) {}

  awaitable<std::string> run();

 private:
  // The wire (admin.cpp).
  awaitable<bool> flush();
  void send_error(const AdminResult& r);
  void write(const AdminResult& r);

  // Commands other than SHOW (admin_control.cpp).
  awaitable<AdminResult> execute(const std::string& sql);
  // Holds new transactions of `db` (every database when empty), waits until none holds a server
  // connection, then closes the idle ones: the databases can restart or switch over.
  awaitable<AdminResult> pause(std::string db);
  awaitable<AdminResult> kill(std::string db);

  // SHOW (admin_show.cpp).
  AdminResult show(const std::string& what);
  std::vector<PoolRow> pool_rows();
  AdminResult show_pools();
  AdminResult show_stats();
  AdminResult show_servers();
  AdminResult show_clients();
  AdminResult show_databases();
  AdminResult show_users();
  AdminResult show_config();
  AdminResult show_lists();
  AdminResult show_replicas();
  AdminResult show_hosts();
  AdminResult show_cache();
  AdminResult show_queries();

  Stream& client_;
  FramedReader& reader_;
  std::shared_ptr<Runtime> rt_;
  AdminClient who_;
  pg::Buffer out_;
  bool stop_after_ = false;
};

}  // namespace sluice::server::admin_detail
