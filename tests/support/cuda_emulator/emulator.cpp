// The emulator's scheduler (emulator.h): fibers for threads, one OS thread per
// block, one baton for the whole grid.
#include "emulator.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "include/cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

namespace emu {
namespace {

// Where a thread stands. kRunning: it can run (or runs now).
enum class At { kRunning, kShuffle, kSyncThreads, kGridSync, kExited, kFailed };

const char* what_of(At at) {
  switch (at) {
    case At::kRunning: return "runs";
    case At::kShuffle: return "waits at __shfl_down_sync";
    case At::kSyncThreads: return "waits at __syncthreads";
    case At::kGridSync: return "waits at grid.sync()";
    case At::kExited: return "has returned";
    case At::kFailed: return "has failed";
  }
  return "?";
}

struct Site {
  const char* file = "";
  int line = 0;
};

bool same_site(const Site& a, const Site& b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

std::string where(const Site& s) {
  const char* slash = std::strrchr(s.file, '/');
  return std::string(slash ? slash + 1 : s.file) + ":" + std::to_string(s.line);
}

// Fiber stacks: ASan's frames are larger. The page below each stack is a guard.
#if defined(EMU_ASAN)
constexpr size_t kStackBytes = 1 << 20;
#else
constexpr size_t kStackBytes = 256 << 10;
#endif

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  unsigned tid = 0;
  At at = At::kRunning;
  Site site;
  // The shuffle this thread waits at: its arguments, then its result.
  unsigned mask = 0, delta = 0;
  int width = 32, size = 0;
  unsigned char in[8] = {}, out[8] = {};
};

std::string describe(const Fiber& f) {
  std::string s = "thread " + std::to_string(f.tid) + " " + what_of(f.at);
  if (f.at == At::kShuffle || f.at == At::kSyncThreads || f.at == At::kGridSync) s += " (" + where(f.site) + ")";
  return s;
}

enum class BlockState { kRunnable, kAtGridSync, kDone };

struct Grid {
  const std::function<void()>* body = nullptr;
  unsigned n_blocks = 0, block_threads = 0;
  LaunchKind kind = LaunchKind::kOrdinary;
  bool random = false;
  std::mt19937_64 rng;  // used by the baton holder only
  std::mutex mu;
  std::condition_variable cv;
  int turn = 0;  // the block that holds the baton; -1 when every block has returned
  std::vector<BlockState> state;
  std::vector<Site> grid_site;
  std::vector<char> left_grid_sync;  // per block: the grid has left grid.sync() since its last turn
  bool aborted = false;
  std::string error;
};

struct Block {
  Grid* grid = nullptr;
  unsigned index = 0;
  std::vector<Fiber> fibers;
  // The threads that can run, per warp (each a queue), and the order in which
  // warps get to run: by index, or (random schedules) an order drawn again at
  // every block barrier, so that a warp may run far ahead of another until the
  // next barrier, as a GPU's warp scheduler may let it.
  std::vector<std::deque<unsigned>> ready;
  size_t n_ready = 0;
  std::vector<unsigned> warp_order;
  bool started = false;
  ucontext_t sched;
  Fiber* current = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::string error;  // what a failed fiber reported
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
};

thread_local Block* tl_block = nullptr;

Block& self() {
  if (tl_block == nullptr || tl_block->current == nullptr) throw Error("emu: device code called outside emu::launch");
  return *tl_block;
}

// ---- switching between a block's scheduler and its fibers -------------------

void to_scheduler(Block& b, Fiber& f, bool exiting) {
#if defined(EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, b.sched_bottom, b.sched_size);
#else
  (void)exiting;
#endif
  swapcontext(&f.ctx, &b.sched);
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, &b.sched_bottom, &b.sched_size);
#endif
}

void resume(Block& b, Fiber& f) {
  b.current = &f;
  threadIdx = uint3{f.tid, 0, 0};
  f.at = At::kRunning;
#if defined(EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
  swapcontext(&b.sched, &f.ctx);
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  b.current = nullptr;
}

void fiber_main() {
  Block& b = *tl_block;
#if defined(EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_bottom, &b.sched_size);
#endif
  Fiber& f = *b.current;
  try {
    (*b.grid->body)();
    f.at = At::kExited;
  } catch (const std::exception& e) {
    b.error = e.what();
    f.at = At::kFailed;
  }
  to_scheduler(b, f, /*exiting=*/true);
  std::abort();  // an exited fiber is never resumed
}

void wait_here(At at, Site site) {
  Block& b = self();
  Fiber& f = *b.current;
  f.at = at;
  f.site = site;
  to_scheduler(b, f, /*exiting=*/false);
}

// ---- one block ---------------------------------------------------------------

void make_fibers(Block& b, unsigned n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t slot = kStackBytes + page;
  b.stacks_bytes = slot * n;
  void* mem = mmap(nullptr, b.stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (mem == MAP_FAILED) throw Error("emu: cannot map the fibers' stacks");
  b.stacks = static_cast<char*>(mem);
  b.fibers.resize(n);
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    char* guard = b.stacks + slot * t;
    mprotect(guard, page, PROT_NONE);  // a stack overflow faults instead of corrupting the next stack
    f.stack = guard + page;
    f.tid = t;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  const unsigned warps = (n + 31) / 32;
  b.ready.assign(warps, {});
  b.warp_order.resize(warps);
  std::iota(b.warp_order.begin(), b.warp_order.end(), 0u);
  for (Fiber& f : b.fibers) {
    b.ready[f.tid / 32].push_back(f.tid);
    ++b.n_ready;
  }
}

void free_fibers(Block& b) {
  if (b.stacks != nullptr) munmap(b.stacks, b.stacks_bytes);
  b.stacks = nullptr;
}

void make_ready(Block& b, Fiber& f) {
  f.at = At::kRunning;
  b.ready[f.tid / 32].push_back(f.tid);
  ++b.n_ready;
}

// A new order of warps, at a block barrier (random schedules only).
void reorder_warps(Block& b) {
  if (b.grid->random) std::shuffle(b.warp_order.begin(), b.warp_order.end(), b.grid->rng);
}

// The next thread to run: the first ready one of the first warp in warp_order
// that has one (a random one of that warp in a random schedule).
unsigned next_ready(Block& b) {
  for (unsigned w : b.warp_order) {
    std::deque<unsigned>& q = b.ready[w];
    if (q.empty()) continue;
    if (b.grid->random) std::swap(q.front(), q[static_cast<size_t>(b.grid->rng() % q.size())]);
    const unsigned t = q.front();
    q.pop_front();
    --b.n_ready;
    return t;
  }
  throw Error("emu: no thread is ready");  // (callers check n_ready first)
}

std::string block_name(const Block& b) { return "block " + std::to_string(b.index) + ": "; }

// Every lane of the warp's waiting shuffle stands at it: exchange the values
// and make the lanes ready. False when no lane of the warp waits at a shuffle,
// or (`eager`) when a lane of its mask has not arrived yet.
bool release_shuffle(Block& b, unsigned w0, bool eager) {
  const unsigned n = static_cast<unsigned>(b.fibers.size());
  const unsigned w_end = std::min(n, w0 + 32);
  const Fiber* first = nullptr;
  for (unsigned t = w0; t < w_end && first == nullptr; ++t)
    if (b.fibers[t].at == At::kShuffle) first = &b.fibers[t];
  if (first == nullptr) return false;
  const std::string warp = block_name(b) + "warp " + std::to_string(w0 / 32) + ": ";
  if (eager)
    for (unsigned lane = 0; lane < 32 && w0 + lane < w_end; ++lane)
      if (((first->mask >> lane) & 1u) && b.fibers[w0 + lane].at == At::kRunning) return false;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!((first->mask >> lane) & 1u)) continue;
    if (w0 + lane >= w_end)
      throw Error(warp + "the mask of the shuffle at " + where(first->site) + " names lane " + std::to_string(lane) +
                  ", which this block does not have");
    const Fiber& f = b.fibers[w0 + lane];
    if (f.at != At::kShuffle || !same_site(f.site, first->site))
      throw Error(warp + "lanes of one shuffle diverged: " + describe(*first) + ", " + describe(f) +
                  " (a GPU would hang or exchange garbage)");
    if (f.mask != first->mask || f.delta != first->delta || f.width != first->width || f.size != first->size)
      throw Error(warp + "lanes of the shuffle at " + where(f.site) + " disagree on its mask, offset or width");
  }
  const unsigned width = static_cast<unsigned>(first->width);
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!((first->mask >> lane) & 1u)) continue;
    Fiber& f = b.fibers[w0 + lane];
    const unsigned src = (lane % width) + f.delta < width ? lane + f.delta : lane;
    if (!((first->mask >> src) & 1u))
      throw Error(warp + "lane " + std::to_string(lane) + " of the shuffle at " + where(f.site) + " reads lane " +
                  std::to_string(src) + ", which is not in the mask (undefined on a GPU)");
    std::memcpy(f.out, b.fibers[w0 + src].in, static_cast<size_t>(f.size));
  }
  for (unsigned lane = 0; lane < 32; ++lane)
    if ((first->mask >> lane) & 1u) make_ready(b, b.fibers[w0 + lane]);
  return true;
}

