#pragma once

// Objects shared by the crds tests.

#include "crds/model_cache.h"

namespace modelcache::crds::testing {

// A valid object with every field of spec, metadata and status set to a non-default value, so
// that ToJson emits every property the API has.
inline ModelCache FullObject() {
  ModelCache mc;
  mc.metadata.name = "qwen3-0-6b";
  mc.metadata.namespace_ = "models";
  mc.metadata.uid = "5f0c3f3e-1d2b-4c4f-9a4e-0e6f1f7d2a10";
  mc.metadata.resource_version = "12345";
  mc.metadata.generation = 3;
  mc.metadata.creation_timestamp = "2026-01-02T03:04:05Z";
  mc.metadata.deletion_timestamp = "2026-01-03T00:00:00Z";
  mc.metadata.labels = {{"app.kubernetes.io/name", "qwen"}, {"tier", "1"}};
  mc.metadata.annotations = {{"note", "true"}};
  mc.metadata.finalizers = {"modelcache.dev/cleanup"};

  ModelCacheSpec& s = mc.spec;
  s.source.repo = "Qwen/Qwen3-0.6B";
  s.source.type = "model";
  s.source.revision = "v1.0";
  s.source.include = {"*.json", "*.safetensors", "tokenizer*"};
  s.source.exclude = {"original/*"};
  s.source.endpoint = "http://127.0.0.1:8080/hub";
  s.source.token_secret_ref = SecretKeyRef{"hf-token", "token"};
  s.artifact_name = "qwen3";
  s.accelerator = "L40s:4";
  s.shard = ShardSpec{"sglang", 2, "bfloat16", "2GiB"};
  s.storage.uri = "s3://models-bucket/prefix";
  s.refresh_interval = "1h30m";
  s.force = 2;
  s.node_selector = {{"nvidia.com/gpu.product", "L40S"}};

  ModelCacheStatus& st = mc.status;
  st.observed_generation = 3;
  st.phase = "Ready";
  st.resolved_revision = "0123456789abcdef0123456789abcdef01234567";
  st.artifact = ArtifactStatus{"qwen3",
                               "v3",
                               "qwen3@sha256:" + std::string(64, 'a'),
                               "file:///var/lib/modelcache/artifacts/qwen3/v3",
                               "/var/lib/modelcache/artifacts/qwen3/v3",
                               1'234'567'890'123ULL,
                               7};
  st.progress = ProgressStatus{100, 200, 1, 2, 50};
  st.nodes = NodesStatus{3, 2, 1};
  st.conditions = {
      Condition{"Ready", "True", "Ready", "artifact published", "2026-01-02T03:05:00Z", 3}};
  return mc;
}

}  // namespace modelcache::crds::testing
