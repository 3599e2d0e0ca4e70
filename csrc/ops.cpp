// The batch-norm CPU ops, registered with the torch dispatcher (TORCH_LIBRARY(batchnorm)).
//
// Each primitive of batchnorm/core/kernels/__init__.py is one op with a CPU kernel (the table
// of kernels.cpp chosen for this CPU); their fake (shape) implementations, for torch.compile
// and torch.export, are registered in Python (batchnorm/core/kernels/_cpu.py, symbolic shapes
// included), so eager mode, torch.compile and torch.export all run or record the same op. `batchnorm::train` is the whole training forward (statistics, then normalize)
// in one call, with its closed-form backward registered here for the Autograd key: an eager
// training step crosses from Python to C++ once forward and once backward.
//
// Instruction sets: kernels.cpp is compiled once per ISA (setup.py); the table is picked at
// load time, the widest the CPU supports, or BATCHNORM_CPU_ISA=avx512|avx2|baseline
// (`batchnorm::set_isa` switches in a running process, for the tests).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernel_table.h"

namespace {

using at::Tensor;

// ------------------------------------------------------------------ the ISA, chosen at load

bool cpu_has(const std::string& isa) {
  if (isa == "baseline") return true;
#if defined(BN_HAVE_X86_ISAS)
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return false;
}

const bn_kernel_table* table_for(const std::string& isa) {
#if defined(BN_HAVE_X86_ISAS)
  if (isa == "avx512") return bn_kernels_avx512();
  if (isa == "avx2") return bn_kernels_avx2();
#endif
  if (isa == "baseline") return bn_kernels_baseline();
  return nullptr;
}

struct IsaState {
  const bn_kernel_table* table = nullptr;
  std::string reason;
};

IsaState choose(const char* asked) {
  IsaState s;
  const char* order[] = {"avx512", "avx2", "baseline"};
  std::string best;
  for (const char* isa : order)
    if (table_for(isa) && cpu_has(isa)) {
      best = isa;
      break;
    }
  if (asked && *asked) {
    const std::string want(asked);
    if (!table_for(want)) {
      s.reason = "BATCHNORM_CPU_ISA=" + want + " is not built here (avx512, avx2, baseline on "
                 "x86-64; baseline elsewhere); using " + best;
    } else if (!cpu_has(want)) {
      s.reason = "BATCHNORM_CPU_ISA=" + want + " is not supported by this CPU; using " + best;
    } else {
      s.table = table_for(want);
      s.reason = "BATCHNORM_CPU_ISA=" + want;
      return s;
    }
  } else {
    s.reason = "the widest instruction set this CPU supports";
  }
  s.table = table_for(best);
  return s;
}

IsaState& state() {
  static IsaState s = choose(std::getenv("BATCHNORM_CPU_ISA"));
  return s;
}

const bn_kernel_table& K() { return *state().table; }

std::string info() { return std::string(K().isa) + ": " + state().reason; }

std::string set_isa(const std::string& isa) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  IsaState s = choose(isa.c_str());
  TORCH_CHECK(std::string(s.table->isa) == isa || isa.empty(), "batchnorm: ", s.reason);
  state() = s;
  return info();
}

// ------------------------------------------------------------------ threads

void run_on_torch_threads(void*, int64_t n, void* st, void (*fn)(void*, int64_t)) {
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(st, i);
  });
}

bn_par threads() {
  bn_par p;
  p.run = run_on_torch_threads;
  p.ctx = nullptr;
  p.nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  return p;
}

// ------------------------------------------------------------------ geometry and dtypes

int dtype_code(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kBFloat16: return 2;
    case at::kHalf: return 3;
    default: return -1;
  }
}

int vec_code(const Tensor& v) {
  return v.scalar_type() == at::kFloat ? 0 : v.scalar_type() == at::kDouble ? 1 : -1;
}

