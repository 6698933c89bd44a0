#include "controller/kube/kube_events.h"

#include <algorithm>
#include <list>
#include <set>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"

namespace modelcache::controller {

using nlohmann::json;

namespace {

// The API server refuses longer event messages (events.k8s.io caps the note at 1 kB).
constexpr size_t kMaxMessageBytes = 1024;

std::string Str(const json& j, const char* a, const char* b = nullptr) {
  const json* v = &j;
  for (const char* k : {a, b}) {
    if (k == nullptr) {
      break;
    }
    if (!v->is_object() || !v->contains(k)) {
      return "";
    }
    v = &(*v)[k];
  }
  return v->is_string() ? v->get<std::string>() : std::string();
}

// A least-recently-used map of bounded size, as groupcache's lru.Cache the correlator uses.
template <typename V>
class Lru {
 public:
  explicit Lru(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

  V* Get(const std::string& key) {
    auto it = index_.find(key);
    if (it == index_.end()) {
      return nullptr;
    }
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }
  void Put(const std::string& key, V value) {
    if (V* existing = Get(key)) {
      *existing = std::move(value);
      return;
    }
    order_.emplace_front(key, std::move(value));
    index_[key] = order_.begin();
    if (order_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
  }

 private:
  size_t capacity_;
  std::list<std::pair<std::string, V>> order_;
  std::unordered_map<std::string, typename std::list<std::pair<std::string, V>>::iterator> index_;
};

// client-go's getSpamKey: source and involved object.
std::string SpamKey(const json& e) {
  return Str(e, "source", "component") + '\x1f' + Str(e, "source", "host") + '\x1f' +
         Str(e, "involvedObject", "kind") + '\x1f' + Str(e, "involvedObject", "namespace") +
         '\x1f' + Str(e, "involvedObject", "name") + '\x1f' + Str(e, "involvedObject", "uid") +
         '\x1f' + Str(e, "involvedObject", "apiVersion");
}

// EventAggregatorByReasonFunc's aggregate key: everything but the message.
std::string AggregateKey(const json& e) {
  return SpamKey(e) + '\x1f' + Str(e, "type") + '\x1f' + Str(e, "reason") + '\x1f' +
         Str(e, "reportingComponent") + '\x1f' + Str(e, "reportingInstance");
}

// getEventKey: everything that makes two events the same one.
std::string EventKey(const json& e) { return AggregateKey(e) + '\x1f' + Str(e, "message"); }

std::string EventName(std::string_view object_name, std::chrono::system_clock::time_point t) {
  auto nanos =
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  return fmt::format("{}.{:x}", object_name, nanos);
}

}  // namespace

json MakeEvent(const crds::ModelCache& object, std::string_view type, std::string_view reason,
               std::string_view message, std::string_view component, std::string_view host,
               std::chrono::system_clock::time_point now) {
  std::string text(message.substr(0, kMaxMessageBytes));
  std::string at = FormatRfc3339(now);
  json source = {{"component", component}};
  json involved = {{"apiVersion", crds::kApiVersion},
                   {"kind", crds::kKind},
                   {"namespace", object.metadata.namespace_},
                   {"name", object.metadata.name}};
  if (!object.metadata.uid.empty()) {
    involved["uid"] = object.metadata.uid;
  }
  if (!object.metadata.resource_version.empty()) {
    involved["resourceVersion"] = object.metadata.resource_version;
  }
  json event = {{"apiVersion", "v1"},
          {"kind", "Event"},
          {"metadata",
           {{"name", EventName(object.metadata.name, now)},
            {"namespace", object.metadata.namespace_}}},
          {"involvedObject", involved},
          {"type", type},
          {"reason", reason},
          {"message", text},
          {"source", source},
          {"reportingComponent", component},
          {"firstTimestamp", at},
          {"lastTimestamp", at},
          {"count", 1}};
  if (!host.empty()) {
    event["source"]["host"] = host;
    event["reportingInstance"] = host;
  }
  return event;
}

// --- correlator ------------------------------------------------------------------------------

struct EventCorrelator::Impl {
  struct Bucket {
    double tokens = 0;
    Clock::TimePoint last;
  };
  struct AggregateRecord {
    std::set<std::string> messages;
    Clock::TimePoint last;
  };
  struct Observed {
    int64_t count = 0;
    std::string first_timestamp;
    std::string name;
  };

  Impl(EventCorrelatorOptions o, const Clock& c)
      : options(o),
        clock(c),
        buckets(o.cache_entries),
        aggregates(o.cache_entries),
        observed(o.cache_entries) {}

