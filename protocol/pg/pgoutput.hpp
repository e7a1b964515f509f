// Logical replication decoding: streaming replication CopyData payloads and the pgoutput plugin's
// protocol-version-1 messages inside them (PostgreSQL 15 docs, sections 55.4 and 55.9).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "protocol/common/bytes.hpp"

namespace sluice::pg::pgoutput {

using bytes::Span;

// PostgreSQL's MaxTupleAttributeNumber: no relation or tuple has more columns.
inline constexpr std::uint16_t kMaxColumns = 1664;

// ---- streaming replication CopyData payloads, server -> client ----------------------------

struct XLogData {  // 'w'
  std::uint64_t start = 0;
  std::uint64_t wal_end = 0;
  std::int64_t send_time = 0;
  Span data;  // view into the payload: one pgoutput message
};
struct Keepalive {  // 'k'
  std::uint64_t wal_end = 0;
  std::int64_t send_time = 0;
  bool reply_requested = false;
};
using Streamed = std::variant<XLogData, Keepalive>;
// nullopt: malformed or unknown type.
std::optional<Streamed> decode_copy_data(Span payload);

// Standby status update 'r' (client -> server): written, flushed and applied positions, the
// client's clock (microseconds since 2000-01-01 UTC) and whether the server should reply at once.
// Returns the CopyData payload without the CopyData 'd' header (PQputCopyData adds that).
std::string encode_status_update(std::uint64_t written, std::uint64_t flushed,
                                 std::uint64_t applied, std::int64_t clock_us,
                                 bool reply_requested);

// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch) of a system clock time, and
// back (saturating at the ends of system_clock's range: wire values are untrusted).
std::int64_t pg_epoch_us(std::chrono::system_clock::time_point t);
std::chrono::system_clock::time_point from_pg_epoch_us(std::int64_t us);

// ---- pgoutput v1 logical replication messages (the `data` of an XLogData) -----------------

struct Begin {  // 'B'
  std::uint64_t final_lsn = 0;
  std::int64_t commit_time = 0;
  std::uint32_t xid = 0;
};
struct Commit {  // 'C'
  std::uint8_t flags = 0;
  std::uint64_t commit_lsn = 0;
  std::uint64_t end_lsn = 0;
  std::int64_t commit_time = 0;
};
struct Column {
  std::uint8_t flags = 0;  // 1: part of the replica identity key
  std::string_view name;
  std::uint32_t type = 0;
  std::int32_t typmod = 0;
};
struct Relation {  // 'R'
  std::uint32_t relid = 0;
  std::string_view nspname;  // empty for pg_catalog
  std::string_view relname;
  char replica_identity = 'd';  // pg_class.relreplident: d, n, f or i
  std::vector<Column> columns;
};
// 'I' insert, 'U' update, 'D' delete (tuple data validated, not kept).
struct Change {
  char kind = 'I';
  std::uint32_t relid = 0;
};
struct Truncate {            // 'T'
  std::uint8_t options = 0;  // 1 CASCADE, 2 RESTART IDENTITY
  std::vector<std::uint32_t> relids;
};
// 'O' origin, 'Y' type, 'M' logical decoding message: validated, ignored.
struct Other {
  char kind = 0;
};
using Message = std::variant<Begin, Commit, Relation, Change, Truncate, Other>;

// Views in the result point into `data`. nullopt when malformed; `why` (if given) then says what
// was wrong, e.g. "Relation: column count 2000 over the limit of 1664".
std::optional<Message> decode_message(Span data, std::string* why = nullptr);

}  // namespace sluice::pg::pgoutput