at::ScalarType acc_of(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct Geo {
  int64_t outer, C, inner;
};

// (outer, C, inner) of a dense layout the kernels read: contiguous (inner > 1 is channel-major
// runs) or channel axis innermost with the rest dense (inner == 1: rows of C channels).
bool geometry(const Tensor& x, int64_t axis, Geo* g) {
  const int64_t C = x.size(axis);
  if (x.is_contiguous()) {
    int64_t outer = 1, inner = 1;
    for (const auto d : c10::irange(axis)) outer *= x.size(d);
    for (int64_t d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
    *g = {outer, C, inner};
    return true;
  }
  if (x.stride(axis) == 1 && x.movedim(axis, -1).is_contiguous()) {
    *g = {C ? x.numel() / C : 0, C, 1};
    return true;
  }
  return false;
}

// The kernels' view of x: itself, or a contiguous copy of a layout they do not read (the
// Python side declines those before they get here; this keeps a direct call correct).
Tensor readable(const Tensor& x, int64_t axis, Geo* g) {
  TORCH_CHECK(axis >= 0 && axis < x.dim(), "batchnorm: axis ", axis, " out of range for rank ",
              x.dim());
  TORCH_CHECK(dtype_code(x) >= 0, "batchnorm: unsupported dtype ", x.scalar_type());
  if (geometry(x, axis, g)) return x;
  Tensor c = x.contiguous();
  geometry(c, axis, g);
  return c;
}

// t in x's dtype and memory layout (the kernels index both with x's geometry).
Tensor like(const Tensor& t, const Tensor& x) {
  if (t.scalar_type() == x.scalar_type() && t.strides() == x.strides()) return t;
  return at::empty_like(x).copy_(t);
}

Tensor vec(const Tensor& v, at::ScalarType dt) {
  if (v.scalar_type() == dt && v.is_contiguous()) return v;
  return v.to(dt).contiguous();
}

Tensor opt_vec(const c10::optional<Tensor>& v, at::ScalarType dt) {
  return v.has_value() && v->defined() ? vec(*v, dt) : Tensor();
}

const void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void check(int rc, const char* what) { TORCH_CHECK(rc == 0, "batchnorm::", what, " failed (", rc, ")"); }

// ------------------------------------------------------------------ CPU kernels of the ops

std::tuple<Tensor, Tensor> stats_cpu(const Tensor& x_in, int64_t axis) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  Tensor mean = at::empty({g.C}, x.options().dtype(at::kDouble));
  Tensor var = at::empty({g.C}, x.options().dtype(acc_of(x)));
  const bn_par p = threads();
  check(K().stats(dtype_code(x), x.data_ptr(), g.outer, g.C, g.inner, mean.data_ptr<double>(),
                  var.data_ptr(), &p), "stats");
  return {mean, var};
}

Tensor normalize_cpu(const Tensor& x_in, int64_t axis, const Tensor& mean, const Tensor& scale,
                     const Tensor& shift) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  const auto acc = acc_of(x);
  const Tensor m = vec(mean, at::kDouble), s = vec(scale, acc), b = vec(shift, acc);
  Tensor y = at::empty_like(x);
  const bn_par p = threads();
  check(K().normalize(dtype_code(x), x.data_ptr(), y.data_ptr(), g.outer, g.C, g.inner,
                      m.data_ptr<double>(), s.data_ptr(), b.data_ptr(), &p), "normalize");
  return y;
}

std::tuple<Tensor, Tensor> backward_reduce_cpu(const Tensor& dy, const Tensor& x_in, int64_t axis,
                                               const Tensor& mean) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  const auto acc = acc_of(x);
  const Tensor d = like(dy, x), m = vec(mean, at::kDouble);
  Tensor s1 = at::empty({g.C}, x.options().dtype(acc));
  Tensor s2 = at::empty({g.C}, x.options().dtype(acc));
  const bn_par p = threads();
  check(K().backward_reduce(dtype_code(x), d.data_ptr(), x.data_ptr(), g.outer, g.C, g.inner,
                            m.data_ptr<double>(), s1.data_ptr(), s2.data_ptr(), &p),
        "backward_reduce");
  return {s1, s2};
}

Tensor backward_elemt_cpu(const Tensor& dy, const Tensor& x_in, int64_t axis, const Tensor& mean,
                          const Tensor& k, const Tensor& mean_dy, const Tensor& proj) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  const auto acc = acc_of(x);
  const Tensor d = like(dy, x), m = vec(mean, at::kDouble);
  const Tensor kk = vec(k, acc), md = vec(mean_dy, acc), pr = vec(proj, acc);
  Tensor dx = at::empty_like(x);
  const bn_par p = threads();
  check(K().backward_elemt(dtype_code(x), d.data_ptr(), x.data_ptr(), dx.data_ptr(), g.outer, g.C,
                           g.inner, m.data_ptr<double>(), kk.data_ptr(), md.data_ptr(),
                           pr.data_ptr(), &p),
        "backward_elemt");
  return dx;
}

