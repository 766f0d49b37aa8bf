// Host-side "NeutronBackend" for ExecuTorch's runtime.
//
// NXP's device runtime registers a backend named "NeutronBackend" that runs Neutron microcode. On a PC there is
// no NPU, so this shim registers a backend under the same name whose init/execute/destroy are forwarded to Python
// callbacks (set through neutron_shim_set_callbacks). Python then runs the emulation payload with LiteRT's
// reference kernels. Every failure is turned into an ExecuTorch error code: a .pte must never abort the process.

#include <cstdint>
#include <new>
#include <vector>

#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/platform/log.h>

namespace {

using executorch::runtime::ArrayRef;
using executorch::runtime::Backend;
using executorch::runtime::BackendExecutionContext;
using executorch::runtime::BackendInitContext;
using executorch::runtime::BackendInterface;
using executorch::runtime::CompileSpec;
using executorch::runtime::DelegateHandle;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::FreeableBuffer;
using executorch::runtime::Result;
using executorch::runtime::Span;

// Returns a handle > 0, or a value <= 0 when the payload cannot be prepared.
using InitFn = int64_t (*)(const uint8_t* data, uint64_t nbytes);
// Arguments are per delegate argument (inputs, then outputs); a non-tensor argument has scalar type -1.
// sizes and dim_orders are the concatenation of every tensor's ndim entries. Returns 0 on success.
using ExecuteFn = int32_t (*)(int64_t handle, int32_t nargs, void* const* data, const int32_t* scalar_types,
                              const int32_t* ndims, const int64_t* sizes, const int64_t* dim_orders,
                              const int64_t* nbytes);
using DestroyFn = void (*)(int64_t handle);

InitFn g_init = nullptr;
ExecuteFn g_execute = nullptr;
DestroyFn g_destroy = nullptr;

struct NeutronHandle {
  int64_t id;
};

class NeutronHostBackend final : public BackendInterface {
 public:
  bool is_available() const override {
    return true;
  }

  Result<DelegateHandle*> init(BackendInitContext& context, FreeableBuffer* processed,
                               ArrayRef<CompileSpec> compile_specs) const override {
    (void)context;
    (void)compile_specs;
    if (g_init == nullptr) {
      ET_LOG(Error, "NeutronBackend (host): no Python callbacks set; call neutron_backend.runtime.register()");
      return Error::InvalidProgram;
    }
    // The Python callback copies the bytes, so the program's copy can be released right away.
    const int64_t id = g_init(static_cast<const uint8_t*>(processed->data()), processed->size());
    processed->Free();
    if (id <= 0) {
      ET_LOG(Error, "NeutronBackend (host): the delegate payload was rejected (code %lld); see the Python log",
             static_cast<long long>(id));
      return Error::InvalidProgram;
    }
    auto* handle = new (std::nothrow) NeutronHandle{id};
    if (handle == nullptr) {
      g_destroy(id);
      return Error::MemoryAllocationFailed;
    }
    return handle;
  }

  Error execute(BackendExecutionContext& context, DelegateHandle* handle, Span<EValue*> args) const override {
    (void)context;
    if (g_execute == nullptr) {
      ET_LOG(Error, "NeutronBackend (host): no Python callbacks set");
      return Error::Internal;
    }
    const size_t nargs = args.size();
    std::vector<void*> data(nargs, nullptr);
    std::vector<int32_t> scalar_types(nargs, -1);
    std::vector<int32_t> ndims(nargs, 0);
    std::vector<int64_t> nbytes(nargs, 0);
    std::vector<int64_t> sizes;
    std::vector<int64_t> dim_orders;
    for (size_t i = 0; i < nargs; ++i) {
      if (args[i] == nullptr || !args[i]->isTensor()) {
        continue;
      }
      auto& tensor = args[i]->toTensor();
      data[i] = tensor.mutable_data_ptr();
      scalar_types[i] = static_cast<int32_t>(tensor.scalar_type());
      ndims[i] = static_cast<int32_t>(tensor.dim());
      nbytes[i] = static_cast<int64_t>(tensor.nbytes());
      for (ssize_t d = 0; d < tensor.dim(); ++d) {
        sizes.push_back(tensor.sizes()[d]);
        dim_orders.push_back(tensor.dim_order()[d]);
      }
    }
    const int64_t id = static_cast<NeutronHandle*>(handle)->id;
    const int32_t rc = g_execute(id, static_cast<int32_t>(nargs), data.data(), scalar_types.data(), ndims.data(),
                                 sizes.data(), dim_orders.data(), nbytes.data());
    if (rc != 0) {
      ET_LOG(Error, "NeutronBackend (host): emulating delegate %lld failed (code %d); see the Python log",
             static_cast<long long>(id), rc);
      return Error::Internal;
    }
    return Error::Ok;
  }

  void destroy(DelegateHandle* handle) const override {
    auto* neutron_handle = static_cast<NeutronHandle*>(handle);
    if (neutron_handle == nullptr) {
      return;
    }
    if (g_destroy != nullptr) {
      g_destroy(neutron_handle->id);
    }
    delete neutron_handle;
  }
};

NeutronHostBackend g_backend;

}  // namespace

extern "C" {

// Sets the Python callbacks; may be called again to replace them.
void neutron_shim_set_callbacks(InitFn init, ExecuteFn execute, DestroyFn destroy) {
  g_init = init;
  g_execute = execute;
  g_destroy = destroy;
}

// Registers the backend as "NeutronBackend"; returns the ExecuTorch Error code
// (RegistrationAlreadyRegistered when that name is already taken).
int32_t neutron_shim_register() {
  static const Backend backend{"NeutronBackend", &g_backend};
  return static_cast<int32_t>(executorch::runtime::register_backend(backend));
}

}  // extern "C"
