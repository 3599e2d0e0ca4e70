// The eager front of batchnorm.batch_norm: the plain step's checks and its one op call, in C++.
//
// A small layer's step is mostly per-call cost: in Python, the checks of the fast path (input,
// parameters, buffers, hyper-parameters, layout, what is tracing or transforming the call) cost
// about 10 us a call, more than torch.nn's whole Python front. `front(...)` makes every one of
// those decisions here and then calls the same dispatcher ops the Python path calls
// (`batchnorm::train`, with its C++ autograd, and `batchnorm::normalize_stats`), so the results,
// the autograd graph and the buffers' updates are the ones of that path, bit for bit. It never
// raises on bad input: wherever anything differs from the plain case (a wrong shape, a
// subclass, a tracer, a transform, a mode, an option the op does not take) it returns None, and
// the Python core takes the call and, for bad input, says what is wrong and how to fix it.
//
// Loaded as a Python extension module (batchnorm.core.kernels._cpu_ops) after the library's
// SHA-256 has been checked (batchnorm/core/kernels/_cpu.py).

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/python.h>

#include <optional>
#include <tuple>

namespace py = pybind11;

namespace {

using at::Tensor;

// The dtypes the CPU kernel set takes (FAST_DTYPES of _cpu.py).
bool fast_dtype(const Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16;
}

// Keys of a tensor something is transforming or wrapping: functorch (vmap, grad, the older
// vmap), functionalization, Python subclasses and modes.
constexpr c10::DispatchKeySet kWrapped =
    c10::functorch_transforms_ks |
    c10::DispatchKeySet({c10::DispatchKey::BatchedNestedTensor, c10::DispatchKey::Functionalize,
                         c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot});

// A plain strided CPU tensor (torch.Tensor or nn.Parameter, not a subclass), or nullptr.
const Tensor* plain(PyObject* o) {
  if (!THPVariable_CheckExact(o)) return nullptr;
  const Tensor& t = THPVariable_Unpack(o);
  if (!t.defined() || t.layout() != at::kStrided || !t.is_cpu()) return nullptr;
  if (t.key_set().has_any(kWrapped)) return nullptr;
  return &t;
}

// An optional per-channel tensor: None, or a plain floating tensor of C entries.
bool per_channel(PyObject* o, int64_t C, std::optional<Tensor>* out) {
  if (o == Py_None) return true;
  const Tensor* t = plain(o);
  if (!t || !t->is_floating_point() || t->numel() != C) return false;
  *out = *t;
  return true;
}

// An int64 scalar counter (num_batches_tracked, skipped_updates), or None.
bool counter(PyObject* o, std::optional<Tensor>* out) {
  if (o == Py_None) return true;
  const Tensor* t = plain(o);
  if (!t || t->scalar_type() != at::kLong || t->numel() != 1) return false;
  *out = *t;
  return true;
}

// A Python float or int (not bool, not a NumPy scalar: those take the Python path).
bool number(PyObject* o, double* out) {
  if (PyFloat_CheckExact(o)) {
    *out = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (PyLong_CheckExact(o)) {
    const double v = PyLong_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    *out = v;
    return true;
  }
  return false;
}

// torch's output memory format: contiguous, or channels-last (-3d) kept; the kernels read both.
bool torch_layout(const Tensor& x) {
  if (x.is_contiguous()) return true;
  if (x.dim() == 4) return x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x.dim() == 5) return x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return false;
}

bool requires_grad(const std::optional<Tensor>& t) { return t.has_value() && t->requires_grad(); }

using TrainSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, double, int64_t,
    const std::optional<Tensor>&, const std::optional<Tensor>&, const std::optional<Tensor>&,
    const std::optional<Tensor>&, double, bool, bool);
using NormalizeStatsSig = std::tuple<Tensor, Tensor>(const Tensor&, int64_t, const Tensor&,
                                                     const Tensor&, const std::optional<Tensor>&,
                                                     const std::optional<Tensor>&, double);

// batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
// num_batches_tracked, store_unbiased, skipped_updates) of the plain case, or None.
py::object front(py::handle input, py::handle running_mean, py::handle running_var,
                 py::handle weight, py::handle bias, py::handle training, py::handle momentum,
                 py::handle eps, py::handle axis, py::handle num_batches_tracked,
                 py::handle store_unbiased, py::handle skipped_updates) {
  const py::object none = py::none();
  if (torch::jit::tracer::isTracing() || at::impl::torch_function_mode_enabled() ||
      c10::impl::TorchDispatchModeTLS::stack_len() > 0)
    return none;
  const Tensor* xp = plain(input.ptr());
  if (!xp || !fast_dtype(*xp) || xp->dim() < 2 || xp->numel() == 0 || !torch_layout(*xp))
    return none;
  const Tensor& x = *xp;
  if (!PyBool_Check(training.ptr()) || !PyBool_Check(store_unbiased.ptr()) ||
      !PyLong_CheckExact(axis.ptr()))
    return none;
  const bool train = training.ptr() == Py_True;
  int64_t ax = PyLong_AsLongLong(axis.ptr());
  if (ax == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return none;
  }
  const int64_t nd = x.dim();
  if (ax < -nd || ax >= nd) return none;
  if (ax < 0) ax += nd;
  double e = 0.0;
  if (!number(eps.ptr(), &e) || !(e > 0.0)) return none;
  const int64_t C = x.size(ax);
  std::optional<Tensor> w, b, rm, rv, nbt, skipped;
  if (!per_channel(weight.ptr(), C, &w) || !per_channel(bias.ptr(), C, &b) ||
      !per_channel(running_mean.ptr(), C, &rm) || !per_channel(running_var.ptr(), C, &rv))
    return none;
  if (rm.has_value() != rv.has_value()) return none;
  if (!train) {
    // Evaluation: the fixed map, where no gradient can flow (else the Python path records the
    // backward of the running-statistics map).
    if (!rm.has_value()) return none;
    if (at::GradMode::is_enabled() && (x.requires_grad() || requires_grad(w) ||
                                       requires_grad(b) || requires_grad(rm) || requires_grad(rv)))
      return none;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("batchnorm::normalize_stats", "")
                         .typed<NormalizeStatsSig>();
    Tensor y;
    {
      py::gil_scoped_release no_gil;
      at::NoGradGuard no_grad;
      y = std::get<0>(op.call(x, ax, *rm, *rv, w, b, e));
    }
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(y)));
  }
  if (C == 0 || x.numel() / C < 2) return none;  // the small-batch policy is Python's
  double m = 0.0;
  bool cumulative = momentum.ptr() == Py_None;
  if (!cumulative && (!number(momentum.ptr(), &m) || !(m >= 0.0 && m <= 1.0))) return none;
  if (rm.has_value()) {
    const auto t = rm->scalar_type();
    if ((t != at::kFloat && t != at::kDouble) || rv->scalar_type() != t) return none;
    if (!counter(num_batches_tracked.ptr(), &nbt) || !counter(skipped_updates.ptr(), &skipped))
      return none;
    if (cumulative && !nbt.has_value()) return none;  // Python raises its error
  } else {
    m = 0.0, cumulative = false;  // no running statistics: the op's update arguments unused
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("batchnorm::train", "")
                       .typed<TrainSig>();
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    y = std::get<0>(op.call(x, w, b, e, ax, rm, rv, nbt, skipped, m, cumulative,
                            store_unbiased.ptr() == Py_True));
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(y)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "the eager front of batchnorm.batch_norm (see csrc/front.cpp)";
  mod.def("front", &front,
          "batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, "
          "axis, num_batches_tracked, store_unbiased, skipped_updates) of the plain case in one "
          "call, or None where the Python core must take it");
}
