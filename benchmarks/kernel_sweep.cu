// Times the CUDA kernels outside JAX, under launch configurations given on the command
// line, and checks each one against the CPU kernels: the tool behind the choices in
// csrc/kernels/launch_config.h (benchmarks/NOTES.md has what it measured).
//
//   bash benchmarks/build_sweep.sh            # here or on the GPU machine
//   build/kernel_sweep copy fwd:16384x4096 fwd:1024x65536:block=256,chunks=4,cluster=8 \
//       bwd:4096x4096:stages=2,ctas=132 res:32768x4096:f16
//
// A case is op:ROWSxHIDDEN[:dtype][:key=value,...]; op is fwd, res (fused residual) or bwd;
// dtype bf16 (default), f16 or f32 (the weight is float32). Keys override the chooser's
// launch: fwd/res tpr, chunks, block, cluster, split (fixed=0: the split kernel with its
// CTA size at run time, not the one compiled for it), streaming=1, registers=1, staged=1
// (its stages, wshared=0: the weight from global memory, clusters: the persistent grid, 0 =
// as many as are resident) (and the options f32y=1: y in float32, bf16y=1 / f16y=1: y in
// bf16 / f16 from f32 x, hf=1: the HF order); bwd tpr, chunks, block, cluster, stages,
// ctas, streaming=1, tiles=1 (the row-tile kernel), gtiles=1 (the staged kernel over column
// tiles of a cooperative grid: the chooser's beyond a cluster), staged=1 (its stages; ctas: partial
// rows, the clusters at most), registers=1 (the chooser without the staged kernel; ctas
// stays the chooser's count, 528 where it takes the staged kernel's 128-thread CTAs: give
// ctas=264 for the register kernel's own), few=0 (the chooser without the few-rows kernel;
// its cluster and tpr set the rest of its shape), hf=1 (the HF order's dweight); both offset=K (row buffers start K
// elements past an aligned address). `copy` measures device-to-device copy bandwidth (1
// GiB), `copy:MiB` a copy of that size against it. Times are per call: CUDA-event medians
// over batches of 20 back-to-back launches (the gaps between kernels included; decode-sized
// kernels are host-bound unless --graph replays the batch as a CUDA graph; --check-only
// skips timing) that rotate through input sets of 256 MB or more in all (beyond L2).
// Bandwidth counts the op's byte floor (read x [and residual] / dy and x, write y [and
// residual_out] / dx) against the copy bandwidth measured by `copy`.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/rms_norm_cpu.h"
#include "kernels/rms_norm_cuda.h"

using namespace jax_rmsnorm;

