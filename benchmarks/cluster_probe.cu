// A probe for compute-sanitizer's synccheck on thread-block clusters (benchmarks/NOTES.md,
// entries 20-21 and 29): synccheck stops with "an illegal memory access" (0 errors reported)
// on both staged kernels at some cluster launches, and passes with fewer clusters, and under
// memcheck and racecheck. This kernel has none of the staged kernels' rows, staging or
// indexing: only the ways a cluster synchronizes, the package's own `row_sum` among them, and
// one output word a CTA. Where it stops the same way at the same launches while its results
// are right, the stop points to the tool, not to the staged kernels' accesses.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -o build/cluster_probe benchmarks/cluster_probe.cu
//   compute-sanitizer --tool synccheck build/cluster_probe VARIANT CLUSTER CLUSTERS THREADS SMEM ROUNDS
//
// VARIANT: sync (barrier.cluster arrive.release + wait.acquire), relaxed (the relaxed arrive
// and wait of start_cluster), exchange (start_cluster, then per round the package's row_sum
// over the CTA and the cluster: each CTA's sum by st.async into slot [round % 4][rank] of every
// peer, completing on the peer's mbarrier), peer_load (values in own shared memory, a cluster
// barrier, each CTA reads every peer's by mapa + ld.shared::cluster, a second barrier).
// SMEM: extra dynamic shared memory a CTA (how many CTAs share an SM). Launched through the
// package's launch(). Prints the result check and the resident clusters.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda_common.cuh"
#include "kernels/reduce.cuh"

using namespace jax_rmsnorm;

#define CHECK(call)                                                                          \
  do {                                                                                       \
    cudaError_t err_ = (call);                                                               \
    if (err_ != cudaSuccess) {                                                               \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

enum Variant { kSync = 0, kRelaxed = 1, kExchange = 2, kPeerLoad = 3 };

__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait_acquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // the package's cluster helpers are sm_90 only
__device__ __forceinline__ float load_from_peer(const float* local, unsigned peer) {
  unsigned remote;
  float v;
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(shared_address(local)), "r"(peer));
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
  return v;
}
#endif

__global__ void probe(int variant, int rounds, float* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float padding[];  // only its size matters: how many CTAs an SM holds
  __shared__ RowSumScratch scratch;
  __shared__ float own[kMaxCluster];
  unsigned size;
  asm("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(size));
  const unsigned rank = cluster_rank();
  if (threadIdx.x == 0) padding[0] = 0.f;

  // Each round every CTA puts in (rank + 1) x (round + 1); `total` adds the cluster's sum over
  // (round + 1), so it ends at rounds x size (size + 1) / 2 (exact in float32).
  float total = 0.f;
  if (variant == kSync || variant == kRelaxed) {
    for (int r = 0; r < rounds; ++r) {
      if (variant == kSync) {
        cluster_arrive_release();
        cluster_wait_acquire();
      } else {
        arrive_at_cluster_barrier();
        wait_at_cluster_barrier();
      }
    }
    total = float(rounds) * float(size * (size + 1) / 2);
  } else if (variant == kExchange) {
    start_cluster(scratch, int(size));
    for (int r = 0; r < rounds; ++r) {
      const float mine = threadIdx.x == 0 ? float((rank + 1) * (r + 1)) : 0.f;
      total += row_sum(mine, int(blockDim.x), int(size), scratch, r) / float(r + 1);
    }
  } else {
    for (int r = 0; r < rounds; ++r) {
      if (threadIdx.x < size) own[threadIdx.x] = float((rank + 1) * (r + 1));
      cluster_arrive_release();
      cluster_wait_acquire();
      float sum = threadIdx.x < size ? load_from_peer(&own[rank], threadIdx.x) : 0.f;
      sum = lane_group_sum(sum, kWarp);
      total += sum / float(r + 1);
      cluster_arrive_release();  // every peer has read `own` before it is written again
      cluster_wait_acquire();
    }
  }
  if (threadIdx.x == 0) out[blockIdx.x] = total;
#endif
}

int main(int argc, char** argv) {
  if (argc != 7) {
    std::printf("usage: %s sync|relaxed|exchange|peer_load CLUSTER CLUSTERS THREADS SMEM ROUNDS\n", argv[0]);
    return 2;
  }
  const char* names[] = {"sync", "relaxed", "exchange", "peer_load"};
  int variant = -1;
  for (int v = 0; v < 4; ++v) {
    if (std::strcmp(argv[1], names[v]) == 0) variant = v;
  }
  const int cluster = std::atoi(argv[2]), clusters = std::atoi(argv[3]), threads = std::atoi(argv[4]);
  const int smem = std::atoi(argv[5]), rounds = std::atoi(argv[6]);
  if (variant < 0 || cluster < 1 || cluster > kMaxCluster || clusters < 1 || threads < 64 || threads > 1024 ||
      threads % 32 != 0 || smem < 4 || rounds < 1) {
    std::printf("bad arguments\n");
    return 2;
  }
  const int ctas = cluster * clusters;
  float* out = nullptr;
  CHECK(cudaMalloc(&out, ctas * sizeof(float)));
  // The staged kernels' own launch path: shared memory and cluster opt-ins, cluster dimension.
  const int64_t resident = max_active_clusters(probe, threads, smem, cluster);
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, probe, threads, smem));
  CHECK(launch(probe, dim3(ctas), dim3(threads), smem, cluster, cudaStream_t{0}, variant, rounds, out));
  CHECK(cudaDeviceSynchronize());

  std::vector<float> host(ctas);
  CHECK(cudaMemcpy(host.data(), out, ctas * sizeof(float), cudaMemcpyDeviceToHost));
  const float each = float(rounds) * float(cluster * (cluster + 1) / 2);
  int bad = 0;
  for (float v : host) bad += v != each;
  std::printf("%s cluster=%d clusters=%d threads=%d smem=%d rounds=%d: resident clusters %lld, CTAs a SM %d, %d of %d CTAs wrong\n",
              names[variant], cluster, clusters, threads, smem, rounds, static_cast<long long>(resident), per_sm, bad, ctas);
  CHECK(cudaFree(out));
  return bad == 0 ? 0 : 1;
}