std::tuple<Tensor, Tensor> normalize_stats_cpu(const Tensor& x_in, int64_t axis,
                                               const Tensor& mean_in, const Tensor& var_in,
                                               const c10::optional<Tensor>& weight,
                                               const c10::optional<Tensor>& bias, double eps) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  const auto acc = acc_of(x);
  const Tensor w = opt_vec(weight, acc), b = opt_vec(bias, acc);
  // The mean and variance are read in their own dtype (float32 or float64) as the core's
  // torch ops read them; anything else is converted first.
  const Tensor mean = vec(mean_in, vec_code(mean_in) >= 0 ? mean_in.scalar_type() : at::kDouble);
  const Tensor var = vec(var_in, vec_code(var_in) >= 0 ? var_in.scalar_type() : acc);
  Tensor y = at::empty_like(x);
  Tensor inv_std = at::empty({g.C}, x.options().dtype(acc));
  const bn_par p = threads();
  check(K().normalize_stats(dtype_code(x), x.data_ptr(), y.data_ptr(), g.outer, g.C, g.inner,
                            vec_code(mean), mean.data_ptr(), vec_code(var), var.data_ptr(),
                            ptr(w), ptr(b), eps, inv_std.data_ptr(), &p),
        "normalize_stats");
  return {y, inv_std};
}

Tensor backward_elemt_stats_cpu(const Tensor& dy, const Tensor& x_in, int64_t axis,
                                const Tensor& mean, const Tensor& inv_std,
                                const c10::optional<Tensor>& weight, const Tensor& sum_dy,
                                const Tensor& sum_dy_xmu, int64_t count) {
  Geo g;
  const Tensor x = readable(x_in, axis, &g);
  const auto acc = acc_of(x);
  const Tensor d = like(dy, x), m = vec(mean, at::kDouble), w = opt_vec(weight, acc);
  const Tensor is = vec(inv_std, acc), s1 = vec(sum_dy, acc), s2 = vec(sum_dy_xmu, acc);
  Tensor dx = at::empty_like(x);
  const bn_par p = threads();
  check(K().backward_elemt_stats(dtype_code(x), d.data_ptr(), x.data_ptr(), dx.data_ptr(),
                                 g.outer, g.C, g.inner, m.data_ptr<double>(), is.data_ptr(),
                                 ptr(w), s1.data_ptr(), s2.data_ptr(), count, &p),
        "backward_elemt_stats");
  return dx;
}

void running_update_cpu(const Tensor& rm_in, const Tensor& rv_in, const Tensor& mean_in,
                        const Tensor& var_in, int64_t count, double momentum, bool cumulative,
                        bool store_unbiased, const c10::optional<Tensor>& nbt,
                        const c10::optional<Tensor>& skipped) {
  // Strided buffers are updated through contiguous copies, written back below.
  const Tensor rm = rm_in.contiguous(), rv = rv_in.contiguous();
  const Tensor mean = mean_in.contiguous(), var = var_in.contiguous();
  auto flat = [](const Tensor& t) { return t.is_contiguous() && t.device().is_cpu(); };
  auto counter = [&](const c10::optional<Tensor>& t) {
    return !t.has_value() || (flat(*t) && t->scalar_type() == at::kLong && t->numel() == 1);
  };
  TORCH_CHECK(flat(rm) && flat(rv) && vec_code(rm) >= 0 && rv.scalar_type() == rm.scalar_type() &&
                  flat(mean) && mean.scalar_type() == at::kDouble && flat(var) &&
                  vec_code(var) >= 0 && mean.numel() == var.numel() &&
                  rm.numel() == mean.numel() && rv.numel() == mean.numel() && counter(nbt) &&
                  counter(skipped),
              "batchnorm::running_update: contiguous float32/float64 CPU buffers, a float64 "
              "mean, a float32/float64 variance and int64 counters are required");
  TORCH_CHECK(!cumulative || nbt.has_value(), "batchnorm::running_update: cumulative needs "
              "num_batches_tracked");
  int64_t* n = nbt.has_value() ? nbt->data_ptr<int64_t>() : nullptr;
  int64_t* s = skipped.has_value() ? skipped->data_ptr<int64_t>() : nullptr;
  check(K().running_update(vec_code(rm), rm.data_ptr(), rv.data_ptr(), vec_code(var),
                           mean.data_ptr<double>(), var.data_ptr(), mean.numel(), count, momentum,
                           cumulative, store_unbiased, n, s),
        "running_update");
  if (!rm.is_same(rm_in)) rm_in.copy_(rm);
  if (!rv.is_same(rv_in)) rv_in.copy_(rv);
}