enum class Outcome { kYield, kAtGridSync, kDone };

// No thread of the block can run: release what can be released, or report why
// nothing can. Returns kYield after a release, else the block's state.
Outcome release(Block& b) {
  bool progress = false;
  for (unsigned w0 = 0; w0 < b.fibers.size(); w0 += 32) progress |= release_shuffle(b, w0, /*eager=*/false);
  if (progress) return Outcome::kYield;
  const Fiber* waiting = nullptr;
  for (const Fiber& f : b.fibers)
    if (f.at != At::kExited) {
      waiting = &f;
      break;
    }
  if (waiting == nullptr) return Outcome::kDone;
  for (const Fiber& f : b.fibers) {
    if (f.at == waiting->at && same_site(f.site, waiting->site)) continue;
    throw Error(block_name(b) + "threads diverged at a barrier: " + describe(*waiting) + ", " + describe(f) +
                " (a GPU would hang or run on with a broken barrier)");
  }
  if (waiting->at == At::kSyncThreads) {
    reorder_warps(b);
    for (Fiber& f : b.fibers) make_ready(b, f);
    return Outcome::kYield;
  }
  if (b.grid->kind != LaunchKind::kCooperative)
    throw Error(block_name(b) + "grid.sync() at " + where(waiting->site) +
                " in an ordinary launch: only a cooperative launch may synchronise the grid");
  return Outcome::kAtGridSync;
}

