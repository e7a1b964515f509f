// The WAL follower's setup and probes: which plugin the slot streams, the slot itself, the
// START_REPLICATION command, and the primary's position (with the newest relation) and retained
// WAL read on the side connection.
#include <spdlog/spdlog.h>

#include <optional>

#include "server/wal_worker.hpp"

namespace sluice::server {

namespace wal {

bool query(PGconn* conn, const std::string& sql, const std::vector<std::string>& params,
           Result& out, std::string& why, std::string* sqlstate) {
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  out.r = PQexecParams(conn, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                       nullptr, nullptr, 0);
  const auto st = PQresultStatus(out.r);
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return true;
  why = PQresultErrorMessage(out.r);
  while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
  if (sqlstate) {
    const char* code = PQresultErrorField(out.r, PG_DIAG_SQLSTATE);
    *sqlstate = code ? code : "";
  }
  return false;
}

}  // namespace wal

namespace {

std::optional<std::uint64_t> parse_lsn(const char* text) {
  unsigned hi = 0, lo = 0;
  if (!text || std::sscanf(text, "%X/%X", &hi, &lo) != 2) return std::nullopt;
  return (std::uint64_t{hi} << 32) | lo;
}

}  // namespace

using wal::query;
using wal::quote_ident;
using wal::Result;

// The slot keeps the plugin it was made with. A new one streams pgoutput when the publication
// exists (it must cover every table), test_decoding otherwise: sluice never creates a publication
// itself, since FOR ALL TABLES makes UPDATE and DELETE fail on tables without a replica identity.
bool WalFollower::Worker::choose_plugin(PGconn* conn) {
  Result slot, pub;
  std::string why;
  if (!query(conn, "SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
             {t_.slot}, slot, why) ||
      !query(conn, "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1",
             {t_.publication}, pub, why)) {
    fail("cannot read the replication slots and publications: " + why);
    return false;
  }
  const bool have_pub = pub.rows() > 0;
  pgoutput_ = slot.rows() > 0 ? std::string(slot.get(0, 0)) == "pgoutput" : have_pub;
  if (!pgoutput_) return true;
  if (!have_pub) {
    fail("replication slot \"" + t_.slot + "\" streams pgoutput but publication \"" +
         t_.publication + "\" does not exist: create it (CREATE PUBLICATION " + t_.publication +
         " FOR ALL TABLES;) or drop the slot (SELECT pg_drop_replication_slot('" + t_.slot +
         "');) to follow with test_decoding");
    return false;
  }
  if (std::string(pub.get(0, 0)) != "t") {
    fail("publication \"" + t_.publication +
         "\" does not cover every table, so writes to the others would not reach the cache: "
         "make it FOR ALL TABLES, or drop it and the slot to follow with test_decoding");
    return false;
  }
  return true;
}

bool WalFollower::Worker::ensure_slot(PGconn* conn) {
  Result r;
  std::string why;
  if (!query(conn,
             "SELECT database, plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
             {t_.slot}, r, why)) {
    fail("cannot read pg_replication_slots: " + why);
    return false;
  }
  const std::string plugin = pgoutput_ ? "pgoutput" : "test_decoding";
  if (r.rows() > 0) {
    if (std::string(r.get(0, 0)) != t_.server.dbname || std::string(r.get(0, 1)) != plugin) {
      fail("replication slot \"" + t_.slot + "\" exists for database \"" + r.get(0, 0) +
           "\" with plugin \"" + r.get(0, 1) + "\": set cache.wal_slot to another prefix");
      return false;
    }
    return true;
  }
  Result c;
  std::string code;
  if (query(conn, "SELECT pg_catalog.pg_create_logical_replication_slot($1, $2)", {t_.slot, plugin},
            c, why, &code)) {
    epoch_pending_ = true;
    spdlog::info(
        "cache: created logical replication slot {} in database \"{}\"; it holds WAL "
        "back while no sluice follows it (docs: dropping the slot)",
        t_.slot, t_.database);
    return true;
  }
  if (code == "42501")
    fail("role \"" + t_.server.user + "\" may not create replication slot \"" + t_.slot + "\" (" +
         why + "): as a superuser run ALTER ROLE " + t_.server.user + " REPLICATION;");
  else
    fail("cannot create replication slot \"" + t_.slot + "\": " + why);
  return false;
}

std::string WalFollower::Worker::start_command() const {
  std::string cmd = "START_REPLICATION SLOT " + quote_ident(t_.slot) + " LOGICAL 0/0 ";
  if (pgoutput_)
    return cmd + "(proto_version '1', publication_names '" + quote_ident(t_.publication) + "')";
  return cmd + "(\"include-xids\" '0', \"skip-empty-xacts\" '1')";
}

// The primary's WAL insert position now: any commit acknowledged before this moment lies
// before it, so once the stream passes it, every such commit is bumped.
bool WalFollower::Worker::probe_primary(PGconn* probe) {
  const auto at = std::chrono::system_clock::now();
  Result r;
  std::string why;
  // With the position, the newest permanent relation: a table created (or dropped and created
  // again) outside sluice, which no stream message announces to every instance.
  if (!query(probe,
             "SELECT pg_catalog.pg_current_wal_insert_lsn(), (SELECT oid::bigint FROM "
             "pg_catalog.pg_class WHERE relpersistence = 'p' AND relkind IN ('r', 'p', 'v', 'm') "
             "ORDER BY oid DESC LIMIT 1)",
             {}, r, why) ||
      r.rows() != 1) {
    fail("cannot read the primary's WAL position: " + why);
    return false;
  }
  auto lsn = parse_lsn(r.get(0, 0));
  if (!lsn) return true;
  const auto newest = static_cast<std::uint64_t>(std::atoll(r.get(0, 1)));
  if (newest != newest_relation_) {
    // The baseline: this follower's last reading, or at its start the last follower's (in
    // Redis). A catalog loaded before this follower started may predate a table created since;
    // with no baseline the change cannot be ruled out.
    std::optional<std::uint64_t> before;
    if (newest_relation_ != 0)
      before = newest_relation_;
    else
      before = hooks_.newest_relation(ns_);
    if (!before || *before != newest) {
      // Every instance's catalog may name an old OID: the database's epoch and a fresh catalog
      // everywhere, before this reading can vouch for anything.
      cache::Writes w;
      w.unknown = true;
      w.catalog_change = true;
      hooks_.catalog_changed(t_.database);
      if (!bump(w, *lsn)) return false;
    }
    // Not recorded: the next probe looks again (and bumps again if it cannot tell).
    if (hooks_.note_newest_relation(ns_, newest)) newest_relation_ = newest;
  }
  // At the start of a page the insert position names the first byte after the page header,
  // where the stream's positions name the page boundary: nothing lies between the two.
  const auto in_page = *lsn % kWalPage;
  if (in_page == kShortPageHeader || (in_page == kLongPageHeader && *lsn % segment_ == in_page))
    *lsn -= in_page;
  if (probes_.size() > 600) probes_.pop_front();  // a minute behind: keep the newest
  probes_.push_back({at, *lsn});
  std::lock_guard lock(mu_);
  status_.primary_lsn = *lsn;
  return true;
}

void WalFollower::Worker::read_retained(PGconn* probe) {
  Result r;
  std::string why;
  if (!query(probe,
             "SELECT (pg_catalog.pg_current_wal_lsn() - restart_lsn)::bigint FROM "
             "pg_catalog.pg_replication_slots WHERE slot_name = $1",
             {t_.slot}, r, why) ||
      r.rows() != 1)
    return;
  std::lock_guard lock(mu_);
  status_.retained_bytes = std::atoll(r.get(0, 0));
}

}  // namespace sluice::server
