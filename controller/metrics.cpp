#include "controller/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "common/build_info.h"
#include "crds/model_cache.h"

namespace modelcache::controller {
namespace {

// Label values escape backslash, double quote and newline; HELP text escapes only backslash and
// newline (exposition format 0.0.4).
std::string Escape(std::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "modelcache metrics: %s\n", message.c_str());
  std::abort();
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) {
    return "NaN";
  }
  if (std::isinf(value)) {
    return value > 0 ? "+Inf" : "-Inf";
  }
  // Integral values (byte counts, totals) print without "e+" notation up to 2^53, where doubles
  // stop being exact anyway.
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    return fmt::format("{}", static_cast<int64_t>(value));
  }
  return fmt::format("{}", value);
}

MetricFamily::MetricFamily(std::string name, std::string help, std::vector<std::string> label_names)
    : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)) {}

std::string MetricFamily::LabelText(const LabelValues& values, std::string_view extra) const {
  if (label_names_.empty() && extra.empty()) {
    return "";
  }
  std::string out = "{";
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (i > 0) {
      out += ',';
    }
    out += fmt::format("{}=\"{}\"", label_names_[i], Escape(values[i], true));
  }
  if (!extra.empty()) {
    if (!label_names_.empty()) {
      out += ',';
    }
    out += extra;
  }
  out += '}';
  return out;
}

void MetricFamily::RenderHeader(std::string& out, std::string_view type) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, Escape(help_, false), name_, type);
}

void MetricFamily::CheckArity(const LabelValues& values) const {
  if (values.size() != label_names_.size()) {
    Die(fmt::format("{}: {} label values for {} label names", name_, values.size(),
                    label_names_.size()));
  }
}

// Series are few (a handful of label sets per family), so a vector searched linearly keeps the
// creation order for rendering and is faster than a map at this size.
double& CounterFamily::Series(const LabelValues& values) {
  CheckArity(values);
  for (auto& [v, x] : series_) {
    if (v == values) {
      return x;
    }
  }
  return series_.emplace_back(values, 0.0).second;
}

void CounterFamily::Inc(const LabelValues& values, double by) {
  std::lock_guard lock(mu_);
  double& x = Series(values);
  if (by > 0) {
    x += by;
  }
}

void CounterFamily::SetTotal(const LabelValues& values, double total) {
  std::lock_guard lock(mu_);
  Series(values) = total;
}

double CounterFamily::Value(const LabelValues& values) const {
  std::lock_guard lock(mu_);
  for (const auto& [v, x] : series_) {
    if (v == values) {
      return x;
    }
  }
  return 0;
}

void CounterFamily::Render(std::string& out) const {
  std::lock_guard lock(mu_);
  RenderHeader(out, "counter");
  for (const auto& [v, x] : series_) {
    out += fmt::format("{}{} {}\n", name_, LabelText(v), FormatMetricValue(x));
  }
}

double& GaugeFamily::Series(const LabelValues& values) {
  CheckArity(values);
  for (auto& [v, x] : series_) {
    if (v == values) {
      return x;
    }
  }
  return series_.emplace_back(values, 0.0).second;
}

void GaugeFamily::Set(const LabelValues& values, double value) {
  std::lock_guard lock(mu_);
  Series(values) = value;
}

void GaugeFamily::Add(const LabelValues& values, double by) {
  std::lock_guard lock(mu_);
  Series(values) += by;
}

double GaugeFamily::Value(const LabelValues& values) const {
  std::lock_guard lock(mu_);
  for (const auto& [v, x] : series_) {
    if (v == values) {
      return x;
    }
  }
  return 0;
}

void GaugeFamily::Render(std::string& out) const {
  std::lock_guard lock(mu_);
  RenderHeader(out, "gauge");
  for (const auto& [v, x] : series_) {
    out += fmt::format("{}{} {}\n", name_, LabelText(v), FormatMetricValue(x));
  }
}