namespace {

#define CHECK(call)                                                                    \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

double copy_bandwidth = 0;  // bytes/s, read + written

struct Case {
  std::string op;
  int64_t rows = 0, hidden = 0;
  DType dtype = DType::kBF16;
  std::vector<std::pair<std::string, int64_t>> keys;
  int64_t get(const char* k, int64_t fallback) const {
    for (auto& kv : keys) if (kv.first == k) return kv.second;
    return fallback;
  }
};

Case parse(const std::string& spec) {
  Case c;
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t colon = spec.find(':', start);
    parts.push_back(spec.substr(start, colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  c.op = parts[0];
  if (parts.size() < 2 || std::sscanf(parts[1].c_str(), "%ldx%ld", &c.rows, &c.hidden) != 2) {
    std::fprintf(stderr, "bad case %s\n", spec.c_str());
    std::exit(2);
  }
  for (size_t i = 2; i < parts.size(); ++i) {
    if (parts[i] == "bf16") c.dtype = DType::kBF16;
    else if (parts[i] == "f16") c.dtype = DType::kF16;
    else if (parts[i] == "f32") c.dtype = DType::kF32;
    else {
      size_t pos = 0;
      while (pos < parts[i].size()) {
        size_t comma = parts[i].find(',', pos);
        std::string kv = parts[i].substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        size_t eq = kv.find('=');
        c.keys.emplace_back(kv.substr(0, eq), std::atoll(kv.c_str() + eq + 1));
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    }
  }
  return c;
}

// Host data in the row dtype, from floats.
std::vector<uint16_t> to_half_bits(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = t == DType::kBF16 ? from_float<BFloat16>(v[i]).bits : from_float<Float16>(v[i]).bits;
  }
  return out;
}

float element(const void* data, DType t, int64_t i) {
  if (t == DType::kF32) return static_cast<const float*>(data)[i];
  if (t == DType::kBF16) return to_float(static_cast<const BFloat16*>(data)[i]);
  return to_float(static_cast<const Float16*>(data)[i]);
}

// Uniform in [-2, 2) from a 64-bit LCG: fast enough for a billion elements.
std::vector<unsigned char> host_rows(int64_t n, DType t, std::mt19937& rng) {
  uint64_t state = rng();
  std::vector<float> f(n);
  for (auto& v : f) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = float(state >> 40) * (4.0f / 16777216.0f) - 2.0f;
  }
  std::vector<unsigned char> bytes(n * dtype_bytes(t));
  if (t == DType::kF32) {
    std::memcpy(bytes.data(), f.data(), bytes.size());
  } else {
    auto bits = to_half_bits(f, t);
    std::memcpy(bytes.data(), bits.data(), bytes.size());
  }
  return bytes;
}

// Every device buffer of a case, freed together; row buffers start `row_offset` bytes
// past a 256-byte boundary (the `offset=` key: unaligned pointers, the scalar path).
std::vector<void*> allocations;
int64_t row_offset = 0;

void* device_alloc(int64_t bytes, int64_t offset) {
  void* d = nullptr;
  CHECK(cudaMalloc(&d, bytes + offset));
  allocations.push_back(d);
  return static_cast<char*>(d) + offset;
}

void* device_rows(int64_t bytes) {
  void* d = device_alloc(bytes, row_offset);
  CHECK(cudaMemset(d, 0xff, bytes));  // NaN: unwritten elements show
  return d;
}

void* device_copy(const std::vector<unsigned char>& host, int64_t offset = 0) {
  void* d = device_alloc(host.size(), offset);
  CHECK(cudaMemcpy(d, host.data(), host.size(), cudaMemcpyHostToDevice));
  return d;
}

void free_allocations() {
  for (void* d : allocations) cudaFree(d);
  allocations.clear();
}

// Max |gpu - cpu| over n elements, the count beyond tolerance (NaN counts) and max |cpu|.
struct Diff {
  double max_diff = 0, max_ref = 0;
  int64_t bad = 0;
};

Diff compare(const void* gpu, const void* cpu, DType t, int64_t n, double rel) {
  Diff d;
  for (int64_t i = 0; i < n; ++i) {
    const double a = element(gpu, t, i), b = element(cpu, t, i);
    const double diff = std::fabs(a - b);
    if (!(diff <= rel * (1 + std::fabs(b)))) ++d.bad;
    if (diff > d.max_diff || std::isnan(diff)) d.max_diff = diff;
    d.max_ref = std::max(d.max_ref, std::fabs(b));
  }
  return d;
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over `reps` batches of kBatch back-to-back enqueue(set) calls, rotating through
// `sets` input sets, per call. Batches keep the GPU queue full, so host launch latency
// stays out of the figure (one event pair per launch would add it to small kernels).
constexpr int kBatch = 20;

// --graph: the batch is captured once into a CUDA graph and replayed, so host launch
// cost leaves the figure; the choice for decode-sized kernels is made in this mode.
bool use_graph = false;

// --check-only: one input set, the CPU check and no timing (for compute-sanitizer runs).
bool check_only = false;

template <typename F>
double time_us(int sets, int reps, F&& enqueue) {
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) enqueue(i % sets, stream);
  cudaGraphExec_t graph_exec = nullptr;
  if (use_graph) {
    cudaGraph_t graph;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int b = 0; b < kBatch; ++b) enqueue(b % sets, stream);
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&graph_exec, graph, 0));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaGraphLaunch(graph_exec, stream));
  }
  std::vector<float> ms;
  int next = 0;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(start, stream));
    if (use_graph) {
      CHECK(cudaGraphLaunch(graph_exec, stream));
    } else {
      for (int b = 0; b < kBatch; ++b) enqueue(next++ % sets, stream);
    }
    CHECK(cudaEventRecord(stop, stream));
    CHECK(cudaEventSynchronize(stop));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t / kBatch);
  }
  if (graph_exec != nullptr) CHECK(cudaGraphExecDestroy(graph_exec));
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  CHECK(cudaStreamDestroy(stream));
  return median(ms) * 1e3;
}

