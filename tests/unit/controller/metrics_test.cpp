#include "controller/metrics.h"

#include <cctype>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <openssl/crypto.h>

#include "common/build_info.h"

namespace modelcache::controller {
namespace {

TEST(MetricsTest, CounterGaugeAndHistogramRenderGolden) {
  MetricsRegistry r;
  auto& c = r.AddCounter("demo_requests", "Requests.", {"code"});
  c.Inc({"200"});
  c.Inc({"200"}, 2);
  c.Inc({"500"});
  c.Inc({"500"}, -5);  // ignored: counters never go down
  auto& g = r.AddGauge("demo_depth", "Queue depth.");
  g.Set(3);
  g.Add({}, 0.5);
  auto& h = r.AddHistogram("demo_latency_seconds", "Latency.", {0.25, 1});
  h.Observe(0.125);
  h.Observe(0.25);  // "le" is inclusive
  h.Observe(0.5);
  h.Observe(7);

  EXPECT_EQ(r.Render(),
            "# HELP demo_requests_total Requests.\n"
            "# TYPE demo_requests_total counter\n"
            "demo_requests_total{code=\"200\"} 3\n"
            "demo_requests_total{code=\"500\"} 1\n"
            "# HELP demo_depth Queue depth.\n"
            "# TYPE demo_depth gauge\n"
            "demo_depth 3.5\n"
            "# HELP demo_latency_seconds Latency.\n"
            "# TYPE demo_latency_seconds histogram\n"
            "demo_latency_seconds_bucket{le=\"0.25\"} 2\n"
            "demo_latency_seconds_bucket{le=\"1\"} 3\n"
            "demo_latency_seconds_bucket{le=\"+Inf\"} 4\n"
            "demo_latency_seconds_sum 7.875\n"
            "demo_latency_seconds_count 4\n");
  EXPECT_EQ(c.Value({"200"}), 3);
  EXPECT_EQ(c.Value({"404"}), 0);
  EXPECT_EQ(h.Count(), 4u);
}

TEST(MetricsTest, LabelValuesAndHelpAreEscaped) {
  MetricsRegistry r;
  auto& g = r.AddGauge("demo_info", "Back\\slash and\nnewline \"quoted\".", {"path", "note"});
  g.Set({"C:\\models", "say \"hi\"\nbye"}, 1);
  EXPECT_EQ(r.Render(),
            "# HELP demo_info Back\\\\slash and\\nnewline \"quoted\".\n"
            "# TYPE demo_info gauge\n"
            "demo_info{path=\"C:\\\\models\",note=\"say \\\"hi\\\"\\nbye\"} 1\n");
}

TEST(MetricsTest, HistogramWithLabelsPutsLeLast) {
  MetricsRegistry r;
  auto& h = r.AddHistogram("demo_seconds", "D.", {1}, {"kind"});
  h.Observe(2, {"a"});
  EXPECT_EQ(r.Render(),
            "# HELP demo_seconds D.\n"
            "# TYPE demo_seconds histogram\n"
            "demo_seconds_bucket{kind=\"a\",le=\"1\"} 0\n"
            "demo_seconds_bucket{kind=\"a\",le=\"+Inf\"} 1\n"
            "demo_seconds_sum{kind=\"a\"} 2\n"
            "demo_seconds_count{kind=\"a\"} 1\n");
}

TEST(MetricsTest, FormatMetricValue) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(12345678901), "12345678901");
  EXPECT_EQ(FormatMetricValue(-2), "-2");
  EXPECT_EQ(FormatMetricValue(0.25), "0.25");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsTest, CollectorsRunBeforeRender) {
  MetricsRegistry r;
  auto& g = r.AddGauge("demo_depth", "D.");
  int scrapes = 0;
  r.OnCollect([&] { g.Set(++scrapes); });
  EXPECT_NE(r.Render().find("demo_depth 1\n"), std::string::npos);
  EXPECT_NE(r.Render().find("demo_depth 2\n"), std::string::npos);
}

// A minimal parser of the text format: checks every line's shape and returns sample -> value.
// Fails the test on anything a Prometheus scraper would reject: a sample before its TYPE, a TYPE
// that does not match the samples' suffixes, a malformed label set or value.
std::map<std::string, double> ParseExposition(const std::string& text) {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  std::string current;
  std::istringstream in(text);
  std::string line;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name;
      std::string type;
      t >> name >> type;
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_EQ(types.count(name), 0u) << "TYPE twice: " << line;
      types[name] = type;
      current = name;
      continue;
    }
    size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    std::string key = line.substr(0, space);
    std::string value = line.substr(space + 1);
    std::string name = key.substr(0, key.find('{'));
    if (key.find('{') != std::string::npos) {
      EXPECT_EQ(key.back(), '}') << line;
    }
    for (char ch : name) {
      EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == ':') << line;
    }
    const std::string& type = types[current];
    if (type == "histogram") {
      EXPECT_TRUE(name == current + "_bucket" || name == current + "_sum" ||
                  name == current + "_count")
          << line;
    } else {
      EXPECT_EQ(name, current) << line;
    }
    if (type == "counter") {
      EXPECT_TRUE(name.size() > 6 && name.substr(name.size() - 6) == "_total") << line;
    }
    size_t used = 0;
    double v = value == "+Inf" ? std::numeric_limits<double>::infinity() : std::stod(value, &used);
    if (value != "+Inf") {
      EXPECT_EQ(used, value.size()) << line;
    }
    EXPECT_EQ(samples.count(key), 0u) << "sample twice: " << line;
    samples[key] = v;
  }
  return samples;
}