HistogramFamily::HistogramFamily(std::string name, std::string help,
                                 std::vector<std::string> label_names, std::vector<double> buckets)
    : MetricFamily(std::move(name), std::move(help), std::move(label_names)),
      buckets_(std::move(buckets)) {
  for (size_t i = 1; i < buckets_.size(); ++i) {
    if (!(buckets_[i - 1] < buckets_[i])) {
      Die(fmt::format("{}: buckets must increase strictly", name_));
    }
  }
  if (!buckets_.empty() && std::isinf(buckets_.back())) {
    buckets_.pop_back();  // +Inf is implicit
  }
}

HistogramFamily::Series& HistogramFamily::Get(const LabelValues& values) {
  CheckArity(values);
  for (auto& s : series_) {
    if (s.values == values) {
      return s;
    }
  }
  Series s;
  s.values = values;
  s.counts.assign(buckets_.size() + 1, 0);
  return series_.emplace_back(std::move(s));
}

const HistogramFamily::Series* HistogramFamily::Find(const LabelValues& values) const {
  for (const auto& s : series_) {
    if (s.values == values) {
      return &s;
    }
  }
  return nullptr;
}

void HistogramFamily::Observe(double value, const LabelValues& values) {
  std::lock_guard lock(mu_);
  Series& s = Get(values);
  // Buckets are "less than or equal" upper bounds.
  auto it = std::lower_bound(buckets_.begin(), buckets_.end(), value);
  ++s.counts[static_cast<size_t>(it - buckets_.begin())];
  s.sum += value;
  ++s.count;
}

void HistogramFamily::Touch(const LabelValues& values) {
  std::lock_guard lock(mu_);
  Get(values);
}

uint64_t HistogramFamily::Count(const LabelValues& values) const {
  std::lock_guard lock(mu_);
  const Series* s = Find(values);
  return s != nullptr ? s->count : 0;
}

double HistogramFamily::Sum(const LabelValues& values) const {
  std::lock_guard lock(mu_);
  const Series* s = Find(values);
  return s != nullptr ? s->sum : 0;
}

void HistogramFamily::Render(std::string& out) const {
  std::lock_guard lock(mu_);
  RenderHeader(out, "histogram");
  for (const auto& s : series_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= buckets_.size(); ++i) {
      cumulative += s.counts[i];
      std::string le = i < buckets_.size() ? FormatMetricValue(buckets_[i]) : "+Inf";
      out += fmt::format("{}_bucket{} {}\n", name_, LabelText(s.values, "le=\"" + le + "\""),
                         cumulative);
    }
    out += fmt::format("{}_sum{} {}\n", name_, LabelText(s.values), FormatMetricValue(s.sum));
    out += fmt::format("{}_count{} {}\n", name_, LabelText(s.values), s.count);
  }
}

void MetricsRegistry::Register(std::unique_ptr<MetricFamily> family) {
  std::lock_guard lock(mu_);
  for (const auto& f : families_) {
    if (f->name() == family->name()) {
      Die(fmt::format("{} registered twice", family->name()));
    }
  }
  families_.push_back(std::move(family));
}

CounterFamily& MetricsRegistry::AddCounter(std::string name, std::string help,
                                           std::vector<std::string> label_names) {
  constexpr std::string_view kSuffix = "_total";
  if (name.size() < kSuffix.size() ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
    name += kSuffix;
  }
  bool plain = label_names.empty();
  auto family =
      std::make_unique<CounterFamily>(std::move(name), std::move(help), std::move(label_names));
  CounterFamily& ref = *family;
  Register(std::move(family));
  if (plain) {
    ref.Inc({}, 0);
  }
  return ref;
}

