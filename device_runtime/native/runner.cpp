// Torch-free ExecuTorch runner with a small C ABI, loaded from Python with ctypes (device_runtime/native/binding.py).
//
// Why: ExecuTorch's Python runtime imports libtorch (~350 MB RSS before any model); a phone has no torch. This file is
// built against the headers and shared libraries shipped inside the executorch wheel, so the device process holds only
// the ExecuTorch runtime, its kernels and the XNNPACK delegate.
//
// Contract: every function that can fail returns 0 on success and a non-zero code otherwise, writing a readable
// message into the caller's (err, err_len) buffer. Inputs are caller-owned buffers whose byte size is checked against
// the program's own tensor metadata before anything is read.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/executor/method_meta.h>
#include <executorch/runtime/platform/platform.h>

// The wheel ships libexecutorch_threadpool without its header: declare the two entry points we call.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

constexpr int kOk = 0;
constexpr int kBadArgument = 1;
constexpr int kLoadFailed = 2;
constexpr int kRunFailed = 3;

// Stable dtype codes across the ABI (the binding maps them to numpy).
constexpr int kInt64 = 1;
constexpr int kFloat32 = 2;
constexpr int kOther = 99;

int dtype_code(ScalarType t) {
  switch (t) {
    case ScalarType::Long:
      return kInt64;
    case ScalarType::Float:
      return kFloat32;
    default:
      return kOther;
  }
}

// ExecuTorch's default log handler prints every info line (thread pool resets, CPU probing) to the process's stderr,
// which is the user's terminal. Its error lines say why a load or run failed: they are kept here, per thread, and
// appended to the message of the failure they explain; the rest is dropped.
thread_local std::string et_errors;

void keep_errors(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t, const char* message,
                 size_t length) {
  if ((level == kError || level == kFatal) && et_errors.size() < 4096) {
    et_errors.append(et_errors.empty() ? "" : "; ").append(message, length);
  }
}

// Called first by every entry point that can make ExecuTorch log: installs the handler once, forgets old errors.
void begin_call() {
  static std::once_flag once;
  std::call_once(once, [] {
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(keep_errors, __FILE__));
  });
  et_errors.clear();
}

int fail(char* err, size_t err_len, int code, const std::string& msg) {
  if (err != nullptr && err_len > 0) {
    std::string full = et_errors.empty() ? msg : msg + " [executorch: " + et_errors + "]";
    std::snprintf(err, err_len, "%s", full.c_str());
  }
  et_errors.clear();
  return code;
}

std::string describe(Error e) {
  return std::string(executorch::runtime::to_string(e)) + " (error " + std::to_string(static_cast<int>(e)) + ")";
}

// One input slot: the TensorImpl points at the caller's buffer for the duration of one run call.
struct InputSlot {
  ScalarType dtype;
  size_t nbytes;
  std::vector<TensorImpl::SizesType> sizes;
  std::vector<TensorImpl::DimOrderType> dim_order;
};

}  // namespace

struct cl_runner {
  std::unique_ptr<Module> module;
  std::vector<InputSlot> inputs;
  std::vector<EValue> outputs;  // of the last successful run (views into the method's planned memory)
};

extern "C" {

int cl_abi_version() { return 1; }

int cl_set_threads(int n, char* err, size_t err_len) {
  begin_call();
  if (n < 1 || n > 256) {
    return fail(err, err_len, kBadArgument, "thread count must be in [1, 256], got " + std::to_string(n));
  }
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(n))) {
    return fail(err, err_len, kRunFailed, "could not resize the ExecuTorch thread pool");
  }
  return kOk;
}

int cl_get_threads() {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool == nullptr ? 0 : static_cast<int>(pool->get_thread_count());
}