// Per-call microseconds of a device-to-device copy of `bytes`, rotating over `sets` pairs
// of buffers.
double copy_us(int64_t bytes, int sets, int reps) {
  std::vector<void*> from(sets), to(sets);
  for (int s = 0; s < sets; ++s) {
    from[s] = device_alloc(bytes, 0);
    CHECK(cudaMemset(from[s], 1, bytes));
    to[s] = device_alloc(bytes, 0);
  }
  const double us = time_us(sets, reps, [&](int s, cudaStream_t st) {
    CHECK(cudaMemcpyAsync(to[s], from[s], bytes, cudaMemcpyDeviceToDevice, st));
  });
  free_allocations();
  return us;
}

void measure_copy() {
  const int64_t bytes = int64_t{1} << 30;
  const double us = copy_us(bytes, 1, 5);
  copy_bandwidth = 2.0 * bytes / (us * 1e-6);
  std::printf("copy 1 GiB: %.1f us, %.3f TB/s (read + written); peak DRAM bandwidth %.2f TB/s (device attributes)\n",
              us, copy_bandwidth / 1e12, device_memory_bandwidth() / 1e12);
}

void report(const std::string& spec, const std::string& config, double us, double floor_bytes,
            const std::string& check) {
  if (check_only) {
    // A refused launch checked nothing: it must not count as a checked case.
    const bool refused = check.rfind("launch failed", 0) == 0;
    std::printf("%-44s %-40s %s  %s\n", spec.c_str(), config.c_str(), refused ? "REFUSED" : "checked",
                check.c_str());
    std::fflush(stdout);
    return;
  }
  const double bw = floor_bytes / (us * 1e-6);
  std::printf("%-44s %-40s %9.2f us %7.3f TB/s %6.1f%% of copy  %s\n", spec.c_str(), config.c_str(), us,
              bw / 1e12, copy_bandwidth > 0 ? 100.0 * bw / copy_bandwidth : 0.0, check.c_str());
  std::fflush(stdout);
}

std::string fwd_config(const FwdLaunch& l) {
  char buf[160];
  if (l.kernel == FwdKernel::kStaged) {
    std::snprintf(buf, sizeof buf, "staged vec=%d chunks=%d block=%d cluster=%d stages=%d wshared=%d clusters=%s",
                  l.vec, l.chunks, l.block, l.cluster, l.stages, int(l.shared_weight),
                  l.grid == 0 ? "resident" : std::to_string(l.grid / l.cluster).c_str());
    return buf;
  }
  std::snprintf(buf, sizeof buf, "%s vec=%d tpr=%d chunks=%d block=%d cluster=%d split=%d%s grid=%ld",
                l.kernel == FwdKernel::kStreaming ? "streaming" : "registers", l.vec, l.threads_per_row,
                l.chunks, l.block, l.cluster, l.split, l.split > 1 && !l.fixed_block ? " fixed=0" : "",
                long(l.grid));
  return buf;
}

int sets_for(double set_bytes) {
  if (check_only) return 1;
  return static_cast<int>(std::clamp(std::ceil(256e6 / set_bytes), 2.0, 64.0));
}

// copy:MiB: a device-to-device copy of that many MiB (read + written counted), rotating
// over buffers beyond L2 as the kernels' inputs do: how close a transfer of that size
// itself gets to the 1 GiB copy (a short kernel's ramp and tail), the physical limit a
// kernel moving the same bytes is held against.
void measure_sized_copy(const std::string& spec, int64_t mib, int reps) {
  const int64_t bytes = mib << 20;
  report(spec, "cudaMemcpyAsync", copy_us(bytes, sets_for(2.0 * double(bytes)), reps), 2.0 * double(bytes), "");
}

