// The metrics registry: exact exposition text (what promtool and Prometheus parse), escaping,
// histograms, collectors, and the registration rules.
#include "server/metrics.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

using namespace sluice::metrics;
using Catch::Matchers::Contains;

TEST_CASE("counters and gauges render with HELP, TYPE and labels") {
  Registry r;
  auto& c = r.counter("sluice_things_total", "Things done.", {"database", "user"});
  auto& g = r.gauge("sluice_level", "A level.");
  c.with({"appdb", "app"}).inc(3);
  c.with({"appdb", "app"}).inc();
  c.with({"other", "app"}).inc(0);
  g.with({}).set(2.5);
  CHECK(r.expose() ==
        "# HELP sluice_things_total Things done.\n"
        "# TYPE sluice_things_total counter\n"
        "sluice_things_total{database=\"appdb\",user=\"app\"} 4\n"
        "sluice_things_total{database=\"other\",user=\"app\"} 0\n"
        "# HELP sluice_level A level.\n"
        "# TYPE sluice_level gauge\n"
        "sluice_level 2.5\n");
}

TEST_CASE("a child keeps its address: hot paths cache it") {
  Registry r;
  auto& f = r.counter("sluice_x_total", "x", {"a"});
  auto* first = &f.with({"1"});
  for (int i = 0; i < 100; ++i) f.with({std::to_string(i + 2)});
  CHECK(&f.with({"1"}) == first);
}

TEST_CASE("label values and help text are escaped") {
  Registry r;
  auto& c = r.counter("sluice_q_total", "Help with \\ and\nnewline.", {"query"});
  c.with({"say \"hi\"\\\n"}).inc();
  auto text = r.expose();
  CHECK_THAT(text, Contains("# HELP sluice_q_total Help with \\\\ and\\nnewline.\n"));
  CHECK_THAT(text, Contains("sluice_q_total{query=\"say \\\"hi\\\"\\\\\\n\"} 1\n"));
}

TEST_CASE("histograms are cumulative with +Inf, _sum and _count") {
  Registry r;
  auto& h = r.histogram("sluice_d_seconds", "Durations.", {"db"}, {0.1, 1});
  auto& child = h.with({"a"});
  child.observe(0.05);
  child.observe(0.1);  // le is inclusive
  child.observe(0.5);
  child.observe(7);
  auto text = r.expose();
  CHECK_THAT(text, Contains("# TYPE sluice_d_seconds histogram\n"));
  CHECK_THAT(text, Contains("sluice_d_seconds_bucket{db=\"a\",le=\"0.1\"} 2\n"));
  CHECK_THAT(text, Contains("sluice_d_seconds_bucket{db=\"a\",le=\"1\"} 3\n"));
  CHECK_THAT(text, Contains("sluice_d_seconds_bucket{db=\"a\",le=\"+Inf\"} 4\n"));
  CHECK_THAT(text, Contains("sluice_d_seconds_sum{db=\"a\"} 7.65"));
  CHECK_THAT(text, Contains("sluice_d_seconds_count{db=\"a\"} 4\n"));
}

TEST_CASE("scaled counters expose microseconds as seconds") {
  Registry r;
  r.counter("sluice_t_seconds_total", "t", {}, 1e-6).with({}).inc(1'500'000);
  CHECK_THAT(r.expose(), Contains("sluice_t_seconds_total 1.5\n"));
}

TEST_CASE("collectors write computed families after the registered ones") {
  Registry r;
  r.gauge("sluice_a", "a").with({}).set(1);
  r.add_collector([](Writer& w) {
    w.family("sluice_b", "gauge", "b");
    w.sample("sluice_b", {"state"}, {"idle"}, 3);
  });
  CHECK(r.expose() ==
        "# HELP sluice_a a\n# TYPE sluice_a gauge\nsluice_a 1\n"
        "# HELP sluice_b b\n# TYPE sluice_b gauge\nsluice_b{state=\"idle\"} 3\n");
}

TEST_CASE("registration rejects duplicates, bad names and bad buckets") {
  Registry r;
  r.counter("sluice_one_total", "x");
  CHECK_THROWS(r.gauge("sluice_one_total", "again"));
  CHECK_THROWS(r.counter("9starts_with_digit", "x"));
  CHECK_THROWS(r.counter("has-dash", "x"));
  CHECK_THROWS(r.counter("sluice_l_total", "x", {"le"}));
  CHECK_THROWS(r.counter("sluice_m_total", "x", {"__reserved"}));
  CHECK_THROWS(r.histogram("sluice_h", "x", {}, {1, 1}));
  CHECK_THROWS(r.histogram("sluice_h2", "x", {}, {2, 1}));
  CHECK_THROWS(r.histogram("sluice_h3", "x", {}, {}));
}

TEST_CASE("sample values are written as Prometheus reads them") {
  CHECK(format_value(0) == "0");
  CHECK(format_value(42) == "42");
  CHECK(format_value(-3) == "-3");
  CHECK(format_value(0.25) == "0.25");
  CHECK(format_value(0.1) == "0.1");
  CHECK(format_value(0.1 + 0.2) == "0.30000000000000004");  // %.15g would not read back exactly
  CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
  CHECK(format_value(std::nan("")) == "NaN");
  CHECK(format_value(1e20) == "1e+20");
}
