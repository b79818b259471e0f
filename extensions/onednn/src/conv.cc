// oneDNN 2-D convolutions (NHWC activations, HWIO filters, float32) as XLA FFI handlers:
// the forward pass, the input gradient (backward data) and the filter gradient (backward
// weights). jaxal.conv binds them to JAX primitives with their derivative rules.
//
// Threads: a call splits its examples into as many chunks as XLA's intra-op pool has
// threads (more where a chunk would hold more than 64 examples); the pool's threads and the calling thread claim the chunks one at a time, and
// each chunk is one single-threaded oneDNN primitive. oneDNN's own OpenMP team is not
// used: its barriers wait for the slowest thread, and on a loaded machine they stalled
// for whole scheduler ticks. The filter gradient is summed over the chunks.
//
// Each primitive is planned once per (kind, chunk shape, strides, padding) and cached.
// Activations are handed to oneDNN in place (NHWC, as JAX holds them); the filter is
// reordered into the layout oneDNN chose (format_tag::any), small next to the
// activations. oneDNN's scratchpad is user-managed, one buffer per thread.

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <set>
#include <utility>
#include <vector>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "nanobind/nanobind.h"
#include "nanobind/stl/string.h"
#include "nanobind/stl/vector.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kInputGrad = 1, kFilterGrad = 2 };

// N, H, W, C of the input; KH, KW, O of the filter; OH, OW of the output; strides and
// padding (top, bottom, left, right).
using Key = std::array<int64_t, 16>;

struct Plan {
  Key key;
  dnnl::primitive conv;
  memory::desc weights;     // the layout oneDNN chose for the filter (or its gradient)
  memory::desc scratchpad;  // what one execution needs (user-managed)
  bool reorder = false;     // whether that layout differs from JAX's HWIO
  dnnl::reorder reorder_in, reorder_out;  // HWIO -> the plan's layout, and back
  std::string impl;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Shapes {
  memory::dims src, weights, dst, strides, pad_l, pad_r;
};

Shapes ShapesOf(const Key& k) {
  // oneDNN describes every tensor in logical NCHW / OIHW order; the format tag gives the
  // memory layout.
  return {{k[0], k[3], k[1], k[2]}, {k[6], k[3], k[4], k[5]}, {k[0], k[6], k[7], k[8]},
          {k[9], k[10]}, {k[11], k[13]}, {k[12], k[14]}};
}

memory::desc Md(const memory::dims& dims, tag layout) {
  return memory::desc(dims, memory::data_type::f32, layout);
}

// oneDNN runs single-threaded in this scope (its OpenMP team is the calling thread); the
// thread's OpenMP setting is restored after, for other OpenMP users of the same thread.
class SingleThreaded {
 public:
  SingleThreaded() : before_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(before_); }

 private:
  int before_;
};

// Plans are made for one thread: each chunk of a call runs single-threaded (see Run).
Plan MakePlan(const Key& k) {
  SingleThreaded single;
  Shapes s = ShapesOf(k);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto& engine = Engine();
  auto src = Md(s.src, tag::nhwc), dst = Md(s.dst, tag::nhwc), weights = Md(s.weights, tag::any);
  dnnl::convolution_forward::primitive_desc forward(
      engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      weights, dst, s.strides, s.pad_l, s.pad_r, attr);
  Plan plan;
  plan.key = k;
  if (k[15] == kForward) {
    plan.conv = dnnl::convolution_forward(forward);
    plan.weights = forward.weights_desc();
    plan.scratchpad = forward.scratchpad_desc();
    plan.impl = forward.impl_info_str();
  } else if (k[15] == kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc pd(
        engine, dnnl::algorithm::convolution_direct, src, weights, dst, s.strides, s.pad_l,
        s.pad_r, forward, attr);
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.weights = pd.weights_desc();
    plan.scratchpad = pd.scratchpad_desc();
    plan.impl = pd.impl_info_str();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        engine, dnnl::algorithm::convolution_direct, src, weights, dst, s.strides, s.pad_l,
        s.pad_r, forward, attr);
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.weights = pd.diff_weights_desc();
    plan.scratchpad = pd.scratchpad_desc();
    plan.impl = pd.impl_info_str();
  }
  auto hwio = Md(s.weights, tag::hwio);
  plan.reorder = plan.weights != hwio;
  if (plan.reorder) {
    plan.reorder_in = dnnl::reorder(memory(hwio, engine, nullptr),
                                    memory(plan.weights, engine, nullptr));
    plan.reorder_out = dnnl::reorder(memory(plan.weights, engine, nullptr),
                                     memory(hwio, engine, nullptr));
  }
  return plan;
}

