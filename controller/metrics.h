#pragma once

// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
// exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// A family is one metric name with a fixed list of label names; a series is one assignment of
// values to those labels. Families live as long as their registry and never move, so callers keep
// references to them. Every method is thread-safe.
//
// Names follow the Prometheus conventions: a counter's name ends in "_total" (AddCounter appends
// it when missing), units are base units in the name ("_bytes", "_seconds").

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace modelcache::controller {

// Label values, in the order of the family's label names.
using LabelValues = std::vector<std::string>;

// The base class of the three family kinds; Render() appends the family's HELP, TYPE and sample
// lines to `out`.
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names);
  virtual ~MetricFamily() = default;
  MetricFamily(const MetricFamily&) = delete;
  MetricFamily& operator=(const MetricFamily&) = delete;

  const std::string& name() const { return name_; }
  virtual void Render(std::string& out) const = 0;

 protected:
  // `{a="x",b="y"}` for these values (escaped), with `extra` (e.g. `le="0.5"`) appended; "" when
  // there are no labels at all.
  std::string LabelText(const LabelValues& values, std::string_view extra = {}) const;
  void RenderHeader(std::string& out, std::string_view type) const;
  // Aborts (a programming error) when `values` does not match the label names in number.
  void CheckArity(const LabelValues& values) const;

  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  mutable std::mutex mu_;
};

class CounterFamily : public MetricFamily {
 public:
  using MetricFamily::MetricFamily;

  // Adds `by` (>= 0; negative amounts are ignored: a counter never goes down).
  void Inc(const LabelValues& values = {}, double by = 1);
  // Sets the series to a total counted elsewhere (e.g. the Manager's ManagerStats atomics,
  // copied at scrape time). The caller guarantees it never decreases.
  void SetTotal(const LabelValues& values, double total);
  // The series' value; 0 for a series never touched.
  double Value(const LabelValues& values = {}) const;
  void Render(std::string& out) const override;

 private:
  std::vector<std::pair<LabelValues, double>> series_;  // guarded by mu_, in creation order
  double& Series(const LabelValues& values);            // requires mu_
};

class GaugeFamily : public MetricFamily {
 public:
  using MetricFamily::MetricFamily;

  void Set(const LabelValues& values, double value);
  void Set(double value) { Set({}, value); }
  void Add(const LabelValues& values, double by);
  double Value(const LabelValues& values = {}) const;
  void Render(std::string& out) const override;

 private:
  std::vector<std::pair<LabelValues, double>> series_;  // guarded by mu_, in creation order
  double& Series(const LabelValues& values);            // requires mu_
};

class HistogramFamily : public MetricFamily {
 public:
  // `buckets` are the upper bounds, strictly increasing; "+Inf" is implicit.
  HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> buckets);

  void Observe(double value, const LabelValues& values = {});
  // Creates the series with zero counts if it does not exist, so that it is rendered before the
  // first observation.
  void Touch(const LabelValues& values = {});
  uint64_t Count(const LabelValues& values = {}) const;
  double Sum(const LabelValues& values = {}) const;
  void Render(std::string& out) const override;

 private:
  struct Series {
    LabelValues values;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Series& Get(const LabelValues& values);               // requires mu_
  const Series* Find(const LabelValues& values) const;  // requires mu_

  std::vector<double> buckets_;
  std::vector<Series> series_;  // guarded by mu_
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Each Add* registers a family and returns it; the reference stays valid as long as the
  // registry. A family without labels (histograms included) starts with its one series at 0 so
  // that it is rendered before anything happens. Names must be unique (aborts otherwise: a programming error).
  CounterFamily& AddCounter(std::string name, std::string help,
                            std::vector<std::string> label_names = {});
  GaugeFamily& AddGauge(std::string name, std::string help,
                        std::vector<std::string> label_names = {});
  HistogramFamily& AddHistogram(std::string name, std::string help, std::vector<double> buckets,
                                std::vector<std::string> label_names = {});

  // Runs `collect` at the start of every Render(), to copy values kept elsewhere (queue depth,
  // store usage, phase counts) into gauges just before a scrape.
  void OnCollect(std::function<void()> collect);

  // The whole registry in text format 0.0.4, families in registration order.
  std::string Render() const;

 private:
  void Register(std::unique_ptr<MetricFamily> family);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_;  // guarded by mu_
  std::vector<std::function<void()>> collectors_;        // guarded by mu_
};

// A sample value as Prometheus writes it: integers without a fraction, "+Inf", "-Inf", "NaN",
// else the shortest round-trip form.
std::string FormatMetricValue(double value);

// The controller's metric set (issue 7). Construct one per daemon; hand `registry` to the
// HealthServer through Render().
struct ControllerMetrics {
  ControllerMetrics();
  ControllerMetrics(const ControllerMetrics&) = delete;
  ControllerMetrics& operator=(const ControllerMetrics&) = delete;

  std::string Render() const { return registry.Render(); }

  MetricsRegistry registry;
  // modelcache_reconciles_total{result="success"|"error"|"requeue"}; all three start at 0.
  CounterFamily& reconciles;
  // modelcache_workqueue_depth: keys waiting in the queue.
  GaugeFamily& workqueue_depth;
  // modelcache_workqueue_latency_seconds: from Add to the start of processing.
  HistogramFamily& workqueue_latency_seconds;
  // modelcache_reconcile_duration_seconds: one Reconcile call.
  HistogramFamily& reconcile_duration_seconds;
  // modelcache_download_bytes_total: bytes written to the store by downloads.
  CounterFamily& download_bytes;
  // modelcache_download_bytes_per_second: the current total rate of running downloads.
  GaugeFamily& download_bytes_per_second;
  // modelcache_verification_failures_total: files whose digest or size did not match.
  CounterFamily& verification_failures;
  // modelcache_artifacts{phase=...}: resources per phase; every phase in crds::kPhases starts at 0.
  GaugeFamily& artifacts;
  // modelcache_store_used_bytes / modelcache_store_free_bytes.
  GaugeFamily& store_used_bytes;
  GaugeFamily& store_free_bytes;
  // modelcache_shard_duration_seconds: one sharding job.
  HistogramFamily& shard_duration_seconds;
  // modelcache_build_info{version,commit,curl,openssl} 1: what this binary is, as Prometheus
  // exporters report it (common/build_info.h).
  GaugeFamily& build_info;

  // Result label values.
  static constexpr std::string_view kSuccess = "success";
  static constexpr std::string_view kError = "error";
  static constexpr std::string_view kRequeue = "requeue";
};

}  // namespace modelcache::controller