// mmap != 0 maps the file (weights paged in on use) instead of reading it whole into a heap buffer.
int cl_runner_load(const char* path, int mmap, cl_runner** out, char* err, size_t err_len) {
  begin_call();
  if (path == nullptr || out == nullptr) {
    return fail(err, err_len, kBadArgument, "null path or output handle");
  }
  *out = nullptr;
  auto runner = std::unique_ptr<cl_runner>(new (std::nothrow) cl_runner());
  if (!runner) {
    return fail(err, err_len, kLoadFailed, "out of memory");
  }
  runner->module = std::make_unique<Module>(path, mmap ? Module::LoadMode::Mmap : Module::LoadMode::File);
  Error e = runner->module->load();
  if (e != Error::Ok) {
    return fail(err, err_len, kLoadFailed, std::string("cannot load program ") + path + ": " + describe(e));
  }
  e = runner->module->load_method("forward");
  if (e != Error::Ok) {
    return fail(err, err_len, kLoadFailed, std::string("cannot load method 'forward' of ") + path + ": " + describe(e) +
                                               " (a missing operator or backend is logged above)");
  }
  auto meta = runner->module->method_meta("forward");
  if (!meta.ok()) {
    return fail(err, err_len, kLoadFailed, "cannot read the metadata of 'forward': " + describe(meta.error()));
  }
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) {
      return fail(err, err_len, kLoadFailed, "input " + std::to_string(i) + " is not a tensor");
    }
    InputSlot slot;
    slot.dtype = info->scalar_type();
    slot.nbytes = info->nbytes();
    for (auto s : info->sizes()) slot.sizes.push_back(static_cast<TensorImpl::SizesType>(s));
    for (auto d : info->dim_order()) slot.dim_order.push_back(static_cast<TensorImpl::DimOrderType>(d));
    for (size_t k = 0; k < slot.dim_order.size(); ++k) {
      if (slot.dim_order[k] != k) {
        return fail(err, err_len, kLoadFailed, "input " + std::to_string(i) + " is not contiguous (dim order)");
      }
    }
    runner->inputs.push_back(std::move(slot));
  }
  *out = runner.release();
  return kOk;
}

int cl_runner_num_inputs(const cl_runner* r) { return r == nullptr ? -1 : static_cast<int>(r->inputs.size()); }

// Writes the input's dtype code, rank and up to max_dims sizes.
int cl_runner_input_info(const cl_runner* r, int index, int* dtype, int* ndim, int64_t* sizes, int max_dims) {
  if (r == nullptr || index < 0 || index >= static_cast<int>(r->inputs.size())) return kBadArgument;
  const InputSlot& s = r->inputs[index];
  *dtype = dtype_code(s.dtype);
  *ndim = static_cast<int>(s.sizes.size());
  for (int k = 0; k < *ndim && k < max_dims; ++k) sizes[k] = s.sizes[k];
  return kOk;
}

int cl_runner_run_shaped(cl_runner* r, const void* const* data, const uint64_t* nbytes, const int64_t* sizes, int n,
                         char* err, size_t err_len);

// Runs forward on n caller buffers (data[i] holding nbytes[i] bytes, in the program's input order), each of the
// shape the program was planned for.
int cl_runner_run(cl_runner* r, const void* const* data, const uint64_t* nbytes, int n, char* err, size_t err_len) {
  return cl_runner_run_shaped(r, data, nbytes, nullptr, n, err, err_len);
}

