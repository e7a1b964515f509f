// The WAL follower's threads: follow the stream (test_decoding or pgoutput), bump at each commit,
// acknowledge the slot only after the bump landed, and stamp how fresh the versions are.
#include "server/wal_follower.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <set>
#include <span>

#include "protocol/pg/test_decoding.hpp"
#include "server/wal_worker.hpp"

namespace sluice::server {

namespace td = pg::test_decoding;

using wal::query;
using wal::Result;
using wal::wall_ms;

void WalFollower::Worker::set_state(const std::string& state, const std::string& error) {
  std::lock_guard lock(mu_);
  status_.state = state;
  status_.error = error;
  status_.leader = state == "following";
  status_.ns = ns_;
}

void WalFollower::Worker::fail(const std::string& why) {
  if (why != last_error_)
    spdlog::error(
        "cache: WAL follower of database \"{}\": {}; cache hits for \"{}\" stop until "
        "it follows (cache.follow_wal: false turns the follower off, and then writes "
        "made outside sluice are not seen by the cache)",
        t_.database, why, t_.database);
  last_error_ = why;
  set_state("failing", why);
}

void WalFollower::Worker::pause(std::chrono::milliseconds d) {
  const auto until = Clock::now() + d;
  while (!stop_ && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

void WalFollower::Worker::run() {
  while (!stop_) {
    follow_once();
    // The lease goes back whatever ended the attempt (a compare-and-delete: harmless when another
    // instance holds it). An instance that cannot follow waits longer before it asks again, so a
    // healthy one takes the lease.
    if (!ns_.empty()) hooks_.release(ns_);
    bool failing = false;
    {
      std::lock_guard lock(mu_);
      status_.leader = false;
      failing = status_.state == "failing";
    }
    pause(std::chrono::milliseconds(failing ? 2000 : 500));
  }
}

bool WalFollower::Worker::primary_current() {
  if (!hooks_.primary) return true;
  auto p = hooks_.primary(t_.database);
  if (!p) {
    fail("no primary is elected for database \"" + t_.database + "\" (a failover is under way)");
    return false;
  }
  if (p->first == t_.server.host && p->second == t_.server.port) return true;
  spdlog::warn("cache: WAL follower of database \"{}\": the primary is now {}:{}, was {}:{}",
               t_.database, p->first, p->second, t_.server.host, t_.server.port);
  t_.server.host = p->first;
  t_.server.port = p->second;
  return false;
}

void WalFollower::Worker::follow_once() {
  if (!primary_current() && !primary_current()) return;  // moved: follow the new one
  routing::LibpqOptions opts;
  opts.application_name = "sluice wal follower";
  opts.options = "-c statement_timeout=5000";  // a stuck probe must not hold the thread
  auto probe = routing::libpq_connect(t_.server, opts);
  if (!probe || PQstatus(probe.get()) != CONNECTION_OK) {
    fail(std::string("cannot connect to the primary: ") +
         (probe ? PQerrorMessage(probe.get()) : "out of memory"));
    return;
  }
  ns_ = cache::cluster_namespace(probe.get());
  if (ns_.empty()) return fail("cannot read the cluster's identity");
  // Another instance follows: ask for the lease every kStandbyPoll on this connection, so the
  // take-over comes within the lease's expiry plus one poll.
  while (!hooks_.lease(ns_)) {
    set_state("standby", "");
    last_error_.clear();
    pause(kStandbyPoll);
    if (stop_) return;
  }
  if (!choose_plugin(probe.get()) || !ensure_slot(probe.get())) return;
  if (epoch_pending_) {
    // Writes made before the slot existed were not followed: their cached results go.
    cache::Writes all;
    all.unknown = true;
    if (!probe_primary(probe.get()) || !hooks_.bump(ns_, t_.database, all, status().primary_lsn))
      return fail("cannot flush the database's cached results after creating the slot");
    epoch_pending_ = false;
  }
  {
    Result seg;
    std::string why;
    if (query(probe.get(),
              "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = "
              "'wal_segment_size'",
              {}, seg, why) &&
        seg.rows() == 1 && std::atoll(seg.get(0, 0)) > 0)
      segment_ = static_cast<std::uint64_t>(std::atoll(seg.get(0, 0)));
  }
  routing::LibpqTarget repl_target = t_.server;
  opts.options = nullptr;
  opts.replication = "database";
  auto repl = routing::libpq_connect(repl_target, opts);
  if (!repl || PQstatus(repl.get()) != CONNECTION_OK)
    return fail(std::string("cannot open a replication connection: ") +
                (repl ? PQerrorMessage(repl.get()) : "out of memory"));
  PGresult* r = PQexec(repl.get(), start_command().c_str());
  const bool copying = PQresultStatus(r) == PGRES_COPY_BOTH;
  std::string why = copying ? "" : PQresultErrorMessage(r);
  PQclear(r);
  if (!copying) return fail("START_REPLICATION failed: " + why);
  in_txn_ = false;
  unknown_ = false;
  writes_.clear();
  probes_.clear();
  relations_.clear();
  newest_relation_ = 0;  // another follower may have followed meanwhile: Redis has its reading
  if (!last_error_.empty() || status().state != "following")
    spdlog::info("cache: WAL follower of database \"{}\" follows slot {} ({})", t_.database,
                 t_.slot, pgoutput_ ? "pgoutput, publication " + t_.publication : "test_decoding");
  last_error_.clear();
  set_state("following", "");
  stream(repl.get(), probe.get());
}

bool WalFollower::Worker::stream(PGconn* repl, PGconn* probe) {
  auto next_probe = Clock::now();
  auto next_lease = Clock::now() + kLeaseRenew;
  auto next_status = Clock::now() + std::chrono::seconds(1);
  auto next_retained = Clock::now();
  while (!stop_) {
    const auto now = Clock::now();
    if (now >= next_lease) {
      if (!hooks_.lease(ns_)) {
        spdlog::warn(
            "cache: WAL follower of database \"{}\" lost its lease; another instance "
            "follows",
            t_.database);
        set_state("standby", "");
        return false;
      }
      next_lease = now + kLeaseRenew;
    }
    if (now >= next_probe) {
      if (!primary_current()) return false;  // learned roles: the primary moved
      if (!probe_primary(probe) || !send_status(repl, true)) return false;
      next_probe = now + kProbeInterval;
    }
    if (now >= next_retained) {
      read_retained(probe);
      next_retained = now + std::chrono::seconds(5);
    }
    if (now >= next_status) {
      if (!send_status(repl, false)) return false;
      next_status = now + std::chrono::seconds(1);
    }
    pollfd pfd{PQsocket(repl), POLLIN, 0};
    ::poll(&pfd, 1, 20);
    if (!PQconsumeInput(repl)) {
      fail(std::string("the replication connection failed: ") + PQerrorMessage(repl));
      return false;
    }
    for (;;) {
      char* buf = nullptr;
      const int n = PQgetCopyData(repl, &buf, 1);
      if (n == 0) break;
      if (n < 0) {
        PGresult* r = PQgetResult(repl);
        std::string why = r ? PQresultErrorMessage(r) : PQerrorMessage(repl);
        PQclear(r);
        fail("the replication stream ended: " + why);
        return false;
      }
      const bool ok = on_copy_data(
          {reinterpret_cast<const std::uint8_t*>(buf), static_cast<std::size_t>(n)}, repl);
      PQfreemem(buf);
      if (!ok) return false;
    }
  }
  send_status(repl, false);
  return true;
}

bool WalFollower::Worker::on_copy_data(std::span<const std::uint8_t> bytes, PGconn* repl) {
  auto streamed = po::decode_copy_data(bytes);
  if (!streamed) {
    fail("malformed replication message");
    return false;
  }
  if (const auto* k = std::get_if<po::Keepalive>(&*streamed)) {
    on_keepalive(k->wal_end);
    return !k->reply_requested || send_status(repl, false);
  }
  const auto& x = std::get<po::XLogData>(*streamed);
  if (!pgoutput_)
    return on_line({reinterpret_cast<const char*>(x.data.data()), x.data.size()}, x.start);
  std::string why;
  auto m = po::decode_message(x.data, &why);
  if (!m) {
    fail("malformed pgoutput message: " + why);
    return false;
  }
  return on_message(*m);
}

bool WalFollower::Worker::on_message(const po::Message& m) {
  if (std::holds_alternative<po::Begin>(m)) {
    in_txn_ = true;
    writes_.clear();
    unknown_ = false;
  } else if (const auto* c = std::get_if<po::Change>(&m)) {
    writes_.insert(c->relid);
  } else if (const auto* t = std::get_if<po::Truncate>(&m)) {
    writes_.insert(t->relids.begin(), t->relids.end());
    catalog_change_ = true;
  } else if (const auto* rel = std::get_if<po::Relation>(&m)) {
    std::string shape = std::string(rel->nspname) + '.' + std::string(rel->relname);
    for (const auto& col : rel->columns)
      shape += ',' + std::string(col.name) + ':' + std::to_string(col.type);
    auto [it, fresh] = relations_.try_emplace(rel->relid, shape);
    if (!fresh && it->second != shape) {
      it->second = shape;
      catalog_change_ = true;
    }
    // The catalog names this relation by another OID (dropped and created again outside
    // sluice), or not at all: its cached plans key other OIDs; the database's epoch covers them.
    auto known = hooks_.resolve(t_.database, std::string(rel->nspname), std::string(rel->relname));
    if (!known || *known != rel->relid) {
      unknown_ = true;
      if (!known || *known != 0) catalog_change_ = true;  // 0: being fetched again already
    }
  } else if (const auto* commit = std::get_if<po::Commit>(&m)) {
    in_txn_ = false;
    return bump_commit(commit->end_lsn);
  }
  return true;
}

// test_decoding: relations come by name, resolved through the cache's catalog; one that is not
// known (yet) bumps the database's epoch. A COMMIT line is written at the commit's end LSN.
bool WalFollower::Worker::on_line(std::string_view line, std::uint64_t at) {
  std::string why;
  auto m = td::decode(line, &why);
  if (!m) {
    fail("malformed test_decoding line (" + why + ")");
    return false;
  }
  if (std::holds_alternative<td::Begin>(*m)) {
    in_txn_ = true;
    writes_.clear();
    unknown_ = false;
  } else if (const auto* c = std::get_if<td::Change>(&*m)) {
    for (const auto& rel : c->relations) {
      auto oid = hooks_.resolve(t_.database, rel.schema, rel.name);
      if (oid && *oid != 0) {
        writes_.insert(*oid);
      } else {  // unknown: the database's epoch; created since the catalog was read: fetch it
        unknown_ = true;
        if (!oid) catalog_change_ = true;
      }
    }
    if (c->kind == 'T') catalog_change_ = true;
  } else if (std::holds_alternative<td::Commit>(*m)) {
    in_txn_ = false;
    return bump_commit(at);
  }
  return true;
}

// The commit's relations are bumped before the slot hears of it: a restart of sluice or of
// Redis streams it again. Retried until it lands (hits stop meanwhile: freshness stands still).
bool WalFollower::Worker::bump_commit(std::uint64_t end_lsn) {
  cache::Writes w;
  w.oids.assign(writes_.begin(), writes_.end());
  w.unknown = unknown_;
  w.catalog_change = catalog_change_;  // every instance fetches its catalog again
  writes_.clear();
  unknown_ = false;
  catalog_change_ = false;
  if (!w.empty() || w.catalog_change) {
    if (w.catalog_change) hooks_.catalog_changed(t_.database);
    if (!bump(w, end_lsn)) return false;
    std::lock_guard lock(mu_);
    ++status_.commits;
  }
  flushed_ = std::max(flushed_, end_lsn);
  on_keepalive(end_lsn);  // every commit before it is bumped
  return true;
}

// Retried until Redis has it (hits stop meanwhile: freshness stands still); false when the
// follower must let go (stop, or the lease is gone).
bool WalFollower::Worker::bump(const cache::Writes& w, std::uint64_t lsn) {
  while (!hooks_.bump(ns_, t_.database, w, lsn)) {
    {
      std::lock_guard lock(mu_);
      ++status_.bump_failures;
    }
    if (stop_) return false;
    pause(std::chrono::milliseconds(100));
    if (!hooks_.lease(ns_)) return false;
  }
  return true;
}

// Every transaction committed before `wal_end` has been sent and (outside a transaction)
// bumped: the probes it passes are fresh.
void WalFollower::Worker::on_keepalive(std::uint64_t wal_end) {
  if (in_txn_) return;
  flushed_ = std::max(flushed_, wal_end);
  std::optional<std::chrono::system_clock::time_point> fresh;
  while (!probes_.empty() && probes_.front().lsn <= wal_end) {
    fresh = probes_.front().at;
    probes_.pop_front();
  }
  {
    std::lock_guard lock(mu_);
    status_.flushed_lsn = flushed_;
    if (fresh) status_.fresh_ms = wall_ms(*fresh);
  }
  if (fresh) hooks_.fresh(ns_, wall_ms(*fresh));
}

bool WalFollower::Worker::send_status(PGconn* repl, bool reply_requested) {
  const auto payload =
      po::encode_status_update(flushed_, flushed_, flushed_,
                               po::pg_epoch_us(std::chrono::system_clock::now()), reply_requested);
  if (PQputCopyData(repl, payload.data(), static_cast<int>(payload.size())) != 1 ||
      PQflush(repl) != 0) {
    fail(std::string("cannot write to the replication connection: ") + PQerrorMessage(repl));
    return false;
  }
  return true;
}

WalFollower::WalFollower(std::vector<Target> targets, Hooks hooks) : hooks_(std::move(hooks)) {
  for (auto& t : targets) workers_.push_back(std::make_unique<Worker>(std::move(t), hooks_));
}

WalFollower::~WalFollower() {
  stop();
}

void WalFollower::start() {
  for (auto& w : workers_) w->start();
}

void WalFollower::request_stop() {
  for (auto& w : workers_) w->request_stop();
}

bool WalFollower::stopped() const {
  return std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->done(); });
}

void WalFollower::stop() {
  for (auto& w : workers_) w->stop();
}

std::map<std::string, FollowerStatus> WalFollower::status() const {
  std::map<std::string, FollowerStatus> out;
  for (const auto& w : workers_) out[w->database()] = w->status();
  return out;
}

}  // namespace sluice::server
