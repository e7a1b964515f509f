// Extended-query protocol messages (Parse/Bind/Describe/Execute/Close and their replies): the
// decoders transaction pooling needs to track and rewrite statements, and the encoders it replays.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/pg/messages.hpp"

namespace sluice::pg {

// Parse 'P': statement name ("" = unnamed), query text, parameter type OIDs (0 = unspecified).
struct Parse {
  std::string_view name;
  std::string_view query;
  std::vector<std::uint32_t> param_types;
};
std::optional<Parse> decode_parse(Span body);
// The SQL text of a Query or a Parse: the one place the session's scans take it from (nullopt
// for other messages and malformed ones).
std::optional<std::string_view> query_text(const Frame& f);
void encode_parse(Buffer& out, std::string_view name, std::string_view query,
                  const std::vector<std::uint32_t>& param_types);

// Bind 'B': only the names are decoded; the rest of the body is forwarded untouched after them.
struct Bind {
  std::string_view portal;
  std::string_view statement;
  Span rest;  // format codes, parameter values, result formats, exactly as sent
};
std::optional<Bind> decode_bind(Span body);
// A Bind sluice sends itself: text parameters (nullopt = NULL), text results.
void encode_bind(Buffer& out, std::string_view portal, std::string_view statement,
                 const std::vector<std::optional<std::string>>& params);
// Re-encodes a Bind with another statement name (the server-side name of a client statement).
void encode_bind_renamed(Buffer& out, const Bind& bind, std::string_view statement);

// Describe 'D' and Close 'C': a kind byte ('S' statement or 'P' portal) and a name.
struct Target {
  char kind;
  std::string_view name;
};
std::optional<Target> decode_target(Span body);
void encode_describe(Buffer& out, Target t);
void encode_close(Buffer& out, Target t);

// Execute 'E': portal and a row limit (0 = all).
struct Execute {
  std::string_view portal;
  std::uint32_t max_rows;
};
std::optional<Execute> decode_execute(Span body);
void encode_execute(Buffer& out, Execute e);

void encode_sync(Buffer& out);
void encode_flush(Buffer& out);
// Backend replies sluice synthesizes when it answers for the server.
void encode_parse_complete(Buffer& out);
void encode_bind_complete(Buffer& out);
void encode_close_complete(Buffer& out);

}  // namespace sluice::pg