// The training forward in one call: the statistics, then normalize with inv_std, scale and
// shift made in the kernel (the same bits as stats followed by normalize_stats), then, where
// running buffers are given, the running update (as running_update).
std::tuple<Tensor, Tensor, Tensor, Tensor> train_cpu(
    const Tensor& x, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    double eps, int64_t axis, const c10::optional<Tensor>& running_mean,
    const c10::optional<Tensor>& running_var, const c10::optional<Tensor>& nbt,
    const c10::optional<Tensor>& skipped, double momentum, bool cumulative, bool store_unbiased) {
  auto [mean, var] = stats_cpu(x, axis);
  auto [y, inv_std] = normalize_stats_cpu(x, axis, mean, var, weight, bias, eps);
  if (running_mean.has_value() && running_var.has_value()) {
    const int64_t C = x.size(axis);
    running_update_cpu(*running_mean, *running_var, mean, var, C ? x.numel() / C : 0, momentum,
                       cumulative, store_unbiased, nbt, skipped);
  }
  return {y, mean, var, inv_std};
}

// The closed-form backward of the training forward (eq. 9, 10, 12 of docs/math.md):
// dgamma = sum(dy * x_hat), dbeta = sum(dy), dx = k (dy - mean(dy) - (x - mean) inv_std^2 mean(dy (x - mean))).
std::tuple<Tensor, Tensor, Tensor> train_backward_cpu(const Tensor& dy, const Tensor& x,
                                                      const c10::optional<Tensor>& weight,
                                                      const Tensor& mean, const Tensor& inv_std,
                                                      int64_t axis, std::array<bool, 3> mask) {
  auto [sum_dy, sum_dy_xmu] = backward_reduce_cpu(dy, x, axis, mean);
  Tensor dx, dw, db;
  const bool has_w = weight.has_value() && weight->defined();
  if (mask[1] && has_w) dw = (sum_dy_xmu * inv_std).to(weight->scalar_type());
  if (mask[2]) db = sum_dy.to(has_w ? weight->scalar_type() : dy.scalar_type());
  if (mask[0]) {
    const int64_t count = x.size(axis) ? x.numel() / x.size(axis) : 0;
    dx = backward_elemt_stats_cpu(dy, x, axis, mean, inv_std, weight, sum_dy, sum_dy_xmu, count);
  }
  return {dx, dw, db};
}

// ------------------------------------------------------------------ 2x2 max pooling

// Not batch norm: the experiments' LeNet (batchnorm/experiments/models.py, MaxPool2x2). The
// values and indices of at::max_pool2d_with_indices(x, 2, 2) for a contiguous NCHW float tensor,
// bit for bit, so that torch's own max_pool2d_with_indices_backward takes the gradient.
std::tuple<Tensor, Tensor> max_pool2x2_cpu(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.size(2) >= 2 && x.size(3) >= 2,
              "batchnorm::max_pool2x2 takes a contiguous (N, C, H, W) tensor with H, W >= 2, got "
              "sizes ", x.sizes(), "; use torch.nn.functional.max_pool2d for anything else");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "batchnorm::max_pool2x2 takes float32 or float64, got ", x.scalar_type());
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2;
  Tensor y = at::empty({x.size(0), x.size(1), Ho, Wo}, x.options());
  Tensor idx = at::empty({x.size(0), x.size(1), Ho, Wo}, x.options().dtype(at::kLong));
  const int dt = dtype_code(x);
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  int64_t* ip = idx.mutable_data_ptr<int64_t>();
  const int64_t es = x.element_size();
  // Whole planes per task and at least about 32k outputs a task: small tensors stay on one
  // thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, Ho * Wo));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    check(K().max_pool2x2(dt, xp + begin * H * W * es, yp + begin * Ho * Wo * es,
                          ip + begin * Ho * Wo, end - begin, H, W),
          "max_pool2x2");
  });
  return {y, idx};
}

// ------------------------------------------------------------------ autograd of batchnorm::train

