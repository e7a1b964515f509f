// libFuzzer: the MongoDB wire decoder on untrusted bytes — frames (with the size cap), OP_MSG
// sections and checksums, OP_COMPRESSED, OP_QUERY, OP_REPLY, BSON validation. Properties: no
// crash, no read outside the input, decoded spans lie inside the frame, a decoded OP_MSG
// re-encodes to a message that decodes to the same body and sequence bytes and ids, a body sent
// back in OP_REPLY decodes to the same document; the routing analysis of a decoded body (command
// facts, cache key, reply facts) never crashes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "protocol/mongo/wire.hpp"
#include "routing/mongo.hpp"

using namespace sluice;

namespace {

bool inside(mongo::Span part, mongo::Span whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

bool same(mongo::Span a, mongo::Span b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// A reply document sluice sends back in OP_REPLY decodes as that one document.
void check_reply(mongo::Span document) {
  mongo::Buffer out;
  mongo::encode_reply(out, 3, 4, document);
  auto r = mongo::next_frame(out);
  auto* f = std::get_if<mongo::Frame>(&r);
  if (!f || f->header.op_code != mongo::kOpReply) __builtin_trap();
  auto d = mongo::decode_reply(*f);
  auto* reply = std::get_if<mongo::Reply>(&d);
  if (!reply || reply->documents.size() != 1 || !same(reply->documents[0], document))
    __builtin_trap();
}

void check_msg(const mongo::Frame& f) {
  auto d = mongo::decode_msg(f);
  auto* m = std::get_if<mongo::Msg>(&d);
  if (!m) return;
  if (!inside(m->body, f.body)) __builtin_trap();
  if (m->checksum.has_value() != ((m->flags & mongo::msg_flag::kChecksumPresent) != 0))
    __builtin_trap();
  check_reply(m->body);
  (void)mongo::command_name(m->body);
  // What the proxy reads of a body it forwards: routing facts, the cache key, reply facts.
  auto cmd = routing::mongo::analyze(m->body);
  if (cmd.cacheable && cmd.reads.empty()) __builtin_trap();
  (void)routing::mongo::canonical_command(m->body);
  (void)routing::mongo::reply_facts(m->body);
  mongo::Buffer again;
  mongo::encode_msg(again, 7, 9, m->flags & ~mongo::msg_flag::kMoreToCome, m->body, m->sequences);
  auto f2 = mongo::next_frame(again);
  auto* frame2 = std::get_if<mongo::Frame>(&f2);
  if (!frame2) __builtin_trap();
  auto d2 = mongo::decode_msg(*frame2);
  auto* m2 = std::get_if<mongo::Msg>(&d2);
  if (!m2 || !same(m2->body, m->body) || m2->sequences.size() != m->sequences.size())
    __builtin_trap();
  for (std::size_t i = 0; i < m->sequences.size(); ++i) {
    const auto& a = m->sequences[i];
    const auto& b = m2->sequences[i];
    if (a.identifier != b.identifier || a.documents.size() != b.documents.size()) __builtin_trap();
    for (std::size_t j = 0; j < a.documents.size(); ++j)
      if (!same(a.documents[j], b.documents[j]) || !inside(a.documents[j], f.body))
        __builtin_trap();
  }
  if (frame2->header.request_id != 7 || frame2->header.response_to != 9) __builtin_trap();
  mongo::rewrite_ids(again, 11, 12);
  auto f3 = mongo::next_frame(again);
  if (auto* frame3 = std::get_if<mongo::Frame>(&f3)) {
    if (!std::holds_alternative<mongo::Msg>(mongo::decode_msg(*frame3))) __builtin_trap();
  } else {
    __builtin_trap();
  }
}

}  // namespace

// Wraps the input as the sections of an OP_MSG with a correct header (and, for 'C', a correct
// checksum), so the section and BSON decoders are reached without guessing lengths.
static mongo::Buffer wrap(mongo::Span sections, bool checksum) {
  mongo::Buffer b(mongo::kHeaderSize + 4, 0);
  b[12] = static_cast<std::uint8_t>(mongo::kOpMsg & 0xff);
  b[13] = static_cast<std::uint8_t>(mongo::kOpMsg >> 8);
  if (checksum) b[16] = 1;
  b.insert(b.end(), sections.begin(), sections.end());
  if (checksum) b.resize(b.size() + 4);
  const auto n = static_cast<std::uint32_t>(b.size());
  for (int i = 0; i < 4; ++i)
    b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  if (checksum) {
    const auto crc = mongo::crc32c(mongo::Span(b).first(b.size() - 4));
    for (int i = 0; i < 4; ++i)
      b[b.size() - 4 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(crc >> (8 * i));
  }
  return b;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && (data[0] == 'B' || data[0] == 'C')) {
    auto msg = wrap(mongo::Span(data + 1, size - 1), data[0] == 'C');
    auto r = mongo::next_frame(msg);
    if (auto* f = std::get_if<mongo::Frame>(&r))
      check_msg(*f);
    else
      __builtin_trap();  // a wrapped message always frames
    return 0;
  }
  mongo::Span in(data, size);
  // A small cap too, so the "too large" path is reached without megabytes of input.
  for (std::uint32_t cap : {mongo::kMaxMessageSize, std::uint32_t{256}}) {
    mongo::Span rest = in;
    while (!rest.empty()) {
      auto r = mongo::next_frame(rest, cap);
      auto* f = std::get_if<mongo::Frame>(&r);
      if (!f) break;
      if (!inside(f->message, rest) || f->message.size() < mongo::kHeaderSize) __builtin_trap();
      switch (f->header.op_code) {
        case mongo::kOpMsg:
          check_msg(*f);
          break;
        case mongo::kOpQuery:
          (void)mongo::decode_query(*f);
          break;
        case mongo::kOpReply:
          (void)mongo::decode_reply(*f);
          break;
        case mongo::kOpCompressed: {
          auto inner = mongo::decompress(*f);
          if (auto* i = std::get_if<mongo::Frame>(&inner)) {
            if (!inside(i->body, f->body)) __builtin_trap();
            if (i->header.op_code == mongo::kOpMsg) (void)mongo::decode_msg(*i);
          }
          break;
        }
        default:
          break;
      }
      rest = rest.subspan(f->message.size());
    }
  }
  std::string why;
  (void)mongo::valid_document(in, mongo::kMaxBsonObjectSize, &why);
  return 0;
}
