// XLA FFI handlers for the CPU platform.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "cpu/rms_norm_cpu.h"
#include "ffi/calls.h"
#include "ffi/handlers.h"

namespace jax_rmsnorm {

// Runs the kernels' chunks on XLA's intra-op thread pool and the calling thread. The caller
// claims chunks until none are left, then waits only for chunks already running: it never
// waits on a task the pool has not started, so a busy pool cannot deadlock it. A task
// that starts after that finds nothing to claim (what it shares lives on the heap).
// A chunk that throws (std::bad_alloc from its buffers) stops the claiming; the first
// exception is rethrown on the calling thread once no chunk runs, never in a pool thread.
class OnThreadPool {
 public:
  explicit OnThreadPool(ffi::ThreadPool pool) : pool_(pool) {}

  template <typename F>
  void operator()(int64_t chunks, F&& body) {
    const int64_t helpers = std::min<int64_t>(pool_.num_threads(), chunks) - 1;
    if (helpers < 1) return InTurn{}(chunks, body);
    struct Progress {
      std::atomic<int64_t> next{0};
      int64_t done = 0;  // chunks claimed and finished, or given up after a failure
      std::exception_ptr failure;
      std::mutex mutex;
      std::condition_variable all_done;
    };
    auto progress = std::make_shared<Progress>();
    auto work = [progress, chunks, &body] {
      for (int64_t c; (c = progress->next.fetch_add(1)) < chunks;) {
        std::exception_ptr failure;
        try {
          body(c);
        } catch (...) {
          failure = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(progress->mutex);
        int64_t finished = 1;
        if (failure) {
          if (!progress->failure) progress->failure = failure;
          // Chunks nobody has claimed yet are given up: claim them all at once.
          const int64_t unclaimed = chunks - std::min(chunks, progress->next.exchange(chunks));
          finished += unclaimed;
        }
        progress->done += finished;
        if (progress->done == chunks) progress->all_done.notify_all();
      }
    };
    // Scheduling allocates; if that fails, the chunks still all run (on the threads
    // scheduled so far and this one), so the results are whole and the call succeeds; the
    // wait below holds `body` alive for them.
    try {
      for (int64_t t = 0; t < helpers; ++t) pool_.Schedule([work] { work(); });
    } catch (...) {
    }
    work();
    std::unique_lock<std::mutex> lock(progress->mutex);
    progress->all_done.wait(lock, [&] { return progress->done == chunks; });
    if (progress->failure) std::rethrow_exception(progress->failure);
  }

 private:
  ffi::ThreadPool pool_;
};

// Runs a handler's body, turning an exception from it (its buffers' allocations) into an
// error for XLA, so that running out of host memory fails the call instead of the process.
// The messages are allocated first: under memory pressure building one in the catch could
// throw again, out of the handler, and that ends the process.
template <typename F>
static ffi::Error run_or_error(const char* what, F&& body) {
  std::string out_of_memory, failed;
  try {
    out_of_memory = std::string("jax_rmsnorm: out of host memory in the CPU ") + what;
    failed = std::string("jax_rmsnorm: C++ exception in the CPU ") + what + ": ";
  } catch (...) {  // left empty: the error code still says it
  }
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::move(out_of_memory));
  } catch (const std::exception& e) {  // nothing else throws in the kernels; keep the process alive regardless
    try {
      failed += e.what();
    } catch (...) {
    }
    return ffi::Error(ffi::ErrorCode::kInternal, std::move(failed));
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::move(failed));
  }
}

static ffi::Error RunFwdCpu(ffi::ThreadPool pool, float eps, bool has_residual, bool has_weight,
                            bool save_rstd, bool v2, bool round_normalized, ffi::RemainingArgs args,
                            ffi::RemainingRets rets) {
  return run_or_error("forward", [&] {
    FwdProblem p;
    ffi::Error error = decode_fwd_call(args, rets, eps, has_residual, has_weight, save_rstd, p, v2,
                                       round_normalized);
    if (error.success()) rms_norm_fwd_cpu(p, OnThreadPool(pool));
    return error;
  });
}

static ffi::Error RmsNormFwdCpu(ffi::ThreadPool pool, float eps, bool has_residual, bool has_weight,
                                bool save_rstd, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunFwdCpu(pool, eps, has_residual, has_weight, save_rstd, false, false, args, rets);
}

static ffi::Error RmsNormFwdCpuV2(ffi::ThreadPool pool, float eps, bool has_residual, bool has_weight,
                                  bool save_rstd, bool round_normalized, ffi::RemainingArgs args,
                                  ffi::RemainingRets rets) {
  return RunFwdCpu(pool, eps, has_residual, has_weight, save_rstd, true, round_normalized, args, rets);
}

static ffi::Error RunBwdCpu(ffi::ThreadPool pool, bool has_weight, bool has_residual_grad,
                            bool want_dweight, int64_t ctas_per_weight_row, bool round_normalized,
                            ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return run_or_error("backward", [&] {
    BwdProblem p;
    ffi::Error error = decode_bwd_call(args, rets, has_weight, has_residual_grad, want_dweight,
                                       ctas_per_weight_row, p, round_normalized);
    if (error.success()) rms_norm_bwd_cpu(p, OnThreadPool(pool));
    return error;
  });
}

static ffi::Error RmsNormBwdCpu(ffi::ThreadPool pool, bool has_weight, bool has_residual_grad,
                                bool want_dweight, int64_t ctas_per_weight_row, ffi::RemainingArgs args,
                                ffi::RemainingRets rets) {
  return RunBwdCpu(pool, has_weight, has_residual_grad, want_dweight, ctas_per_weight_row, false, args, rets);
}

static ffi::Error RmsNormBwdCpuV2(ffi::ThreadPool pool, bool has_weight, bool has_residual_grad,
                                  bool want_dweight, int64_t ctas_per_weight_row, bool round_normalized,
                                  ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunBwdCpu(pool, has_weight, has_residual_grad, want_dweight, ctas_per_weight_row, round_normalized,
                   args, rets);
}

}  // namespace jax_rmsnorm

// Contexts: XLA's intra-op threads. fwd: x, [residual], [weight] -> y (x's dtype, or float32
// under v2), [residual_out], [rstd]. bwd: dy, s, rstd, [weight], [d_new_residual] -> dx,
// [dweight, dweight_partials].
using CpuPool = xla::ffi::ThreadPool;
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cpu, jax_rmsnorm::RmsNormFwdCpu,
                              jax_rmsnorm::bind_fwd_attrs<CpuPool>().RemainingArgs().RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cpu, jax_rmsnorm::RmsNormFwdCpuV2,
                              jax_rmsnorm::bind_fwd_attrs<CpuPool>()
                                  .Attr<bool>("round_normalized")
                                  .RemainingArgs()
                                  .RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cpu, jax_rmsnorm::RmsNormBwdCpu,
                              jax_rmsnorm::bind_bwd_attrs<CpuPool>().RemainingArgs().RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_v2_cpu, jax_rmsnorm::RmsNormBwdCpuV2,
                              jax_rmsnorm::bind_bwd_attrs<CpuPool>()
                                  .Attr<bool>("round_normalized")  // dweight of the HF order
                                  .RemainingArgs()
                                  .RemainingRets());