std::mutex plans_mutex;
std::map<Key, std::unique_ptr<Plan>> plans;

// Plans by key; a plan is made once and never removed (one per layer shape and chunk).
const Plan& PlanFor(const Key& key) {
  std::lock_guard<std::mutex> lock(plans_mutex);
  auto& plan = plans[key];
  if (!plan) plan = std::make_unique<Plan>(MakePlan(key));
  return *plan;
}

// x: [N, H, W, C], w: [KH, KW, C, O], y: [N, OH, OW, O] (of whichever buffers hold them).
template <typename Dims>
Key KeyOf(Kind kind, const Dims& x, const Dims& w, const Dims& y, int64_t stride_h, int64_t stride_w, int64_t pad_top,
          int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
          stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, kind};
}

// A call's examples split into chunks that XLA's intra-op threads and the calling thread
// claim one at a time; each chunk is one single-threaded oneDNN call.
struct Work {
  int64_t chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
  std::string error;
  std::function<void(int64_t)> run;

  void Drain() {
    int64_t finished_here = 0;
    for (int64_t c; (c = next.fetch_add(1)) < chunks; ++finished_here) {
      try {
        run(c);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        error = e.what();
      }
    }
    if (finished_here && done.fetch_add(finished_here) + finished_here == chunks) {
      std::lock_guard<std::mutex> lock(mutex);
      finished.notify_all();
    }
  }
};

// Scratch memory per thread, grown as needed (oneDNN's scratchpad is user-managed, so
// that calls on different threads never share one).
void* Scratch(size_t bytes) {
  thread_local std::vector<char> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch.data();
}

// The number of chunks: one per thread of XLA's pool, or more where chunks would hold
// more than kMaxChunk examples; at most one per example.
int64_t Chunks(ffi::ThreadPool& pool, int64_t n) {
  constexpr int64_t max_chunk = 64;
  int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  return std::min(n, std::max(threads, (n + max_chunk - 1) / max_chunk));
}