  const EventCorrelatorOptions options;
  const Clock& clock;
  Lru<Bucket> buckets;
  Lru<AggregateRecord> aggregates;
  Lru<Observed> observed;

  // EventAggregator.EventAggregate: returns the event to go on with and its correlation key.
  std::pair<json, std::string> Aggregate(json event) {
    Clock::TimePoint now = clock.Now();
    std::string aggregate_key = AggregateKey(event);
    AggregateRecord record;
    if (AggregateRecord* found = aggregates.Get(aggregate_key)) {
      record = *found;
    }
    if (record.messages.empty() || now - record.last > options.aggregate_interval) {
      record = {};
    }
    record.messages.insert(Str(event, "message"));
    record.last = now;
    if (record.messages.size() < options.aggregate_max_events) {
      aggregates.Put(aggregate_key, record);
      std::string key = EventKey(event);
      return {std::move(event), key};
    }
    // Keep the set from growing past the limit, as client-go's PopAny does.
    record.messages.erase(record.messages.begin());
    aggregates.Put(aggregate_key, record);
    event["message"] = "(combined from similar events): " + Str(event, "message");
    // The combined event is keyed by the aggregate key, so that later ones count on it.
    return {std::move(event), aggregate_key};
  }

  // eventLogger.eventObserve: a repeat of a known event becomes a patch of it.
  json Observe(json& event, const std::string& key) {
    json patch;
    Observed* last = observed.Get(key);
    if (last != nullptr && last->count > 0) {
      event["metadata"]["name"] = last->name;
      event["firstTimestamp"] = last->first_timestamp;
      event["count"] = last->count + 1;
      patch = {{"count", last->count + 1},
               {"lastTimestamp", event["lastTimestamp"]},
               {"message", event["message"]}};
    }
    observed.Put(key, Observed{event["count"].get<int64_t>(), Str(event, "firstTimestamp"),
                               Str(event, "metadata", "name")});
    return patch;
  }

  // EventSourceObjectSpamFilter.Filter: true if the event must be dropped.
  bool Filter(const json& event) {
    Clock::TimePoint now = clock.Now();
    std::string key = SpamKey(event);
    Bucket bucket{static_cast<double>(options.burst), now};
    if (Bucket* found = buckets.Get(key)) {
      bucket = *found;
      double refill = std::chrono::duration<double>(now - bucket.last) /
                      std::chrono::duration<double>(options.refill_every);
      bucket.tokens = std::min<double>(options.burst, bucket.tokens + refill);
      bucket.last = now;
    }
    bool drop = bucket.tokens < 1.0;
    if (!drop) {
      bucket.tokens -= 1.0;
    }
    buckets.Put(key, bucket);
    return drop;
  }
};

EventCorrelator::EventCorrelator(EventCorrelatorOptions options, const Clock& clock)
    : impl_(std::make_unique<Impl>(options, clock)) {}
EventCorrelator::~EventCorrelator() = default;

CorrelatedEvent EventCorrelator::Correlate(json event) {
  // client-go's order: aggregate, observe, then the spam filter on the result.
  auto [aggregated, key] = impl_->Aggregate(std::move(event));
  CorrelatedEvent out;
  out.patch = impl_->Observe(aggregated, key);
  out.skip = impl_->Filter(aggregated);
  out.event = std::move(aggregated);
  return out;
}

void EventCorrelator::UpdateState(const json& event) {
  if (!event.is_object() || !event.contains("count") || !event["count"].is_number_integer()) {
    return;
  }
  impl_->observed.Put(EventKey(event),
                      Impl::Observed{event["count"].get<int64_t>(), Str(event, "firstTimestamp"),
                                     Str(event, "metadata", "name")});
}

// --- recorder --------------------------------------------------------------------------------

KubeEventRecorder::KubeEventRecorder(const KubeClient& client, EventRecorderOptions options,
                                     const Clock& clock)
    : client_(client),
      options_(std::move(options)),
      clock_(clock),
      correlator_(options_.correlator, clock),
      lanes_(options_.senders, "Event recorder") {}

KubeEventRecorder::~KubeEventRecorder() { Stop(); }

EventRecorderStats KubeEventRecorder::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void KubeEventRecorder::Record(const crds::ModelCache& object, std::string_view type,
                               std::string_view reason, std::string_view message) {
  json event = MakeEvent(object, type, reason, message, options_.component, options_.host,
                         clock_.WallNow());
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queued_ >= options_.max_queued) {
      ++stats_.dropped;
      return;
    }
    ++queued_;
  }
  // The lane of the involved object: its Events are correlated and sent in order.
  std::string lane = object.metadata.namespace_ + "/" + object.metadata.name;
  bool queued = lanes_.Submit(lane, [this, event = std::move(event)](std::stop_token stop) mutable {
    {
      std::lock_guard lock(mu_);
      --queued_;
    }
    Process(std::move(event), stop);
  });
  if (!queued) {
    std::lock_guard lock(mu_);
    --queued_;
    ++stats_.dropped;
  }
}

void KubeEventRecorder::RecordStatusChange(const crds::ModelCache& object,
                                           const crds::ModelCacheStatus& before) {
  const crds::ModelCacheStatus& now = object.status;
  const crds::Condition* ready = crds::FindCondition(now.conditions, "Ready");
  const crds::Condition* was = crds::FindCondition(before.conditions, "Ready");
  std::string message = ready != nullptr ? ready->message : std::string();
  bool is_phase = ready != nullptr &&
                  std::find(crds::kPhases.begin(), crds::kPhases.end(), ready->reason) !=
                      crds::kPhases.end();
  bool failing = ready != nullptr && ready->status == "False" && !is_phase;
  bool failure_changed = failing && (was == nullptr || was->reason != ready->reason ||
                                     was->message != ready->message);
  if (failure_changed) {
    Record(object, "Warning", ready->reason, message);
    return;
  }
  if (now.phase != before.phase && !now.phase.empty()) {
    Record(object, "Normal", now.phase, message);
  }
}

void KubeEventRecorder::Stop(std::chrono::milliseconds flush_timeout) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return;
    }
    stopping_ = true;
  }
  // The lanes send what is queued; the stop request only cuts short a request or a retry wait
  // once the flush time has passed.
  size_t dropped = lanes_.Stop(flush_timeout);
  std::lock_guard lock(mu_);
  stats_.dropped += dropped;
}

