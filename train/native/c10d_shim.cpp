// libtorch's own distributed engine, c10d, for kiln's data-parallel training: a TCPStore (hosted by rank 0, or by
// torchrun's agent), a ProcessGroup on Gloo (CPU), its collectives (all-reduce, broadcast, all-gather, barrier),
// and c10d::Reducer, the bucketed all-reduce overlapped with backward that torch's DistributedDataParallel runs on.
// Tensors are tch's handles (`at::Tensor*`); every function catches C++ exceptions and reports them through
// kiln_c10d_last_error.
//
// Gloo's own headers are not in the torch wheel, and ProcessGroupGloo.hpp includes them. So this file declares the
// little of ProcessGroupGloo it calls, exactly as libtorch_cpu.so exports it (checked with `nm -DC`): the
// constructor, the destructor and Options::create_default. The object is made by the library's own constructor;
// its size, which the allocation needs, is the one the library's deleting destructor frees (0x1e8 bytes in torch
// 2.11.0: `operator delete(p, 0x1e8)` in _ZN4c10d16ProcessGroupGlooD0Ev), checked at build time below. Every other
// call goes through c10d::Backend's virtual functions, whose declarations are the wheel's.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class ProcessGroupGloo : public Backend {
 public:
  struct Options : public Backend::Options {
    static c10::intrusive_ptr<Options> create_default(std::chrono::milliseconds timeout);
    Options() = delete;
  };
  ProcessGroupGloo(const c10::intrusive_ptr<Store>& store, int rank, int size, c10::intrusive_ptr<Options> options);
  ~ProcessGroupGloo() override;

 private:
  alignas(8) char opaque_[0x1e8 - sizeof(Backend)];
};
static_assert(sizeof(ProcessGroupGloo) == 0x1e8, "ProcessGroupGloo's size in torch 2.11.0");
}  // namespace c10d

namespace {
thread_local std::string last_error;

struct Group {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  // The job's store without the restart's prefix: what must outlive a torchrun restart (the run directory's name).
  c10::intrusive_ptr<c10d::Store> job_store;
};

struct ReducerHandle {
  std::shared_ptr<c10d::Reducer> reducer;
};

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1:
      return c10d::ReduceOp::MAX;
    case 2:
      return c10d::ReduceOp::MIN;
    default:
      return c10d::ReduceOp::SUM;
  }
}
}  // namespace

extern "C" {

const char* kiln_c10d_last_error() { return last_error.c_str(); }

// Joins the group: connects to (or, with host_store, hosts) the TCPStore at host:port, under key prefix `prefix`
// (a fresh one per torchrun restart), and builds a Gloo process group of `world` ranks. Waits up to timeout_ms for
// the others. Returns the group, or null with the error message set.
void* kiln_c10d_group_new(const char* host, int port, int rank, int world, int host_store, const char* prefix,
                          int64_t timeout_ms) {
  Group* out = nullptr;
  guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(port);
    options.isServer = host_store != 0;
    options.numWorkers = world;
    // Every rank counts itself in (a client registers only when it "waits"); the host then waits for all.
    options.waitWorkers = true;
    options.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(host, options);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
    auto gloo_options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo_options);
    auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    out = new Group{group, tcp};
  });
  return out;
}

void kiln_c10d_group_free(void* group) { delete static_cast<Group*>(group); }

// In place over the group: op 0 sum, 1 max, 2 min.
int kiln_c10d_all_reduce(void* group, at::Tensor* tensor, int op) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    static_cast<Group*>(group)->group->allreduce(tensors, options)->wait();
  });
}

// In place: every rank gets `root`'s values.
int kiln_c10d_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<Group*>(group)->group->broadcast(tensors, options)->wait();
  });
}

// Every rank's `input` (same shape on all ranks) into `outputs`, one tensor per rank, allocated by the caller.
int kiln_c10d_all_gather(void* group, at::Tensor* input, at::Tensor** outputs, int world) {
  return guarded([&] {
    std::vector<at::Tensor> in{*input};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int i = 0; i < world; ++i) out[0].push_back(*outputs[i]);
    static_cast<Group*>(group)->group->allgather(out, in)->wait();
  });
}

int kiln_c10d_barrier(void* group) {
  return guarded([&] { static_cast<Group*>(group)->group->barrier()->wait(); });
}