void run_forward(const std::string& spec, const Case& c, int reps) {
  const bool residual = c.op == "res";
  const int eb = dtype_bytes(c.dtype);
  const int64_t n = c.rows * c.hidden;
  // Forward options: f32y=1 writes y in float32 (x narrower), bf16y=1 / f16y=1 in bf16 /
  // f16 (float32 x), hf=1 the HF order.
  DType y_dtype = c.dtype;
  if (c.get("f32y", 0)) y_dtype = DType::kF32;
  if (c.dtype == DType::kF32 && c.get("bf16y", 0)) y_dtype = DType::kBF16;
  if (c.dtype == DType::kF32 && c.get("f16y", 0)) y_dtype = DType::kF16;
  const bool wide_y = dtype_bytes(y_dtype) > eb;
  const int yb = dtype_bytes(y_dtype);
  std::mt19937 rng(0);
  auto x_host = host_rows(n, c.dtype, rng);
  auto r_host = residual ? host_rows(n, c.dtype, rng) : std::vector<unsigned char>();
  std::vector<float> w_host(c.hidden);
  for (auto& v : w_host) v = std::normal_distribution<float>(1.0f, 0.5f)(rng);
  std::vector<unsigned char> w_bytes(c.hidden * 4);
  std::memcpy(w_bytes.data(), w_host.data(), w_bytes.size());

  const int sets = sets_for(double(n) * eb * (residual ? 4 : 2));
  std::vector<FwdProblem> problems(sets);
  void* weight = device_copy(w_bytes);
  for (int s = 0; s < sets; ++s) {
    FwdProblem& p = problems[s];
    p.x = device_copy(x_host, row_offset);
    if (residual) p.residual = device_copy(r_host, row_offset);
    p.weight = weight;
    p.y = device_rows(n * yb);
    if (residual) p.residual_out = device_rows(n * eb);
    p.rstd = static_cast<float*>(device_alloc(c.rows * 4, 0));
    p.rows = c.rows;
    p.hidden = c.hidden;
    p.rows_per_weight = c.rows;
    p.eps = 1e-6f;
    p.x_dtype = c.dtype;
    p.weight_dtype = DType::kF32;
    p.y_dtype = y_dtype;
    p.round_normalized = c.get("hf", 0) != 0;
  }
  FwdLaunch l = choose_fwd_launch(c.rows, c.hidden, eb, c.hidden % (16 / eb) == 0 && row_offset % 16 == 0,
                                  16 /* the H100 and H200 run 16-CTA clusters */, residual, wide_y, 4);
  if (c.get("streaming", 0)) {
    l.kernel = FwdKernel::kStreaming;
    l.block = l.threads_per_row = kMaxBlock;
    l.chunks = l.cluster = 1;
  }
  if (c.get("registers", 0)) l.kernel = FwdKernel::kRegisters;  // rows the chooser stages or streams
  if (c.get("staged", 0)) {
    l.kernel = FwdKernel::kStaged;
    l.split = 1;  // the chooser's decode split (few rows) belongs to the register kernel alone
  }
  l.threads_per_row = int(c.get("tpr", l.threads_per_row));
  l.chunks = int(c.get("chunks", l.chunks));
  l.block = int(c.get("block", l.block));
  if (l.kernel == FwdKernel::kStaged) l.threads_per_row = l.block;
  l.cluster = int(c.get("cluster", l.cluster));
  l.split = int(c.get("split", l.split));
  l.stages = int(c.get("stages", l.stages));
  l.shared_weight = c.get("wshared", l.shared_weight) != 0;
  l.fixed_block = c.get("fixed", l.fixed_block) != 0;
  l.grid = fwd_grid(l, c.rows);
  if (l.kernel == FwdKernel::kStaged) l.grid = c.get("clusters", 0) * l.cluster;  // 0: resident

  // Check set 0 against the CPU kernel.
  std::string err = rms_norm_fwd_cuda(problems[0], 0, &l);
  if (!err.empty()) {
    report(spec, fwd_config(l), 0, 0, "launch failed: " + err);
    free_allocations();
    return;
  }
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> y_gpu(n * yb), y_cpu(n * yb), ro_cpu(residual ? n * eb : 0), ro_gpu(ro_cpu.size());
  std::vector<float> rstd_cpu(c.rows);
  CHECK(cudaMemcpy(y_gpu.data(), problems[0].y, y_gpu.size(), cudaMemcpyDeviceToHost));
  if (residual) CHECK(cudaMemcpy(ro_gpu.data(), problems[0].residual_out, ro_gpu.size(), cudaMemcpyDeviceToHost));
  FwdProblem cpu = problems[0];
  cpu.x = x_host.data();
  cpu.residual = residual ? r_host.data() : nullptr;
  cpu.weight = w_host.data();
  cpu.y = y_cpu.data();
  cpu.residual_out = residual ? ro_cpu.data() : nullptr;
  cpu.rstd = rstd_cpu.data();
  rms_norm_fwd_cpu(cpu);
  const double tol = c.dtype == DType::kF32 && y_dtype == DType::kF32 ? 1e-5 : 1e-2;
  Diff d = compare(y_gpu.data(), y_cpu.data(), y_dtype, n, tol);
  int64_t bad = d.bad;
  if (residual) bad += compare(ro_gpu.data(), ro_cpu.data(), c.dtype, n, 0).bad;
  char check[96];
  std::snprintf(check, sizeof check, "max|gpu-cpu| %.3g, %ld beyond tol%s", d.max_diff, long(bad),
                bad ? "  <-- MISMATCH" : "");

  const double us =
      check_only ? 0 : time_us(sets, reps, [&](int s, cudaStream_t st) { rms_norm_fwd_cuda(problems[s], st, &l); });
  report(spec, fwd_config(l), us, double(n) * (eb * (residual ? 3 : 1) + yb), check);
  free_allocations();
}