void KubeEventRecorder::Process(json event, std::stop_token stop) {
  CorrelatedEvent correlated;
  {
    std::lock_guard lock(correlator_mu_);
    correlated = correlator_.Correlate(std::move(event));
  }
  if (correlated.skip) {
    std::lock_guard lock(mu_);
    ++stats_.skipped;
    return;
  }
  Send(correlated, stop);
}

void KubeEventRecorder::Send(const CorrelatedEvent& correlated, std::stop_token stop) {
  const json& event = correlated.event;
  std::string ns = Str(event, "metadata", "namespace");
  std::string collection = "/api/v1/namespaces/" + UrlEncode(ns) + "/events";
  for (int attempt = 1;; ++attempt) {
    Result<KubeReply> reply = Error(Reason::Internal, "not sent");
    bool patched = false;
    if (!correlated.patch.is_null()) {
      reply = client_.Call("PATCH",
                           collection + "/" + UrlEncode(Str(event, "metadata", "name")),
                           correlated.patch, "application/strategic-merge-patch+json", stop);
      patched = reply && reply->ok();
    }
    // A patch fails with 404 when the event has expired on the server (events live an hour):
    // create it again, as client-go does.
    if (correlated.patch.is_null() || (reply && reply->status == 404)) {
      json create = event;
      create["metadata"].erase("resourceVersion");
      reply = client_.Call("POST", collection, create, "application/json", stop);
    }
    if (reply && reply->ok()) {
      {
        std::lock_guard lock(correlator_mu_);
        correlator_.UpdateState(reply->body);
      }
      std::lock_guard lock(mu_);
      ++(patched ? stats_.patched : stats_.created);
      return;
    }
    if (reply) {
      // The server refused it: retrying the same request would not help.
      spdlog::debug("kubernetes: event {} refused: HTTP {} {}", Str(event, "reason"),
                    reply->status, reply->reason());
      std::lock_guard lock(mu_);
      ++stats_.dropped;
      return;
    }
    if (reply.error().reason == Reason::Cancelled || attempt >= options_.max_attempts) {
      spdlog::warn("kubernetes: cannot record event {} about {}/{}: {}", Str(event, "reason"), ns,
                   Str(event, "involvedObject", "name"), reply.error().ToString());
      std::lock_guard lock(mu_);
      ++stats_.dropped;
      return;
    }
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, stop, options_.retry_wait, [] { return false; }) ||
        stop.stop_requested()) {
      ++stats_.dropped;
      return;
    }
  }
}

}  // namespace modelcache::controller