TEST(MetricsTest, ControllerMetricsParseBack) {
  ControllerMetrics m;
  m.reconciles.Inc({"success"}, 5);
  m.reconciles.Inc({"error"});
  m.workqueue_depth.Set(2);
  m.workqueue_latency_seconds.Observe(0.002);
  m.reconcile_duration_seconds.Observe(0.3);
  m.download_bytes.Inc({}, 1 << 20);
  m.download_bytes_per_second.Set(5e6);
  m.verification_failures.Inc();
  m.artifacts.Set({"Ready"}, 3);
  m.store_used_bytes.Set(123456789012.0);
  m.store_free_bytes.Set(42);
  m.shard_duration_seconds.Observe(90);

  auto s = ParseExposition(m.Render());
  EXPECT_EQ(s["modelcache_reconciles_total{result=\"success\"}"], 5);
  EXPECT_EQ(s["modelcache_reconciles_total{result=\"error\"}"], 1);
  EXPECT_EQ(s.count("modelcache_reconciles_total{result=\"requeue\"}"), 1u);
  EXPECT_EQ(s["modelcache_workqueue_depth"], 2);
  EXPECT_EQ(s["modelcache_workqueue_latency_seconds_bucket{le=\"0.005\"}"], 1);
  EXPECT_EQ(s["modelcache_workqueue_latency_seconds_bucket{le=\"0.001\"}"], 0);
  EXPECT_EQ(s["modelcache_reconcile_duration_seconds_count"], 1);
  EXPECT_EQ(s["modelcache_download_bytes_total"], 1 << 20);
  EXPECT_EQ(s["modelcache_download_bytes_per_second"], 5e6);
  EXPECT_EQ(s["modelcache_verification_failures_total"], 1);
  EXPECT_EQ(s["modelcache_artifacts{phase=\"Ready\"}"], 3);
  EXPECT_EQ(s.count("modelcache_artifacts{phase=\"Failed\"}"), 1u);
  EXPECT_EQ(s["modelcache_store_used_bytes"], 123456789012.0);
  EXPECT_EQ(s["modelcache_store_free_bytes"], 42);
  EXPECT_EQ(s["modelcache_shard_duration_seconds_bucket{le=\"60\"}"], 0);
  EXPECT_EQ(s["modelcache_shard_duration_seconds_bucket{le=\"120\"}"], 1);
  EXPECT_EQ(s["modelcache_shard_duration_seconds_sum"], 90);
}

TEST(MetricsTest, BuildInfoNamesVersionCommitAndLibraries) {
  ControllerMetrics m;
  const modelcache::BuildInfo& b = modelcache::GetBuildInfo();
  auto s = ParseExposition(m.Render());
  std::string series = "modelcache_build_info{version=\"" + b.version + "\",commit=\"" + b.commit +
                       "\",curl=\"" + b.curl + "\",openssl=\"" + b.openssl + "\"}";
  ASSERT_EQ(s.count(series), 1u) << m.Render();
  EXPECT_EQ(s[series], 1);
  // The version is CMake's project(VERSION); libcurl's and OpenSSL's are the loaded libraries'.
  EXPECT_EQ(b.version, MC_PROJECT_VERSION);
  EXPECT_EQ(b.curl, curl_version_info(CURLVERSION_NOW)->version);
  EXPECT_EQ(b.openssl, OpenSSL_version(OPENSSL_VERSION_STRING));
  EXPECT_NE(modelcache::VersionText().find("modelcache " + b.version), std::string::npos);
}

TEST(MetricsTest, ConcurrentIncrementsAreNotLost) {
  MetricsRegistry r;
  auto& c = r.AddCounter("demo_total", "D.", {"t"});
  auto& h = r.AddHistogram("demo_seconds", "D.", {1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        c.Inc({t % 2 == 0 ? "even" : "odd"});
        h.Observe(0.5);
        if (i % 100 == 0) {
          (void)r.Render();
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(c.Value({"even"}) + c.Value({"odd"}), 4000);
  EXPECT_EQ(h.Count(), 4000u);
}

}  // namespace
}  // namespace modelcache::controller