ffi::Error Run(ffi::ThreadPool pool, Kind kind, const Key& key, float* x, float* w,
               float* y) {
  const int64_t n = key[0];
  const int64_t chunks = Chunks(pool, n);
  const int64_t x_row = key[1] * key[2] * key[3], y_row = key[7] * key[8] * key[6];
  auto& engine = Engine();
  memory hwio(Md(ShapesOf(key).weights, tag::hwio), engine, w);
  try {
    // Chunk c holds examples [c n / chunks, (c + 1) n / chunks): at most two sizes, so at
    // most two plans, made here before any thread runs.
    std::vector<const Plan*> plan(chunks);
    std::vector<int64_t> begin(chunks + 1);
    for (int64_t c = 0; c <= chunks; ++c) begin[c] = c * n / chunks;
    for (int64_t c = 0; c < chunks; ++c) {
      Key k = key;
      k[0] = begin[c + 1] - begin[c];
      plan[c] = &PlanFor(k);
    }
    // The filter in each plan's layout (forward, input grad), or each chunk's filter
    // gradient in its plan's layout (filter grad).
    std::map<const Plan*, memory> filter;
    std::vector<memory> partial;
    dnnl::stream stream(engine);
    if (kind == kFilterGrad) {
      for (int64_t c = 0; c < chunks; ++c) partial.emplace_back(plan[c]->weights, engine);
    } else {
      for (const Plan* p : plan) {
        if (filter.count(p)) continue;
        filter[p] = p->reorder ? memory(p->weights, engine) : hwio;
        if (p->reorder) p->reorder_in.execute(stream, hwio, filter[p]);
      }
      stream.wait();
    }
    auto work = std::make_shared<Work>();
    work->chunks = chunks;
    work->run = [&, kind](int64_t c) {
      const Plan& p = *plan[c];
      Shapes s = ShapesOf(p.key);
      memory src(Md(s.src, tag::nhwc), engine, x + begin[c] * x_row);
      memory dst(Md(s.dst, tag::nhwc), engine, y + begin[c] * y_row);
      memory scratch(p.scratchpad, engine, Scratch(p.scratchpad.get_size()));
      dnnl::stream chunk_stream(engine);
      if (kind == kForward) {
        p.conv.execute(chunk_stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, filter.at(&p)},
                                      {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      } else if (kind == kInputGrad) {
        p.conv.execute(chunk_stream,
                       {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, filter.at(&p)},
                        {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      } else {
        p.conv.execute(chunk_stream,
                       {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, partial[c]},
                        {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      }
      chunk_stream.wait();
    };
    SingleThreaded single;
    for (int64_t c = 1; c < chunks; ++c) {
      pool.Schedule([work]() {
        SingleThreaded single_here;
        work->Drain();
      });
    }
    work->Drain();
    {
      std::unique_lock<std::mutex> lock(work->mutex);
      work->finished.wait(lock, [&] { return work->done.load() == chunks; });
    }
    if (!work->error.empty()) {
      return ffi::Error::Internal("oneDNN convolution: " + work->error);
    }
    if (kind == kFilterGrad) {
      // The chunks' filter gradients, each in HWIO, summed into the result.
      const size_t size = hwio.get_desc().get_size() / sizeof(float);
      std::vector<float> buffer(chunks > 1 ? size : 0);
      for (int64_t c = 0; c < chunks; ++c) {
        float* into = c == 0 ? w : buffer.data();
        memory out(hwio.get_desc(), engine, into);
        if (plan[c]->reorder) {
          plan[c]->reorder_out.execute(stream, partial[c], out);
          stream.wait();
        } else {
          std::memcpy(into, partial[c].get_data_handle(), size * sizeof(float));
        }
        if (c > 0) {
          for (size_t i = 0; i < size; ++i) w[i] += into[i];
        }
      }
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr) {
  Key key = KeyOf(kForward, x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb,
                  pl, pr);
  return Run(pool, kForward, key, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pb, int64_t pl, int64_t pr) {
  Key key = KeyOf(kInputGrad, dx->dimensions(), w.dimensions(), g.dimensions(), sh, sw, pt,
                  pb, pl, pr);
  return Run(pool, kInputGrad, key, dx->typed_data(), w.typed_data(), g.typed_data());
}

ffi::Error FilterGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  Key key = KeyOf(kFilterGrad, x.dimensions(), dw->dimensions(), g.dimensions(), sh, sw, pt,
                  pb, pl, pr);
  return Run(pool, kFilterGrad, key, x.typed_data(), dw->typed_data(), g.typed_data());
}

#define JAXAL_CONV_BINDING                                   \
  ffi::Ffi::Bind()                                                                  \
      .Ctx<ffi::ThreadPool>()                                                       \
      .Arg<ffi::Buffer<ffi::F32>>()                                                 \
      .Arg<ffi::Buffer<ffi::F32>>()                                                 \
      .Ret<ffi::Buffer<ffi::F32>>()                                                 \
      .Attr<int64_t>("stride_h")                                                    \
      .Attr<int64_t>("stride_w")                                                    \
      .Attr<int64_t>("pad_top")                                                     \
      .Attr<int64_t>("pad_bottom")                                                  \
      .Attr<int64_t>("pad_left")                                                    \
      .Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxalOnednnConvForward, Forward,
                              JAXAL_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxalOnednnConvInputGrad, InputGrad,
                              JAXAL_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxalOnednnConvFilterGrad, FilterGrad,
                              JAXAL_CONV_BINDING);

namespace {

template <typename T>
nb::capsule Capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

// Every plan made so far: (kind, input NHWC, filter HWIO, output NHWC, implementation).
nb::list Plans() {
  nb::list out;
  std::lock_guard<std::mutex> lock(plans_mutex);
  for (const auto& [k, p] : plans) {
    out.append(nb::make_tuple(
        static_cast<int>(k[15]), std::vector<int64_t>{k[0], k[1], k[2], k[3]},
        std::vector<int64_t>{k[4], k[5], k[3], k[6]},
        std::vector<int64_t>{k[0], k[7], k[8], k[6]}, p->impl));
  }
  return out;
}

}  // namespace

NB_MODULE(_conv, m) {
  m.doc() = "oneDNN 2-D convolutions as XLA FFI handlers (jaxal.conv)";
  m.def("handlers", []() {
    nb::dict d;
    d["jaxal_onednn_conv_forward"] = Capsule(JaxalOnednnConvForward);
    d["jaxal_onednn_conv_input_grad"] = Capsule(JaxalOnednnConvInputGrad);
    d["jaxal_onednn_conv_filter_grad"] = Capsule(JaxalOnednnConvFilterGrad);
    return d;
  });
  m.def("plans", &Plans,
        "Every oneDNN convolution planned so far: (kind: 0 forward, 1 input grad, 2 filter "
        "grad; input NHWC, filter HWIO and output NHWC shapes of one chunk; implementation).");
  m.def("onednn_version", []() {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  });
}
