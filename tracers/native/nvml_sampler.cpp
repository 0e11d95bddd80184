// The device sampler as a C++ thread: NVML (dlopen'd, no link-time dependency) read every interval, the samples
// kept until the drain thread takes them. It never takes Python's GIL: a Python sampler thread's NVML calls
// (ctypes releases and retakes the GIL around each) made the traced thread hand the GIL over ~30 times a
// second, each a wait and a switch on the model's thread (benchmarks/RESULTS.md, session 17).
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace {
struct NvmlMemory {  // nvmlMemory_t
  unsigned long long total, free, used;
};
struct NvmlUtilization {  // nvmlUtilization_t
  unsigned int gpu, memory;
};
using InitFn = int (*)();
using HandleByUuidFn = int (*)(const char*, void**);
using HandleByIndexFn = int (*)(unsigned int, void**);
using MemoryFn = int (*)(void*, NvmlMemory*);
using UtilizationFn = int (*)(void*, NvmlUtilization*);

constexpr size_t kMaxKept = 1 << 16;  // ~1.8 h at 10 a second untaken: then the oldest go (counted)

// The sampler's state, on the heap and never destroyed: a process may exit with the sampler running (a trace never
// closed), and destroying a joinable std::thread, or a mutex and vector the thread still uses, at exit would abort
// the process or race with the thread.
struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::thread* thread = nullptr;
  bool running = false;
  bool stop = false;
  std::vector<int64_t> kept;  // (t_ns, used bytes, utilization %) triples, oldest first
  int64_t dropped = 0;
  int32_t error = 0;  // NVML's code of the read that stopped the thread (0: none)
};

State& state() {
  static State* s = new State();
  return *s;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void run(void* device, MemoryFn memory, UtilizationFn utilization, int64_t interval_ns, int64_t t0_ns) {
  State& S = state();
  std::unique_lock<std::mutex> lock(S.mu);
  while (!S.stop) {
    lock.unlock();  // NVML's calls (an ioctl each) outside the lock: a take never waits for the driver
    NvmlMemory mem{};
    NvmlUtilization util{};
    const int rc_mem = memory(device, &mem);
    const int rc_util = rc_mem == 0 ? utilization(device, &util) : 0;
    const int64_t t = now_ns() - t0_ns;
    lock.lock();
    if (rc_mem != 0 || rc_util != 0) {
      S.error = rc_mem != 0 ? rc_mem : rc_util;
      break;
    }
    if (S.kept.size() >= 3 * kMaxKept) {
      S.kept.erase(S.kept.begin(), S.kept.begin() + 3);
      S.dropped++;
    }
    S.kept.insert(S.kept.end(), {t, static_cast<int64_t>(mem.used), static_cast<int64_t>(util.gpu)});
    S.cv.wait_for(lock, std::chrono::nanoseconds(interval_ns), [&S] { return S.stop; });
  }
}
}  // namespace

// Start sampling GPU `uuid` ("GPU-..."; NVML's index `index` where uuid is empty) of the NVML library at `path`
// every `interval_ns`, times in ns since `t0_ns` on the steady clock (Python's perf_counter_ns). 0: started;
// -1: already running; -2: the library did not load; -3: a function is missing; -4: nvmlInit failed;
// -5: no such device.
extern "C" int32_t kvp_sampler_start(const char* path, const char* uuid, int32_t index, int64_t interval_ns, int64_t t0_ns) {
  State& S = state();
  std::lock_guard<std::mutex> guard(S.mu);
  if (S.running) return -1;
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);  // never closed: NVML keeps state for the process's lifetime
  if (lib == nullptr) return -2;
  auto init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
  auto by_uuid = reinterpret_cast<HandleByUuidFn>(dlsym(lib, "nvmlDeviceGetHandleByUUID"));
  auto by_index = reinterpret_cast<HandleByIndexFn>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
  auto memory = reinterpret_cast<MemoryFn>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
  auto utilization = reinterpret_cast<UtilizationFn>(dlsym(lib, "nvmlDeviceGetUtilizationRates"));
  if (!init || !by_uuid || !by_index || !memory || !utilization) return -3;
  if (init() != 0) return -4;
  void* device = nullptr;
  const int rc = (uuid != nullptr && uuid[0] != '\0') ? by_uuid(uuid, &device) : by_index(static_cast<unsigned>(index), &device);
  if (rc != 0) return -5;
  S.kept.clear();
  S.dropped = 0;
  S.error = 0;
  S.stop = false;
  S.running = true;
  S.thread = new std::thread(run, device, memory, utilization, interval_ns, t0_ns);
  return 0;
}

// Move up to `cap` samples, oldest first, into the three arrays; how many were moved.
extern "C" int64_t kvp_sampler_take(int64_t* t_ns, int64_t* used, int64_t* util, int64_t cap) {
  State& S = state();
  std::lock_guard<std::mutex> guard(S.mu);
  const int64_t n = std::min<int64_t>(cap, static_cast<int64_t>(S.kept.size() / 3));
  for (int64_t i = 0; i < n; i++) {
    t_ns[i] = S.kept[3 * i];
    used[i] = S.kept[3 * i + 1];
    util[i] = S.kept[3 * i + 2];
  }
  S.kept.erase(S.kept.begin(), S.kept.begin() + 3 * n);
  return n;
}

// out: [samples waiting, samples dropped (none taken for too long), NVML's code of the read that stopped the
// thread (0: none), running]
extern "C" void kvp_sampler_state(int64_t* out) {
  State& S = state();
  std::lock_guard<std::mutex> guard(S.mu);
  out[0] = static_cast<int64_t>(S.kept.size() / 3);
  out[1] = S.dropped;
  out[2] = S.error;
  out[3] = S.running ? 1 : 0;
}

// Stop the thread and wait for it; the samples it kept stay for a last take.
extern "C" void kvp_sampler_stop() {
  State& S = state();
  {
    std::lock_guard<std::mutex> guard(S.mu);
    if (!S.running) return;
    S.stop = true;
  }
  S.cv.notify_all();
  S.thread->join();
  delete S.thread;
  S.thread = nullptr;
  std::lock_guard<std::mutex> guard(S.mu);
  S.running = false;
}
