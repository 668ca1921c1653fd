// The few libtorch calls kiln needs that tch 0.24 does not bind: channels-last memory format, autocast with a chosen
// dtype (bf16 or fp16) on a chosen device type, whether the GPU computes in bf16 natively, clearing a gradient, and
// the default random generators' state (torch.get_rng_state / set_rng_state, for exact resume). Tensors are tch's
// handles (`at::Tensor*`); every function catches C++ exceptions and reports them through kiln_shim_last_error.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <exception>
#include <mutex>
#include <string>

namespace {
thread_local std::string last_error;

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

const char* kiln_shim_last_error() { return last_error.c_str(); }

// Re-lays a tensor's storage out channels-last in place (every handle to it sees the change, as the parameters
// of a module converted with `.to(memory_format=torch.channels_last)` do). Tensors that are not 4-D are left as
// they are. Returns 0, or 1 with the error message set.
int kiln_shim_to_channels_last_(at::Tensor* tensor) {
  try {
    if (tensor->dim() == 4 && !tensor->is_contiguous(at::MemoryFormat::ChannelsLast)) {
      tensor->set_data(tensor->contiguous(at::MemoryFormat::ChannelsLast));
    }
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

// A channels-last copy of a 4-D tensor (a new handle), or null with the error message set.
at::Tensor* kiln_shim_channels_last(at::Tensor* tensor) {
  try {
    return new at::Tensor(tensor->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

int kiln_shim_is_channels_last(at::Tensor* tensor) {
  return tensor->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// Enters an autocast region on CPU (cuda = 0) or CUDA (cuda = 1) in bf16 (bf16 = 1) or fp16; writes the previous
// state into *prev_enabled / *prev_bf16 for kiln_shim_autocast_exit. Returns 0, or 1 with the error message set.
int kiln_shim_autocast_enter(int cuda, int bf16, int* prev_enabled, int* prev_bf16) {
  try {
    auto type = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *prev_bf16 = at::autocast::get_autocast_dtype(type) == at::kBFloat16 ? 1 : 0;
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::increment_nesting();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

// Leaves the region entered by kiln_shim_autocast_enter, restoring the previous state.
int kiln_shim_autocast_exit(int cuda, int prev_enabled, int prev_bf16) {
  try {
    auto type = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(type, prev_enabled != 0);
    at::autocast::set_autocast_dtype(type, prev_bf16 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

// Drops a tensor's gradient (zero_grad with set_to_none).
void kiln_shim_clear_grad(at::Tensor* tensor) { tensor->mutable_grad().reset(); }

// Whether the GPU computes in bf16 natively (compute capability 8.0 or newer, as torch.cuda.is_bf16_supported).
int kiln_shim_cuda_bf16_supported() {
  try {
    return at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8() ? 1 : 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 0;
  }
}

// The state of the default generator of the CPU (cuda < 0) or of CUDA device `cuda` (torch.get_rng_state,
// torch.cuda.get_rng_state): a new handle to a CPU uint8 tensor, or null with the error message set.
at::Tensor* kiln_shim_rng_state(int cuda) {
  try {
    auto device = cuda < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda));
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    return new at::Tensor(generator.get_state());
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

// Restores a state returned by kiln_shim_rng_state into the same generator. Returns 0, or 1 with the error set.
int kiln_shim_set_rng_state(int cuda, at::Tensor* state) {
  try {
    auto device = cuda < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda));
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(*state);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}
}