void run_backward(const std::string& spec, const Case& c, int reps) {
  const int eb = dtype_bytes(c.dtype);
  const int64_t n = c.rows * c.hidden;
  std::mt19937 rng(1);
  auto x_host = host_rows(n, c.dtype, rng);
  auto dy_host = host_rows(n, c.dtype, rng);
  std::vector<float> w_host(c.hidden);
  for (auto& v : w_host) v = std::normal_distribution<float>(1.0f, 0.5f)(rng);
  std::vector<unsigned char> w_bytes(c.hidden * 4);
  std::memcpy(w_bytes.data(), w_host.data(), w_bytes.size());
  // rstd from the CPU forward, given to both backwards.
  std::vector<float> rstd_host(c.rows);
  {
    std::vector<unsigned char> y(n * eb);
    FwdProblem f;
    f.x = x_host.data();
    f.y = y.data();
    f.rstd = rstd_host.data();
    f.rows = c.rows;
    f.hidden = c.hidden;
    f.rows_per_weight = c.rows;
    f.eps = 1e-6f;
    f.x_dtype = f.y_dtype = c.dtype;
    rms_norm_fwd_cpu(f);
  }
  std::vector<unsigned char> rstd_bytes(c.rows * 4);
  std::memcpy(rstd_bytes.data(), rstd_host.data(), rstd_bytes.size());

  const bool vector_ok = c.hidden % (16 / eb) == 0 && row_offset % 16 == 0;
  BwdLaunch l = choose_bwd_launch(c.hidden, eb, vector_ok, kMaxCluster, c.get("few", 1) ? c.rows : 0);
  // The ring depth the library picks on this device (stages= below overrides it).
  fit_bwd_stages_to_device(l, c.rows, bwd_ctas_per_weight_row(c.rows, c.hidden, eb), device_memory_bandwidth());
  const int64_t units = ceil_div(c.hidden, l.vec);
  // The kernel first (forced or the chooser's), then the keys that override its launch.
  if (c.get("streaming", 0)) {
    l.kernel = FwdKernel::kStreaming;
    l.block = l.threads_per_row = kMaxBlock;
    l.cluster = 1;
  }
  if (c.get("tiles", 0)) use_row_tiles(l, units);  // rows a cluster would take
  if (c.get("staged", 0)) use_staged_bwd(l, units, kMaxCluster);
  if (c.get("gtiles", 0)) use_staged_tiles(l, units);  // the staged kernel over grid tiles
  if (c.get("registers", 0)) l = choose_bwd_register_launch(c.hidden, eb, l.vec > 1, kMaxCluster);
  l.threads_per_row = int(c.get("tpr", l.threads_per_row));
  l.chunks = int(c.get("chunks", l.chunks));
  l.block = int(c.get("block", l.block));
  l.stages = int(c.get("stages", l.stages));
  l.cluster = int(c.get("cluster", l.cluster));
  // The few-rows kernel: its shape follows from tpr and cluster (fit_few_rows).
  if (l.kernel == FwdKernel::kFewRows && !fit_few_rows(l, c.rows, units)) {
    report(spec, "few-rows", 0, 0, "launch failed: the rows do not fit one cluster of that shape");
    free_allocations();
    return;
  }
  int64_t default_ctas = bwd_ctas_per_weight_row(c.rows, c.hidden, eb);
  // A kernel the keys forced: its own partial count.
  if (l.kernel == FwdKernel::kRowTiles || l.kernel == FwdKernel::kStaged) default_ctas = bwd_persistent_partials(c.rows, l);
  const int64_t ctas = c.get("ctas", default_ctas);

  const int sets = sets_for(double(n) * eb * 3);
  std::vector<BwdProblem> problems(sets);
  void* weight = device_copy(w_bytes);
  for (int s = 0; s < sets; ++s) {
    BwdProblem& p = problems[s];
    p.dy = device_copy(dy_host, row_offset);
    p.s = device_copy(x_host, row_offset);
    p.rstd = static_cast<const float*>(device_copy(rstd_bytes));
    p.weight = weight;
    p.dx = device_rows(n * eb);
    p.dweight = device_alloc(c.hidden * 4, 0);
    CHECK(cudaMemset(p.dweight, 0xff, c.hidden * 4));
    p.dweight_partials = static_cast<float*>(device_alloc(ctas * c.hidden * 4, 0));
    p.rows = c.rows;
    p.hidden = c.hidden;
    p.rows_per_weight = c.rows;
    p.weight_rows = 1;
    p.ctas_per_weight_row = ctas;
    p.x_dtype = c.dtype;
    p.weight_dtype = DType::kF32;
    p.round_normalized = c.get("hf", 0) != 0;  // dweight sums dy * round_x(n)
  }
  char config[128];
  std::snprintf(config, sizeof config, "%s vec=%d tpr=%d chunks=%d block=%d cluster=%d stages=%d tiles=%d ctas=%ld",
                l.kernel == FwdKernel::kStreaming  ? "streaming"
                : l.kernel == FwdKernel::kRowTiles ? "row-tiles"
                : l.kernel == FwdKernel::kStaged   ? "staged"
                : l.kernel == FwdKernel::kFewRows  ? "few-rows"
                                                   : "registers",
                l.vec, l.threads_per_row, l.chunks, l.block, l.cluster, l.stages, l.tiles, long(ctas));
  std::string err = rms_norm_bwd_cuda(problems[0], 0, &l);
  if (!err.empty()) {
    report(spec, config, 0, 0, "launch failed: " + err);
    free_allocations();
    return;
  }
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> dx_gpu(n * eb), dx_cpu(n * eb);
  std::vector<float> dw_gpu(c.hidden), dw_cpu(c.hidden);
  CHECK(cudaMemcpy(dx_gpu.data(), problems[0].dx, dx_gpu.size(), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(dw_gpu.data(), problems[0].dweight, c.hidden * 4, cudaMemcpyDeviceToHost));
  BwdProblem cpu = problems[0];
  cpu.dy = dy_host.data();
  cpu.s = x_host.data();
  cpu.rstd = rstd_host.data();
  cpu.weight = w_host.data();
  cpu.dx = dx_cpu.data();
  cpu.dweight = dw_cpu.data();
  cpu.dweight_partials = nullptr;
  rms_norm_bwd_cpu(cpu);
  const double tol = c.dtype == DType::kF32 ? 1e-4 : 2e-2;
  Diff dx = compare(dx_gpu.data(), dx_cpu.data(), c.dtype, n, tol);
  // dweight sums `rows` terms: compare relative to its largest entry.
  Diff dw = compare(dw_gpu.data(), dw_cpu.data(), DType::kF32, c.hidden, 0);
  const bool dw_bad = !(dw.max_diff <= 1e-4 * (1 + dw.max_ref));
  char check[128];
  std::snprintf(check, sizeof check, "dx max diff %.3g (%ld beyond tol), dweight max diff %.3g of %.3g%s",
                dx.max_diff, long(dx.bad), dw.max_diff, dw.max_ref, dx.bad || dw_bad ? "  <-- MISMATCH" : "");
  const double us =
      check_only ? 0 : time_us(sets, reps, [&](int s, cudaStream_t st) { rms_norm_bwd_cuda(problems[s], st, &l); });
  report(spec, config, us, double(n) * eb * 3, check);
  free_allocations();
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string spec = argv[i];
    if (spec == "--graph") {
      use_graph = true;
    } else if (spec == "--check-only") {
      check_only = true;
    } else if (spec.rfind("--reps=", 0) == 0) {
      reps = std::atoi(spec.c_str() + 7);
    } else if (spec == "copy") {
      measure_copy();
    } else if (spec.rfind("copy:", 0) == 0) {
      measure_sized_copy(spec, std::atoll(spec.c_str() + 5), reps);
    } else {
      const Case c = parse(spec);
      row_offset = c.get("offset", 0) * dtype_bytes(c.dtype);
      if (c.op == "fwd" || c.op == "res") {
        run_forward(spec, c, reps);
      } else if (c.op == "bwd") {
        run_backward(spec, c, reps);
      } else {
        std::fprintf(stderr, "unknown op in %s\n", spec.c_str());
        return 2;
      }
    }
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    std::fprintf(stderr, "device error: %s\n", cudaGetErrorString(e));
    return 1;
  }
  return 0;
}