// As cl_runner_run, with each input's sizes given (sizes: the inputs' dims concatenated in input order, each input
// of its planned rank; NULL: the planned sizes). A program exported with a dynamic dimension (length buckets) takes
// any size up to the planned one there; ExecuTorch refuses a size it cannot take, and the error says so.
int cl_runner_run_shaped(cl_runner* r, const void* const* data, const uint64_t* nbytes, const int64_t* sizes, int n,
                         char* err, size_t err_len) {
  begin_call();
  if (r == nullptr || (n > 0 && (data == nullptr || nbytes == nullptr))) {
    return fail(err, err_len, kBadArgument, "null runner or input arrays");
  }
  r->outputs.clear();
  if (n != static_cast<int>(r->inputs.size())) {
    return fail(err, err_len, kBadArgument,
                "program takes " + std::to_string(r->inputs.size()) + " inputs, got " + std::to_string(n));
  }
  // TensorImpls (and the sizes and strides they point at) must outlive execute(): planned inputs are copied in
  // set_input, unplanned ones are used in place.
  std::vector<std::unique_ptr<TensorImpl>> impls;
  std::vector<std::vector<TensorImpl::SizesType>> all_sizes(n);
  std::vector<std::vector<TensorImpl::StridesType>> all_strides(n);
  impls.reserve(n);
  size_t offset = 0;
  for (int i = 0; i < n; ++i) {
    InputSlot& s = r->inputs[i];
    const size_t dim = s.sizes.size();
    std::vector<TensorImpl::SizesType>& shape = all_sizes[i];
    size_t planned = 1;
    for (auto size : s.sizes) planned *= static_cast<size_t>(size);
    size_t expected = planned == 0 ? 0 : s.nbytes / planned;  // the element size, times the sizes below
    for (size_t k = 0; k < dim; ++k) {
      const int64_t size = sizes == nullptr ? s.sizes[k] : sizes[offset + k];
      if (size < 0 || size > s.sizes[k]) {
        return fail(err, err_len, kBadArgument,
                    "input " + std::to_string(i) + " dim " + std::to_string(k) + " is " + std::to_string(size) +
                        ", more than the planned " + std::to_string(s.sizes[k]));
      }
      shape.push_back(static_cast<TensorImpl::SizesType>(size));
      expected *= static_cast<size_t>(size);
    }
    offset += dim;
    std::vector<TensorImpl::StridesType>& strides = all_strides[i];
    strides.assign(dim, 1);
    for (size_t k = dim; k-- > 1;) strides[k - 1] = strides[k] * shape[k];
    if (data[i] == nullptr || nbytes[i] != expected) {
      return fail(err, err_len, kBadArgument,
                  "input " + std::to_string(i) + " needs " + std::to_string(expected) + " bytes, got " +
                      (data[i] == nullptr ? std::string("a null pointer") : std::to_string(nbytes[i])));
    }
    impls.push_back(std::make_unique<TensorImpl>(s.dtype, static_cast<ssize_t>(dim), shape.data(),
                                                 const_cast<void*>(data[i]), s.dim_order.data(), strides.data()));
    Error e = r->module->set_input("forward", EValue(Tensor(impls.back().get())), static_cast<size_t>(i));
    if (e != Error::Ok) {
      return fail(err, err_len, kBadArgument, "set_input " + std::to_string(i) + " failed: " + describe(e));
    }
  }
  auto result = r->module->execute("forward");
  if (!result.ok()) {
    return fail(err, err_len, kRunFailed, "execute failed: " + describe(result.error()));
  }
  r->outputs = std::move(*result);
  return kOk;
}

int cl_runner_num_outputs(const cl_runner* r) { return r == nullptr ? -1 : static_cast<int>(r->outputs.size()); }

// Copies output `index` of the last run into `dst` (float32 only), which holds `capacity` floats; writes the
// element count into *numel (dst == NULL only queries it). Fails clearly on a wrong dtype or a too-small buffer.
int cl_runner_output_f32(const cl_runner* r, int index, float* dst, int64_t capacity, int64_t* numel, char* err,
                         size_t err_len) {
  if (r == nullptr || index < 0 || index >= static_cast<int>(r->outputs.size())) {
    return fail(err, err_len, kBadArgument, "no output " + std::to_string(index) + " (run first)");
  }
  const EValue& v = r->outputs[index];
  if (!v.isTensor()) {
    return fail(err, err_len, kRunFailed, "output " + std::to_string(index) + " is not a tensor");
  }
  const Tensor t = v.toTensor();
  if (t.scalar_type() != ScalarType::Float) {
    return fail(err, err_len, kRunFailed, "output " + std::to_string(index) + " is not float32");
  }
  *numel = static_cast<int64_t>(t.numel());
  if (dst == nullptr) {
    return kOk;  // a size query
  }
  if (*numel > capacity) {
    return fail(err, err_len, kBadArgument,
                "output " + std::to_string(index) + " has " + std::to_string(*numel) + " elements, buffer holds " +
                    std::to_string(capacity));
  }
  std::memcpy(dst, t.const_data_ptr<float>(), static_cast<size_t>(*numel) * sizeof(float));
  return kOk;
}

void cl_runner_free(cl_runner* r) { delete r; }

}  // extern "C"