GaugeFamily& MetricsRegistry::AddGauge(std::string name, std::string help,
                                       std::vector<std::string> label_names) {
  bool plain = label_names.empty();
  auto family =
      std::make_unique<GaugeFamily>(std::move(name), std::move(help), std::move(label_names));
  GaugeFamily& ref = *family;
  Register(std::move(family));
  if (plain) {
    ref.Add({}, 0);
  }
  return ref;
}

HistogramFamily& MetricsRegistry::AddHistogram(std::string name, std::string help,
                                               std::vector<double> buckets,
                                               std::vector<std::string> label_names) {
  bool plain = label_names.empty();
  auto family = std::make_unique<HistogramFamily>(std::move(name), std::move(help),
                                                  std::move(label_names), std::move(buckets));
  HistogramFamily& ref = *family;
  Register(std::move(family));
  if (plain) {
    ref.Touch();
  }
  return ref;
}

void MetricsRegistry::OnCollect(std::function<void()> collect) {
  std::lock_guard lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::string MetricsRegistry::Render() const {
  // Collectors run outside mu_: they set gauges, which take only their family's lock, and may be
  // slow (statfs), which must not block registration.
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard lock(mu_);
    collectors = collectors_;
  }
  for (const auto& collect : collectors) {
    collect();
  }
  std::string out;
  std::lock_guard lock(mu_);
  for (const auto& f : families_) {
    f->Render(out);
  }
  return out;
}

namespace {

// Queue waits are short unless the workers are saturated; reconciles are short because the work
// itself runs in jobs; shard jobs take seconds to an hour.
const std::vector<double> kQueueBuckets = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60};
const std::vector<double> kReconcileBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1,    2.5,   5,    10,  30};
const std::vector<double> kShardBuckets = {1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};

}  // namespace

ControllerMetrics::ControllerMetrics()
    : reconciles(registry.AddCounter("modelcache_reconciles_total",
                                     "Reconciles by result: success, error or requeue.",
                                     {"result"})),
      workqueue_depth(
          registry.AddGauge("modelcache_workqueue_depth", "Keys waiting in the work queue.")),
      workqueue_latency_seconds(registry.AddHistogram(
          "modelcache_workqueue_latency_seconds",
          "Time a key waits in the work queue before a worker takes it.", kQueueBuckets)),
      reconcile_duration_seconds(registry.AddHistogram("modelcache_reconcile_duration_seconds",
                                                       "Time spent in one reconcile.",
                                                       kReconcileBuckets)),
      download_bytes(registry.AddCounter("modelcache_download_bytes_total",
                                         "Bytes downloaded into the store.")),
      download_bytes_per_second(registry.AddGauge("modelcache_download_bytes_per_second",
                                                  "Current download rate of all running jobs.")),
      verification_failures(
          registry.AddCounter("modelcache_verification_failures_total",
                              "Files whose size or digest did not match what the Hub announced.")),
      artifacts(
          registry.AddGauge("modelcache_artifacts", "ModelCache resources by phase.", {"phase"})),
      store_used_bytes(
          registry.AddGauge("modelcache_store_used_bytes", "Bytes used by the store's files.")),
      store_free_bytes(registry.AddGauge("modelcache_store_free_bytes",
                                         "Bytes free on the store's file system.")),
      shard_duration_seconds(registry.AddHistogram(
          "modelcache_shard_duration_seconds", "Time taken by one sharding job.", kShardBuckets)),
      build_info(registry.AddGauge(
          "modelcache_build_info",
          "Always 1; the labels name the version, git commit and libcurl and OpenSSL versions.",
          {"version", "commit", "curl", "openssl"})) {
  const modelcache::BuildInfo& b = modelcache::GetBuildInfo();
  build_info.Set({b.version, b.commit, b.curl, b.openssl}, 1);
  for (std::string_view result : {kSuccess, kError, kRequeue}) {
    reconciles.Inc({std::string(result)}, 0);
  }
  for (std::string_view phase : crds::kPhases) {
    artifacts.Set({std::string(phase)}, 0);
  }
}

}  // namespace modelcache::controller