// The training forward as differentiable ATen ops (the torch-op set's composition, _native.py):
// used by the backward when a double backward is being recorded (create_graph=True).
std::tuple<Tensor, Tensor, Tensor> differentiable_backward(const Tensor& dy, const Tensor& x,
                                                           const Tensor& weight, double eps,
                                                           int64_t axis) {
  const auto acc = acc_of(x);
  const int64_t C = x.size(axis);
  const Tensor x2 = x.to(acc).movedim(axis, 0).reshape({C, -1});  // (C, m)
  const int64_t m = x2.size(1);
  // Shifted by one sample per channel (mean = K + mean(x - K)); K held constant, whose
  // derivative cancels exactly.
  const Tensor k = x2.select(1, 0).detach().unsqueeze(1);  // (C, 1)
  auto [var, mean_d] = at::var_mean(x2 - k, {1}, /*correction=*/0, /*keepdim=*/false);
  const Tensor mean = k.squeeze(1).to(at::kDouble) + mean_d.to(at::kDouble);  // (C,) float64
  const Tensor inv_std = at::rsqrt(var + eps);
  Tensor x_mu = x2 - mean.to(acc).unsqueeze(1);
  if (acc != at::kDouble) x_mu = x_mu - (mean - mean.to(acc).to(at::kDouble)).to(acc).unsqueeze(1);
  const Tensor dy2 = dy.to(acc).movedim(axis, 0).reshape({C, -1});  // (C, m)
  const Tensor sum_dy = dy2.sum(1), sum_dy_xmu = (dy2 * x_mu).sum(1);
  const Tensor kk = weight.defined() ? weight.to(acc) * inv_std : inv_std;
  const Tensor dx2 = (dy2 - (sum_dy / m).unsqueeze(1) -
                      x_mu * (sum_dy_xmu / m * inv_std * inv_std).unsqueeze(1)) * kk.unsqueeze(1);
  auto moved = x.movedim(axis, 0).sizes().vec();
  const Tensor dx = dx2.reshape(moved).movedim(0, axis).to(x.scalar_type());
  const auto pdt = weight.defined() ? weight.scalar_type() : dy.scalar_type();
  return {dx, (sum_dy_xmu * inv_std).to(pdt), sum_dy.to(pdt)};
}

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const Tensor& x, const c10::optional<Tensor>& weight,
      const c10::optional<Tensor>& bias, double eps, int64_t axis,
      const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var,
      const c10::optional<Tensor>& nbt, const c10::optional<Tensor>& skipped, double momentum,
      bool cumulative, bool store_unbiased) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("batchnorm::train", "")
                         .typed<decltype(train_cpu)>();
    Tensor y, mean, var, inv_std;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, mean, var, inv_std) = op.call(x, weight, bias, eps, axis, running_mean,
                                                running_var, nbt, skipped, momentum, cumulative,
                                                store_unbiased);
    }
    // The buffers changed in place below the ADInplaceOrView key: their version counters
    // move here, as an in-place op's do.
    for (const auto* t : {&running_mean, &running_var, &nbt, &skipped})
      if (t->has_value() && (*t)->defined()) torch::autograd::impl::bump_version(**t);
    ctx->save_for_backward({x, weight.value_or(Tensor()), mean, inv_std});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({mean, var, inv_std});
    return {y, mean, var, inv_std};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("batchnorm::train_backward", "")
                         .typed<decltype(train_backward_cpu)>();
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &mean = saved[2], &inv_std = saved[3];
    const int64_t axis = ctx->saved_data["axis"].toInt();
    const bool has_w = weight.defined(), has_b = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), has_w && ctx->needs_input_grad(1),
                                      has_b && ctx->needs_input_grad(2)};
    Tensor dy = grads[0];
    if (!dy.defined()) dy = at::zeros_like(x);
    Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the statistics recomputed from x with differentiable ops, so that
      // the double backward sees how mean and inv_std depend on x.
      std::tie(dx, dw, db) =
          differentiable_backward(dy, x, weight, ctx->saved_data["eps"].toDouble(), axis);
      if (!mask[0]) dx = Tensor();
      if (!mask[1]) dw = Tensor();
      if (!mask[2]) db = Tensor();
    } else {
      std::tie(dx, dw, db) = op.call(dy, x, has_w ? c10::optional<Tensor>(weight) : c10::nullopt,
                                     mean, inv_std, axis, mask);
    }
    torch::autograd::variable_list out(12);
    out[0] = dx, out[1] = dw, out[2] = db;
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> train_autograd(
    const Tensor& x, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    double eps, int64_t axis, const c10::optional<Tensor>& running_mean,
    const c10::optional<Tensor>& running_var, const c10::optional<Tensor>& nbt,
    const c10::optional<Tensor>& skipped, double momentum, bool cumulative, bool store_unbiased) {
  auto out = TrainFunction::apply(x, weight, bias, eps, axis, running_mean, running_var, nbt,
                                  skipped, momentum, cumulative, store_unbiased);
  return {out[0], out[1], out[2], out[3]};
}