// A Reducer over `params` (the trainable parameters, in the model's order), bucketed as DDP buckets them (1 MiB
// first, then `bucket_bytes_cap`, in reverse order of the parameters, as gradients become ready in backward).
// Gradients are averaged over the ranks when backward ends. Returns the handle, or null with the error message set.
void* kiln_c10d_reducer_new(void* group, at::Tensor** params, size_t count, int64_t bucket_bytes_cap,
                            int find_unused_parameters) {
  ReducerHandle* out = nullptr;
  guarded([&] {
    std::vector<at::Tensor> tensors;
    for (size_t i = 0; i < count; ++i) tensors.push_back(*params[i]);
    std::vector<bool> sparse(count, false);
    std::vector<size_t> limits{static_cast<size_t>(c10d::kDefaultFirstBucketBytes),
                               static_cast<size_t>(bucket_bytes_cap)};
    auto [buckets, per_bucket_limits] = c10d::compute_bucket_assignment_by_size(tensors, limits, sparse);
    std::reverse(buckets.begin(), buckets.end());
    std::vector<int64_t> bucket_limits(per_bucket_limits.rbegin(), per_bucket_limits.rend());
    auto reducer = std::make_shared<c10d::Reducer>(
        tensors, buckets, static_cast<Group*>(group)->group, sparse, bucket_bytes_cap, find_unused_parameters != 0,
        /*gradient_as_bucket_view=*/false, std::unordered_map<size_t, std::string>{},
        static_cast<int64_t>(c10d::kDefaultFirstBucketBytes), /*skip_all_reduce_unused_params=*/false,
        /*use_python_reducer=*/false, bucket_limits);
    out = new ReducerHandle{reducer};
  });
  return out;
}

void kiln_c10d_reducer_free(void* reducer) { delete static_cast<ReducerHandle*>(reducer); }

// Before each backward that should synchronise: `outputs` are the forward's outputs (searched for unused
// parameters when the reducer finds them; otherwise ignored).
int kiln_c10d_reducer_prepare(void* reducer, at::Tensor** outputs, size_t count) {
  return guarded([&] {
    std::vector<at::Tensor> tensors;
    for (size_t i = 0; i < count; ++i) tensors.push_back(*outputs[i]);
    auto& r = static_cast<ReducerHandle*>(reducer)->reducer;
    r->prepare_for_forward();
    r->prepare_for_backward(tensors);
  });
}

// Checks that every rank has parameters of the same count, shapes and dtypes as rank 0, then copies rank 0's
// values to all (as DDP does when it wraps a model).
int kiln_c10d_sync_params(void* group, at::Tensor** params, size_t count, int64_t buffer_bytes) {
  return guarded([&] {
    std::vector<at::Tensor> tensors;
    for (size_t i = 0; i < count; ++i) tensors.push_back(*params[i]);
    auto& g = static_cast<Group*>(group)->group;
    c10d::verify_params_across_processes(g, tensors, std::nullopt);
    at::NoGradGuard no_grad;
    c10d::broadcast_coalesced(g, tensors, static_cast<size_t>(buffer_bytes), 0);
  });
}

// Sets `key` in the job's store (not under the restart's prefix) to `len` bytes.
int kiln_c10d_store_set(void* group, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] {
    std::vector<uint8_t> bytes(value, value + len);
    static_cast<Group*>(group)->job_store->set(key, bytes);
  });
}

// Whether `key` is set in the job's store: 1 yes, 0 no, -1 error.
int kiln_c10d_store_has(void* group, const char* key) {
  int out = -1;
  guarded([&] { out = static_cast<Group*>(group)->job_store->check({key}) ? 1 : 0; });
  return out;
}

// The value of `key` in the job's store, waiting for it up to the store's timeout: written into `out` (of
// `capacity` bytes); returns its length (which may exceed `capacity`: call again with more room), or -1 on error.
int64_t kiln_c10d_store_get(void* group, const char* key, uint8_t* out, size_t capacity) {
  int64_t len = -1;
  guarded([&] {
    auto bytes = static_cast<Group*>(group)->job_store->get(key);
    std::copy_n(bytes.begin(), std::min(bytes.size(), capacity), out);
    len = static_cast<int64_t>(bytes.size());
  });
  return len;
}

}  // extern "C"