// Runs the block's threads until every one waits at grid.sync() or has
// returned (or, in random order, until it hands over the baton).
Outcome run_block(Block& b, bool left_grid_sync) {
  if (!b.started) {  // (under the baton: the grid's rng is the baton holder's)
    b.started = true;
    reorder_warps(b);
  }
  if (left_grid_sync) {  // (else the block handed over the baton with threads still on their way to it)
    reorder_warps(b);
    for (Fiber& f : b.fibers)
      if (f.at == At::kGridSync) make_ready(b, f);
  }
  for (;;) {
    while (b.n_ready > 0) {
      Fiber& f = b.fibers[next_ready(b)];
      resume(b, f);
      if (f.at == At::kFailed) throw Error(block_name(b) + "thread " + std::to_string(f.tid) + ": " + b.error);
      // A warp leaves its shuffle as soon as its last lane arrives, while other
      // warps may still be on their way to a barrier (as on a GPU): code that
      // assumes the other warps are held back (a missing __syncthreads) shows.
      if (f.at == At::kShuffle) release_shuffle(b, f.tid / 32 * 32, /*eager=*/true);
    }
    const Outcome o = release(b);
    if (o != Outcome::kYield) return o;
    if (b.grid->random && b.grid->n_blocks > 1 && (b.grid->rng() & 1u)) return Outcome::kYield;
  }
}

// Under g.mu: the next block to run, or the grid's release from grid.sync(), or the end.
void pass_baton(Grid& g, unsigned from) {
  std::vector<unsigned> runnable;
  for (unsigned i = 0; i < g.n_blocks; ++i)
    if (g.state[i] == BlockState::kRunnable) runnable.push_back(i);
  if (runnable.empty()) {
    int waiting = -1, done = -1;
    for (unsigned i = 0; i < g.n_blocks; ++i) {
      if (g.state[i] == BlockState::kAtGridSync && waiting < 0) waiting = static_cast<int>(i);
      if (g.state[i] == BlockState::kDone && done < 0) done = static_cast<int>(i);
    }
    if (waiting < 0) {
      g.turn = -1;  // every block has returned
      return;
    }
    if (done >= 0) {
      g.aborted = true;
      g.error = "block " + std::to_string(done) + " returned while block " + std::to_string(waiting) +
                " waits at grid.sync() (" + where(g.grid_site[waiting]) + "): a GPU would hang";
      return;
    }
    for (unsigned i = 0; i < g.n_blocks; ++i) {
      if (!same_site(g.grid_site[i], g.grid_site[waiting])) {
        g.aborted = true;
        g.error = "blocks diverged at grid.sync(): block " + std::to_string(waiting) + " at " +
                  where(g.grid_site[waiting]) + ", block " + std::to_string(i) + " at " + where(g.grid_site[i]);
        return;
      }
      g.state[i] = BlockState::kRunnable;
      g.left_grid_sync[i] = 1;
      runnable.push_back(i);
    }
  }
  if (g.random) {
    g.turn = static_cast<int>(runnable[g.rng() % runnable.size()]);
  } else {  // the next runnable block after `from`, cyclically
    auto it = std::upper_bound(runnable.begin(), runnable.end(), from);
    g.turn = static_cast<int>(it == runnable.end() ? runnable.front() : *it);
  }
}