// The running update mutates its buffers: bump their version counters as an in-place ATen
// op does, so that autograd notices a buffer saved for a backward and changed since.
void running_update_inplace(const Tensor& rm, const Tensor& rv, const Tensor& mean,
                            const Tensor& var, int64_t count, double momentum, bool cumulative,
                            bool store_unbiased, const c10::optional<Tensor>& nbt,
                            const c10::optional<Tensor>& skipped) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("batchnorm::running_update", "")
                       .typed<decltype(running_update_cpu)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(rm, rv, mean, var, count, momentum, cumulative, store_unbiased, nbt, skipped);
  }
  torch::autograd::impl::bump_version(rm);
  torch::autograd::impl::bump_version(rv);
  if (nbt.has_value()) torch::autograd::impl::bump_version(*nbt);
  if (skipped.has_value()) torch::autograd::impl::bump_version(*skipped);
}

}  // namespace

TORCH_LIBRARY(batchnorm, m) {
  m.def("stats(Tensor x, int axis) -> (Tensor mean, Tensor var)");
  m.def("normalize(Tensor x, int axis, Tensor mean, Tensor scale, Tensor shift) -> Tensor");
  m.def("backward_reduce(Tensor dy, Tensor x, int axis, Tensor mean) -> (Tensor sum_dy, Tensor sum_dy_xmu)");
  m.def("backward_elemt(Tensor dy, Tensor x, int axis, Tensor mean, Tensor k, Tensor mean_dy, "
        "Tensor proj) -> Tensor");
  m.def("normalize_stats(Tensor x, int axis, Tensor mean, Tensor var, Tensor? weight, "
        "Tensor? bias, float eps) -> (Tensor y, Tensor inv_std)");
  m.def("backward_elemt_stats(Tensor dy, Tensor x, int axis, Tensor mean, Tensor inv_std, "
        "Tensor? weight, Tensor sum_dy, Tensor sum_dy_xmu, int count) -> Tensor");
  m.def("running_update(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, "
        "Tensor var, int count, float momentum, bool cumulative, bool store_unbiased, "
        "Tensor(c!)? num_batches_tracked, Tensor(d!)? skipped_updates) -> ()");
  m.def("train(Tensor x, Tensor? weight, Tensor? bias, float eps, int axis, "
        "Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None, "
        "Tensor(c!)? num_batches_tracked=None, Tensor(d!)? skipped_updates=None, "
        "float momentum=0.1, bool cumulative=False, bool store_unbiased=True) -> "
        "(Tensor y, Tensor mean, Tensor var, Tensor inv_std)");
  m.def("train_backward(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor inv_std, "
        "int axis, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("max_pool2x2(Tensor x) -> (Tensor values, Tensor indices)");
  m.def("info() -> str", info);
  m.def("set_isa(str isa) -> str", set_isa);
}

TORCH_LIBRARY_IMPL(batchnorm, CPU, m) {
  m.impl("stats", stats_cpu);
  m.impl("normalize", normalize_cpu);
  m.impl("backward_reduce", backward_reduce_cpu);
  m.impl("backward_elemt", backward_elemt_cpu);
  m.impl("normalize_stats", normalize_stats_cpu);
  m.impl("backward_elemt_stats", backward_elemt_stats_cpu);
  m.impl("running_update", running_update_cpu);
  m.impl("train", train_cpu);
  m.impl("train_backward", train_backward_cpu);
  m.impl("max_pool2x2", max_pool2x2_cpu);
}

TORCH_LIBRARY_IMPL(batchnorm, Autograd, m) { m.impl("train", train_autograd); }

TORCH_LIBRARY_IMPL(batchnorm, ADInplaceOrView, m) {
  m.impl("running_update", running_update_inplace);
}
