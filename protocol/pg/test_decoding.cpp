// test_decoding's output lines: transaction boundaries and the relations a change names.
#include "protocol/pg/test_decoding.hpp"

namespace sluice::pg::test_decoding {

namespace {

bool fail(std::string* why, const char* what) {
  if (why) *why = what;
  return false;
}

// One identifier as quote_identifier() writes it: "..." with "" for a quote, or bare (the
// characters quote_identifier leaves unquoted: lower-case letters, digits, _ and $).
bool identifier(std::string_view& in, std::string& out, std::string* why) {
  out.clear();
  if (in.empty()) return fail(why, "an identifier is missing");
  if (in.front() == '"') {
    std::size_t i = 1;
    for (;;) {
      if (i >= in.size()) return fail(why, "a quoted identifier is not closed");
      if (in[i] == '"') {
        if (i + 1 < in.size() && in[i + 1] == '"') {
          out += '"';
          i += 2;
          continue;
        }
        break;
      }
      out += in[i++];
    }
    in.remove_prefix(i + 1);
  } else {
    std::size_t i = 0;
    while (i < in.size() &&
           ((in[i] >= 'a' && in[i] <= 'z') || (in[i] >= '0' && in[i] <= '9') || in[i] == '_' ||
            in[i] == '$' || static_cast<unsigned char>(in[i]) >= 0x80))
      ++i;
    out.assign(in.substr(0, i));
    in.remove_prefix(i);
  }
  if (out.empty()) return fail(why, "an identifier is empty");
  if (out.size() > 63 * 4) return fail(why, "an identifier is too long");
  return true;
}

bool consume(std::string_view& in, std::string_view prefix) {
  if (!in.starts_with(prefix)) return false;
  in.remove_prefix(prefix.size());
  return true;
}

// After "BEGIN"/"COMMIT": nothing, or " " and the rest of test_decoding's words (xid, time).
bool boundary_tail(std::string_view rest) {
  return rest.empty() || (rest.front() == ' ' && rest.find('\n') == std::string_view::npos);
}

std::optional<Message> change(std::string_view in, std::string* why) {
  Change c;
  for (;;) {
    if (c.relations.size() >= kMaxRelations) {
      fail(why, "too many relations");
      return std::nullopt;
    }
    QualifiedName n;
    if (!identifier(in, n.schema, why)) return std::nullopt;
    if (!consume(in, ".")) {
      fail(why, "a relation name is not schema-qualified");
      return std::nullopt;
    }
    if (!identifier(in, n.name, why)) return std::nullopt;
    c.relations.push_back(std::move(n));
    if (consume(in, ", ")) continue;
    if (consume(in, ": ")) break;
    fail(why, "a relation name is not followed by \": \"");
    return std::nullopt;
  }
  if (consume(in, "INSERT:")) {
    c.kind = 'I';
  } else if (consume(in, "UPDATE:")) {
    c.kind = 'U';
  } else if (consume(in, "DELETE:")) {
    c.kind = 'D';
  } else if (consume(in, "TRUNCATE:")) {
    c.kind = 'T';
  } else {
    fail(why, "unknown change kind");
    return std::nullopt;
  }
  if (c.kind != 'T' && c.relations.size() != 1) {
    fail(why, "a row change names one relation");
    return std::nullopt;
  }
  return c;
}

}  // namespace

std::optional<Message> decode(std::string_view line, std::string* why) {
  if (consume(line, "BEGIN")) {
    if (boundary_tail(line)) return Begin{};
  } else if (consume(line, "COMMIT")) {
    if (boundary_tail(line)) return Commit{};
  } else if (consume(line, "table ")) {
    return change(line, why);
  } else if (line.starts_with("message: ")) {
    return Other{};
  } else {
    fail(why, "not a line test_decoding writes");
    return std::nullopt;
  }
  fail(why, "unexpected text after a transaction boundary");
  return std::nullopt;
}

}  // namespace sluice::pg::test_decoding