void block_thread(Grid& g, unsigned index) {
  Block b;
  b.grid = &g;
  b.index = index;
  tl_block = &b;
  blockIdx = uint3{index, 0, 0};
  gridDim = dim3(g.n_blocks);
  blockDim = dim3(g.block_threads);
  try {
    make_fibers(b, g.block_threads);
  } catch (const Error& e) {
    std::lock_guard<std::mutex> lock(g.mu);
    g.aborted = true;
    g.error = e.what();
    g.cv.notify_all();
  }
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(g.mu);
      g.cv.wait(lock, [&] { return g.aborted || g.turn == static_cast<int>(index); });
      if (g.aborted) break;
    }
    bool left_grid_sync;
    {
      std::lock_guard<std::mutex> lock(g.mu);
      left_grid_sync = g.left_grid_sync[index] != 0;
      g.left_grid_sync[index] = 0;
    }
    Outcome o;
    try {
      o = run_block(b, left_grid_sync);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(g.mu);
      if (!g.aborted) {
        g.aborted = true;
        g.error = e.what();
      }
      g.cv.notify_all();
      break;
    }
    std::lock_guard<std::mutex> lock(g.mu);
    g.state[index] = o == Outcome::kDone ? BlockState::kDone
                     : o == Outcome::kAtGridSync ? BlockState::kAtGridSync
                                                 : BlockState::kRunnable;
    if (o == Outcome::kAtGridSync) {
      for (const Fiber& f : b.fibers)
        if (f.at == At::kGridSync) g.grid_site[index] = f.site;
    }
    pass_baton(g, index);
    g.cv.notify_all();
    if (o == Outcome::kDone) break;
  }
  free_fibers(b);
  tl_block = nullptr;
}

}  // namespace

void launch(unsigned grid, unsigned block, LaunchKind kind, const std::function<void()>& thread_body,
            const LaunchOptions& options) {
  if (grid == 0 || block == 0 || block > 1024)
    throw Error("emu: invalid launch configuration: " + std::to_string(grid) + " blocks of " +
                std::to_string(block) + " threads");
  Grid g;
  g.body = &thread_body;
  g.n_blocks = grid;
  g.block_threads = block;
  g.kind = kind;
  g.random = options.seed != 0;
  g.rng.seed(options.seed);
  g.state.assign(grid, BlockState::kRunnable);
  g.grid_site.assign(grid, Site{});
  g.left_grid_sync.assign(grid, 0);
  g.turn = g.random ? static_cast<int>(g.rng() % grid) : 0;
  std::vector<std::thread> threads;
  threads.reserve(grid);
  for (unsigned i = 0; i < grid; ++i) threads.emplace_back(block_thread, std::ref(g), i);
  for (std::thread& t : threads) t.join();
  if (g.aborted) throw Error(g.error);
}

void shuffle_down(unsigned mask, const void* in, void* out, int size, unsigned delta, int width, const char* file,
                  int line) {
  Block& b = self();
  Fiber& f = *b.current;
  const unsigned lane = f.tid % 32;
  if (!((mask >> lane) & 1u)) fail("__shfl_down_sync: the calling lane is not in the mask", file, line);
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail("__shfl_down_sync: width must be a power of 2 no greater than 32", file, line);
  f.mask = mask;
  f.delta = delta;
  f.width = width;
  f.size = size;
  std::memcpy(f.in, in, static_cast<size_t>(size));
  wait_here(At::kShuffle, Site{file, line});
  std::memcpy(out, f.out, static_cast<size_t>(size));
}

void sync_block(const char* file, int line) { wait_here(At::kSyncThreads, Site{file, line}); }

void sync_grid(const char* file, int line) { wait_here(At::kGridSync, Site{file, line}); }

void fail(const std::string& what, const char* file, int line) {
  throw Error(where(Site{file, line}) + ": " + what);
}

}  // namespace emu
