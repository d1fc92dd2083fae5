// CPU kernels for the supernet's training step, built on the user's machine
// by tf_bignas/model/native.py (`build_native_ops`), which checks them all
// against TensorFlow's own ops before any use.
//
// BignasSwish / BignasSwishGrad: swish (SiLU), y = x * s with s = sigmoid(x),
// and its gradient, dx = dy * s * (1 + x * (1 - s)), each in one pass. The
// forward op is the same kernel op by op and in a compiled graph, where
// Grappler would turn tf.nn.silu's Sigmoid and Mul into oneDNN's swish, whose
// bits differ from the two ops' (a first step run op by op would then lose
// the compiled step's losses bit for bit). TensorFlow's own gradient of
// tf.nn.silu is six element-wise ops, each a pass over the whole activation.
// Both work in fixed blocks of elements from the first: the same bits on any
// number of threads.
//
// BignasDepthwiseFilterGrad: the filter gradient of a "SAME" depthwise
// convolution (NHWC, square kernel and stride), as
// DepthwiseConv2dNativeBackpropFilter computes it, without a padded copy of
// the input: for each output row, every kernel tap's products summed over the
// row in vector registers (16 channels at once with AVX-512, else 8; then 4
// or 1; the same sums per channel at any width) and added to one of
// 8 fixed groups of rows, the groups summed in order, so the result does not
// depend on the number of threads.
//
// BignasBatchNorm / BignasBatchNormGrad: batch-statistics batch norm over the
// last dimension, optionally followed by swish, and its gradient (through the
// swish, recomputed from x). Two passes each way; the per-channel sums go into
// the same 8 fixed groups of rows (float within a block of rows, double
// across blocks and groups). They need no per-shape setup, where oneDNN's
// batch norm and swish build a primitive for every new shape.
//
// BignasScaleChannelsGrad: both gradients of the squeeze-excite product
// x * s (s one value per sample and channel) in one pass over dy and x.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "tsl/platform/denormal.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::errors::InvalidArgument;

// ---------------------------------------------------------------- swish grad

// Elements per block of the swish kernels: s lives in a stack buffer.
constexpr int64_t kSwishBlock = 2048;

// Runs work(first, count) over fixed blocks of per_block units from the first
// (the last block may be short), sharded by whole blocks: each unit is in the
// same block, so takes the same vector or scalar path, on any number of
// threads.
template <typename Work>
void FixedBlocks(OpKernelContext* context, int64_t units, int64_t per_block,
                 int64_t cost_per_block, const Work& work) {
  const int64_t blocks = (units + per_block - 1) / per_block;
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t b = block * per_block;
      work(b, std::min(per_block, units - b));
    }
  };
  const auto* threads = context->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(threads->num_threads, threads->workers, blocks, cost_per_block, run);
}

// Runs work(first, count) over fixed blocks of kSwishBlock elements.
template <typename Work>
void SwishBlocks(OpKernelContext* context, int64_t size, int64_t cost_per_value,
                 const Work& work) {
  FixedBlocks(context, size, kSwishBlock, kSwishBlock * cost_per_value, work);
}

class BignasSwishOp : public OpKernel {
 public:
  explicit BignasSwishOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& x = context->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const float* xs = x.flat<float>().data();
    float* ys = y->flat<float>().data();
    // About 30 cycles per element (a logistic and a product).
    SwishBlocks(context, x.NumElements(), 30, [xs, ys](int64_t b, int64_t m) {
      alignas(64) float s_buffer[kSwishBlock];
      Eigen::Map<const Eigen::ArrayXf> xv(xs + b, m);
      Eigen::Map<Eigen::ArrayXf> s(s_buffer, m), yv(ys + b, m);
      s = xv.logistic();
      yv = xv * s;
    });
  }
};

class BignasSwishGradOp : public OpKernel {
 public:
  explicit BignasSwishGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    OP_REQUIRES(context, dy.shape() == x.shape(),
                InvalidArgument("BignasSwishGrad: dy and x must have the same shape, got ",
                                dy.shape().DebugString(), " and ", x.shape().DebugString()));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(context, context->forward_input_or_allocate_output({0}, 0, x.shape(), &dx));
    const float* xs = x.flat<float>().data();
    const float* gs = dy.flat<float>().data();
    float* out = dx->flat<float>().data();
    // About 40 cycles per element (a logistic and five products).
    SwishBlocks(context, x.NumElements(), 40, [xs, gs, out](int64_t b, int64_t m) {
      alignas(64) float s_buffer[kSwishBlock];
      Eigen::Map<const Eigen::ArrayXf> xv(xs + b, m), gv(gs + b, m);
      Eigen::Map<Eigen::ArrayXf> s(s_buffer, m), ov(out + b, m);
      s = xv.logistic();
      ov = gv * s * (1.0f + xv * (1.0f - s));
    });
  }
};

// ------------------------------------------------------ depthwise filter grad

// N channels at once as one vector (GCC and Clang vector extensions).
template <int N>
struct Lanes {
  typedef float Vec __attribute__((vector_size(4 * N)));
  typedef float VecU __attribute__((vector_size(4 * N), aligned(4)));
  static Vec Load(const float* p) { return *reinterpret_cast<const VecU*>(p); }
};

// Geometry of one depthwise convolution.
struct Geometry {
  int64_t H, W, C, OH, OW, stride, top, left;
};

// One kernel row (kh) of one output row, N channels from xr / g / out:
// out[kw * C + j] += sum over ow of x[ow * stride + kw - left, j] * dy[ow, j].
template <int K, int N>
inline void TapsOfRow(const float* __restrict__ xr, const float* __restrict__ g,
                      float* __restrict__ out, const Geometry& q) {
  using L = Lanes<N>;
  typename L::Vec acc[K];
  for (int kw = 0; kw < K; ++kw) acc[kw] = typename L::Vec{};
  for (int64_t ow = 0; ow < q.OW; ++ow) {
    const typename L::Vec gv = L::Load(g + ow * q.C);
    const int64_t base = ow * q.stride - q.left;
    if (base >= 0 && base + K <= q.W) {
      const float* xp = xr + base * q.C;
      for (int kw = 0; kw < K; ++kw) acc[kw] += L::Load(xp + kw * q.C) * gv;
    } else {
      for (int kw = 0; kw < K; ++kw) {
        const int64_t iw = base + kw;
        if (iw >= 0 && iw < q.W) acc[kw] += L::Load(xr + iw * q.C) * gv;
      }
    }
  }
  for (int kw = 0; kw < K; ++kw) {
    float* o = out + kw * q.C;
    for (int j = 0; j < N; ++j) o[j] += acc[kw][j];
  }
}

// Adds every tap's sum over one output row (image, oh) to row[(kh * K + kw) * C + c].
template <int K>
void OutputRow(const float* image, const float* g, float* row, int64_t oh, const Geometry& q) {
  for (int kh = 0; kh < K; ++kh) {
    const int64_t ih = oh * q.stride + kh - q.top;
    if (ih < 0 || ih >= q.H) continue;
    const float* xr = image + ih * q.W * q.C;
    float* out = row + kh * K * q.C;
    int64_t c = 0;
#ifdef __AVX512F__
    for (; c + 16 <= q.C; c += 16) TapsOfRow<K, 16>(xr + c, g + c, out + c, q);
    if (c + 8 <= q.C) {
      TapsOfRow<K, 8>(xr + c, g + c, out + c, q);
      c += 8;
    }
#else
    // No 16-lane registers: built for AVX2, the 16-lane form ran at about a
    // third of its AVX-512 speed (benchmarks/README.md, "The code an AVX2
    // machine runs"). The same sums per channel either way.
    for (; c + 8 <= q.C; c += 8) TapsOfRow<K, 8>(xr + c, g + c, out + c, q);
#endif
    if (c + 4 <= q.C) {
      TapsOfRow<K, 4>(xr + c, g + c, out + c, q);
      c += 4;
    }
    for (; c < q.C; ++c) TapsOfRow<K, 1>(xr + c, g + c, out + c, q);
  }
}

// The same for any kernel size (scalar loops).
void OutputRowAnyK(int64_t k, const float* image, const float* g, float* row, int64_t oh,
                   const Geometry& q) {
  for (int64_t kh = 0; kh < k; ++kh) {
    const int64_t ih = oh * q.stride + kh - q.top;
    if (ih < 0 || ih >= q.H) continue;
    const float* xr = image + ih * q.W * q.C;
    for (int64_t ow = 0; ow < q.OW; ++ow) {
      for (int64_t kw = 0; kw < k; ++kw) {
        const int64_t iw = ow * q.stride + kw - q.left;
        if (iw < 0 || iw >= q.W) continue;
        float* a = row + (kh * k + kw) * q.C;
        const float* xp = xr + iw * q.C;
        const float* gp = g + ow * q.C;
        for (int64_t c = 0; c < q.C; ++c) a[c] += xp[c] * gp[c];
      }
    }
  }
}

// Output rows are summed in this many fixed groups, each into its own
// buffer, and the groups in order: the same bits on any number of threads.
constexpr int64_t kRowGroups = 8;

class BignasDepthwiseFilterGradOp : public OpKernel {
 public:
  explicit BignasDepthwiseFilterGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("stride", &stride_));
    OP_REQUIRES(context, stride_ >= 1,
                InvalidArgument("BignasDepthwiseFilterGrad: stride must be >= 1, got ", stride_));
  }

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& x = context->input(0);
    const Tensor& dy = context->input(1);
    const Tensor& kernel_size = context->input(2);
    OP_REQUIRES(context, x.dims() == 4 && dy.dims() == 4,
                InvalidArgument("BignasDepthwiseFilterGrad: x and dy must be NHWC, got ",
                                x.shape().DebugString(), " and ", dy.shape().DebugString()));
    OP_REQUIRES(context, tensorflow::TensorShapeUtils::IsScalar(kernel_size.shape()),
                InvalidArgument("BignasDepthwiseFilterGrad: kernel_size must be a scalar"));
    const int64_t k = kernel_size.scalar<int32_t>()();
    Geometry q;
    const int64_t B = x.dim_size(0);
    q.H = x.dim_size(1);
    q.W = x.dim_size(2);
    q.C = x.dim_size(3);
    q.OH = dy.dim_size(1);
    q.OW = dy.dim_size(2);
    q.stride = stride_;
    OP_REQUIRES(context, k >= 1, InvalidArgument("BignasDepthwiseFilterGrad: kernel_size ", k));
    OP_REQUIRES(
        context,
        dy.dim_size(0) == B && dy.dim_size(3) == q.C && q.OH == (q.H + q.stride - 1) / q.stride &&
            q.OW == (q.W + q.stride - 1) / q.stride,
        InvalidArgument("BignasDepthwiseFilterGrad: dy ", dy.shape().DebugString(),
                        " is not the \"SAME\" output of x ", x.shape().DebugString(), " at stride ",
                        q.stride));
    // TensorFlow's "SAME" padding before the first row and column.
    q.top = std::max<int64_t>((q.OH - 1) * q.stride + k - q.H, 0) / 2;
    q.left = std::max<int64_t>((q.OW - 1) * q.stride + k - q.W, 0) / 2;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, tensorflow::TensorShape({k, k, q.C, 1}), &out));
    float* dw = out->flat<float>().data();
    const int64_t taps = k * k * q.C;
    std::fill(dw, dw + taps, 0.0f);
    const int64_t rows = B * q.OH;
    if (rows == 0 || taps == 0) return;
    const int64_t groups = std::min(rows, kRowGroups);
    std::vector<float> partial(groups * taps, 0.0f);
    const float* xs = x.flat<float>().data();
    const float* gs = dy.flat<float>().data();
    auto work = [&, k](int64_t first, int64_t last) {
      for (int64_t group = first; group < last; ++group) {
        float* sum = partial.data() + group * taps;
        for (int64_t r = rows * group / groups; r < rows * (group + 1) / groups; ++r) {
          const int64_t b = r / q.OH, oh = r % q.OH;
          const float* image = xs + b * q.H * q.W * q.C;
          const float* g = gs + r * q.OW * q.C;
          switch (k) {
            case 3:
              OutputRow<3>(image, g, sum, oh, q);
              break;
            case 5:
              OutputRow<5>(image, g, sum, oh, q);
              break;
            case 7:
              OutputRow<7>(image, g, sum, oh, q);
              break;
            default:
              OutputRowAnyK(k, image, g, sum, oh, q);
          }
        }
      }
    };
    const auto* threads = context->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = rows / groups * q.OW * taps * 2;
    tensorflow::Shard(threads->num_threads, threads->workers, groups, cost, work);
    for (int64_t group = 0; group < groups; ++group) {
      const float* sum = partial.data() + group * taps;
      for (int64_t i = 0; i < taps; ++i) dw[i] += sum[i];
    }
  }

 private:
  int stride_;
};

// ------------------------------------------------------- batch norm (+ swish)

// Values per inner block of the batch-norm kernels (whole rows of C channels):
// a block's logistic lives in one buffer.
constexpr int64_t kBlockValues = 4096;

int64_t RowsPerBlock(int64_t C) {
  return std::max<int64_t>(1, kBlockValues / std::max<int64_t>(C, 1));
}

using Columns = Eigen::Map<Eigen::ArrayXXf>;            // C x rows, one column per row
using ConstColumns = Eigen::Map<const Eigen::ArrayXXf>;
using Channels = Eigen::Map<const Eigen::ArrayXf>;      // C

// x [..., C] with gamma and beta [C].
absl::Status CheckChannels(const char* op, const Tensor& x, const Tensor& gamma,
                           const Tensor& beta) {
  if (x.dims() < 2 || gamma.dims() != 1 || beta.dims() != 1 ||
      gamma.dim_size(0) != x.dim_size(x.dims() - 1) || beta.dim_size(0) != gamma.dim_size(0)) {
    return InvalidArgument(op, ": x [..., C] needs gamma and beta [C], got x ",
                           x.shape().DebugString(), ", gamma ", gamma.shape().DebugString(),
                           ", beta ", beta.shape().DebugString());
  }
  return absl::OkStatus();
}

// Per-channel sums over rows, added in kRowGroups fixed groups of rows (in
// double) and then over the groups in order: the same bits on any number of
// threads. add(first, last, a, b) adds rows [first, last) to one group's two
// sums a[C] and b[C].
template <typename AddRows>
void GroupSums(OpKernelContext* context, int64_t rows, int64_t C, int64_t cost_per_row,
               const AddRows& add, std::vector<double>* a, std::vector<double>* b) {
  const int64_t groups = std::max<int64_t>(1, std::min(rows, kRowGroups));
  std::vector<double> partial(groups * 2 * C, 0.0);
  auto work = [&](int64_t first, int64_t last) {
    for (int64_t group = first; group < last; ++group) {
      double* sums = partial.data() + group * 2 * C;
      add(rows * group / groups, rows * (group + 1) / groups, sums, sums + C);
    }
  };
  const auto* threads = context->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(threads->num_threads, threads->workers, groups,
                    std::max<int64_t>(1, rows / groups) * cost_per_row, work);
  a->assign(C, 0.0);
  b->assign(C, 0.0);
  for (int64_t group = 0; group < groups; ++group) {
    const double* sums = partial.data() + group * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      (*a)[c] += sums[c];
      (*b)[c] += sums[C + c];
    }
  }
}

// Runs work(first_row, rows_in_block) over blocks of whole rows, sharded.
template <typename Work>
void RowBlocks(OpKernelContext* context, int64_t rows, int64_t C, int64_t cost_per_value,
               const Work& work) {
  const int64_t per_block = RowsPerBlock(C);
  FixedBlocks(context, rows, per_block, per_block * C * cost_per_value, work);
}

// y = x_hat * gamma + beta with x_hat = (x - mean) / sqrt(var + epsilon) over
// the batch statistics of each channel (all dimensions but the last), then
// swish(y) if `swish`. Outputs y, the mean and 1 / sqrt(var + epsilon), which
// the gradient takes.
class BignasBatchNormOp : public OpKernel {
 public:
  explicit BignasBatchNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("swish", &swish_));
    OP_REQUIRES(context, epsilon_ >= 0.0f,
                InvalidArgument("BignasBatchNorm: epsilon must be >= 0, got ", epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    OP_REQUIRES_OK(context, CheckChannels("BignasBatchNorm", x, gamma, beta));
    const int64_t C = gamma.dim_size(0);
    const int64_t rows = C == 0 ? 0 : x.NumElements() / C;
    Tensor *y = nullptr, *mean_out = nullptr, *inv_std_out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma.shape(), &mean_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, gamma.shape(), &inv_std_out));
    if (rows == 0) {  // no values: the statistics are undefined, as FusedBatchNormV3's
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::fill_n(mean_out->flat<float>().data(), C, nan);
      std::fill_n(inv_std_out->flat<float>().data(), C, nan);
      return;
    }
    const float* xs = x.flat<float>().data();
    // Sums of x - x[0] and its square, per channel: the shift keeps the
    // variance exact when the mean is large against the spread.
    const float* shift = xs;
    std::vector<double> sum, square;
    const int64_t per_block = RowsPerBlock(C);
    GroupSums(
        context, rows, C, 4 * C,
        [xs, shift, C, per_block](int64_t first, int64_t last, double* a, double* b) {
          std::vector<float> block_a(C), block_b(C);  // a block's sums, in float
          float* __restrict__ fa = block_a.data();
          float* __restrict__ fb = block_b.data();
          for (int64_t r = first; r < last; r += per_block) {
            const int64_t n = std::min(per_block, last - r);
            const float* xr = xs + r * C;
            std::fill(fa, fa + C, 0.0f);
            std::fill(fb, fb + C, 0.0f);
            for (int64_t i = 0; i < n; ++i) {
              const float* __restrict__ xi = xr + i * C;
              for (int64_t c = 0; c < C; ++c) {
                const float d = xi[c] - shift[c];
                fa[c] += d;
                fb[c] += d * d;
              }
            }
            for (int64_t c = 0; c < C; ++c) {
              a[c] += fa[c];
              b[c] += fb[c];
            }
          }
        },
        &sum, &square);
    float* mean = mean_out->flat<float>().data();
    float* inv_std = inv_std_out->flat<float>().data();
    const float* g = gamma.flat<float>().data();
    const float* o = beta.flat<float>().data();
    std::vector<float> scale(C), offset(C);
    for (int64_t c = 0; c < C; ++c) {
      const double m = sum[c] / rows;
      const double var = std::max(square[c] / rows - m * m, 0.0);
      mean[c] = static_cast<float>(shift[c] + m);
      inv_std[c] = static_cast<float>(1.0 / std::sqrt(var + epsilon_));
      scale[c] = g[c] * inv_std[c];
      offset[c] = o[c] - mean[c] * scale[c];
    }
    float* ys = y->flat<float>().data();
    const bool swish = swish_;
    RowBlocks(context, rows, C, swish ? 40 : 4, [&](int64_t r, int64_t n) {
      alignas(64) float s_buffer[kBlockValues];
      ConstColumns xv(xs + r * C, C, n);
      Columns yv(ys + r * C, C, n);
      yv = (xv.colwise() * Channels(scale.data(), C)).colwise() + Channels(offset.data(), C);
      if (swish) {
        Eigen::Map<Eigen::ArrayXf> z(ys + r * C, n * C), s(s_buffer, n * C);
        s = z.logistic();
        z *= s;
      }
    });
  }

 private:
  float epsilon_;
  bool swish_;
};

// The gradient of BignasBatchNorm: dx, dgamma, dbeta from dy and the forward
// op's x, gamma, beta, mean and 1 / sqrt(var + epsilon). With dz the gradient
// at the normalised output (through swish when `swish`, from z recomputed),
// dbeta = sum dz, dgamma = sum dz * x_hat and
// dx = gamma / std * (dz - mean(dz) - x_hat * mean(dz * x_hat)).
class BignasBatchNormGradOp : public OpKernel {
 public:
  explicit BignasBatchNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("swish", &swish_));
  }

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& gamma = context->input(2);
    const Tensor& beta = context->input(3);
    const Tensor& mean_in = context->input(4);
    const Tensor& inv_std_in = context->input(5);
    OP_REQUIRES(context, dy.shape() == x.shape(),
                InvalidArgument("BignasBatchNormGrad: dy and x must have the same shape, got ",
                                dy.shape().DebugString(), " and ", x.shape().DebugString()));
    OP_REQUIRES_OK(context, CheckChannels("BignasBatchNormGrad", x, gamma, beta));
    OP_REQUIRES(context, mean_in.shape() == gamma.shape() && inv_std_in.shape() == gamma.shape(),
                InvalidArgument("BignasBatchNormGrad: mean and inv_std must be [C] as gamma ",
                                gamma.shape().DebugString(), ", got ",
                                mean_in.shape().DebugString(), " and ",
                                inv_std_in.shape().DebugString()));
    const int64_t C = gamma.dim_size(0);
    const int64_t rows = C == 0 ? 0 : x.NumElements() / C;
    Tensor *dx = nullptr, *dgamma_out = nullptr, *dbeta_out = nullptr;
    // Not dy's buffer: the loops below vectorise on pointers that do not alias.
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma.shape(), &dgamma_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, gamma.shape(), &dbeta_out));
    float* dgamma = dgamma_out->flat<float>().data();
    float* dbeta = dbeta_out->flat<float>().data();
    std::fill(dgamma, dgamma + C, 0.0f);
    std::fill(dbeta, dbeta + C, 0.0f);
    if (rows == 0) return;
    const float* xs = x.flat<float>().data();
    const float* gs = dy.flat<float>().data();
    float* out = dx->flat<float>().data();
    const float* g = gamma.flat<float>().data();
    const float* o = beta.flat<float>().data();
    const float* mean = mean_in.flat<float>().data();
    const float* inv_std = inv_std_in.flat<float>().data();
    // z = x * scale + shift: the normalised output, before swish.
    std::vector<float> scale(C), shift(C);
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = g[c] * inv_std[c];
      shift[c] = o[c] - mean[c] * scale[c];
    }
    const bool swish = swish_;
    // Pass 1: per channel sum(dz) and sum(dz * (x - mean)), with dz into dx's
    // buffer when it differs from dy (through swish).
    std::vector<double> sum_dz, sum_dz_xc;
    const int64_t per_block = RowsPerBlock(C);
    GroupSums(
        context, rows, C, C * (swish ? 40 : 4),
        [&](int64_t first, int64_t last, double* a, double* b) {
          alignas(64) float z_buffer[kBlockValues];
          alignas(64) float s_buffer[kBlockValues];
          std::vector<float> block_a(C), block_b(C);  // a block's sums, in float
          float* __restrict__ fa = block_a.data();
          float* __restrict__ fb = block_b.data();
          const float* __restrict__ sc = scale.data();
          const float* __restrict__ sh = shift.data();
          const float* __restrict__ mu = mean;
          for (int64_t r = first; r < last; r += per_block) {
            const int64_t n = std::min(per_block, last - r);
            const float* xr = xs + r * C;
            const float* gr = gs + r * C;  // dz of the block
            std::fill(fa, fa + C, 0.0f);
            std::fill(fb, fb + C, 0.0f);
            if (swish) {
              for (int64_t i = 0; i < n; ++i) {
                const float* __restrict__ xi = xr + i * C;
                float* __restrict__ zi = z_buffer + i * C;
                for (int64_t c = 0; c < C; ++c) zi[c] = xi[c] * sc[c] + sh[c];
              }
              // dz = dy * s * (1 + z * (1 - s)) with s = sigmoid(z), into s's buffer
              // and dx's; then summed as dy is without swish.
              Eigen::Map<Eigen::ArrayXf> s(s_buffer, n * C);
              Eigen::Map<const Eigen::ArrayXf> z(z_buffer, n * C);
              s = z.logistic();
              s = Eigen::Map<const Eigen::ArrayXf>(gr, n * C) * s * (1.0f + z * (1.0f - s));
              Eigen::Map<Eigen::ArrayXf>(out + r * C, n * C) = s;
              gr = s_buffer;
            }
            for (int64_t i = 0; i < n; ++i) {
              const float* __restrict__ gi = gr + i * C;
              const float* __restrict__ xi = xr + i * C;
              for (int64_t c = 0; c < C; ++c) {
                fa[c] += gi[c];
                fb[c] += gi[c] * (xi[c] - mu[c]);
              }
            }
            for (int64_t c = 0; c < C; ++c) {
              a[c] += fa[c];
              b[c] += fb[c];
            }
          }
        },
        &sum_dz, &sum_dz_xc);
    // Pass 2: dx = k * (dz - mean(dz)) - m * (x - mean), from the sums.
    std::vector<float> k(C), m(C), mean_dz(C);
    for (int64_t c = 0; c < C; ++c) {
      const double sum_dz_xhat = sum_dz_xc[c] * inv_std[c];
      const double gi = static_cast<double>(g[c]) * inv_std[c];
      k[c] = static_cast<float>(gi);
      m[c] = static_cast<float>(gi * (sum_dz_xhat / rows) * inv_std[c]);
      mean_dz[c] = static_cast<float>(sum_dz[c] / rows);
      dgamma[c] = static_cast<float>(sum_dz_xhat);
      dbeta[c] = static_cast<float>(sum_dz[c]);
    }
    const float* dzs = swish ? out : gs;
    RowBlocks(context, rows, C, 4, [&](int64_t r, int64_t n) {
      const float* __restrict__ kc = k.data();
      const float* __restrict__ mc = m.data();
      const float* __restrict__ md = mean_dz.data();
      const float* __restrict__ mu = mean;
      for (int64_t i = 0; i < n; ++i) {
        const float* __restrict__ xi = xs + (r + i) * C;
        const float* __restrict__ di = dzs + (r + i) * C;
        float* __restrict__ oi = out + (r + i) * C;
        for (int64_t c = 0; c < C; ++c) oi[c] = kc[c] * (di[c] - md[c]) - mc[c] * (xi[c] - mu[c]);
      }
    });
  }

 private:
  bool swish_;
};

// ------------------------------------------------- channel scale (SE excite)

// Pixels per block of the channel-scale gradient: summed in float within a
// block, in double across blocks.
constexpr int64_t kScalePixels = 64;

// The gradient of y = x * s, x [N, ..., C] and s [N, 1, ..., 1, C] (the
// squeeze-excite product): dx = dy * s and ds = the sum of dy * x over each
// sample's pixels, in one pass over dy and x (TensorFlow's gradient of Mul
// runs two products over the whole tensor and a sum). Sharded by sample, each
// sample's sum in a fixed order: the same bits on any number of threads.
class BignasScaleChannelsGradOp : public OpKernel {
 public:
  explicit BignasScaleChannelsGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    // Denormals flushed to zero whichever thread runs it (an eager op runs on
    // the caller's thread): the same bits op by op and in a compiled step.
    tsl::port::ScopedFlushDenormal flush;
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& scale = context->input(2);
    bool ok = dy.shape() == x.shape() && x.dims() >= 2 && scale.dims() == x.dims() &&
              scale.dim_size(0) == x.dim_size(0) &&
              scale.dim_size(x.dims() - 1) == x.dim_size(x.dims() - 1);
    for (int d = 1; ok && d + 1 < x.dims(); ++d) ok = scale.dim_size(d) == 1;
    OP_REQUIRES(context, ok,
                InvalidArgument("BignasScaleChannelsGrad: dy and x [N, ..., C] of one shape "
                                "need s [N, 1, ..., 1, C], got dy ",
                                dy.shape().DebugString(), ", x ", x.shape().DebugString(),
                                ", s ", scale.shape().DebugString()));
    Tensor *dx = nullptr, *ds = nullptr;
    // Not dy's buffer: the loops below vectorise on pointers that do not alias.
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(1, scale.shape(), &ds));
    const int64_t N = x.dim_size(0);
    const int64_t C = x.dim_size(x.dims() - 1);
    const int64_t pixels = (N == 0 || C == 0) ? 0 : x.NumElements() / (N * C);
    const float* xs = x.flat<float>().data();
    const float* gs = dy.flat<float>().data();
    const float* ss = scale.flat<float>().data();
    float* out = dx->flat<float>().data();
    float* dss = ds->flat<float>().data();
    auto work = [&](int64_t first, int64_t last) {
      std::vector<float> block(C);
      std::vector<double> total(C);
      for (int64_t n = first; n < last; ++n) {
        const float* __restrict__ sn = ss + n * C;
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t p0 = 0; p0 < pixels; p0 += kScalePixels) {
          const int64_t count = std::min(kScalePixels, pixels - p0);
          float* __restrict__ fb = block.data();
          std::fill(fb, fb + C, 0.0f);
          for (int64_t p = p0; p < p0 + count; ++p) {
            const int64_t at = (n * pixels + p) * C;
            const float* __restrict__ gi = gs + at;
            const float* __restrict__ xi = xs + at;
            float* __restrict__ oi = out + at;
            for (int64_t c = 0; c < C; ++c) {
              oi[c] = gi[c] * sn[c];
              fb[c] += gi[c] * xi[c];
            }
          }
          for (int64_t c = 0; c < C; ++c) total[c] += fb[c];
        }
        for (int64_t c = 0; c < C; ++c) dss[n * C + c] = static_cast<float>(total[c]);
      }
    };
    const auto* threads = context->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(threads->num_threads, threads->workers, N, pixels * C * 4, work);
  }
};

}  // namespace

REGISTER_OP("BignasSwish")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return tensorflow::OkStatus();
    })
    .Doc("x * sigmoid(x).");

REGISTER_KERNEL_BUILDER(Name("BignasSwish").Device(tensorflow::DEVICE_CPU), BignasSwishOp);

REGISTER_OP("BignasSwishGrad")
    .Input("dy: float")
    .Input("x: float")
    .Output("dx: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of x * sigmoid(x) with respect to x, times dy.");

REGISTER_KERNEL_BUILDER(Name("BignasSwishGrad").Device(tensorflow::DEVICE_CPU),
                        BignasSwishGradOp);

REGISTER_OP("BignasDepthwiseFilterGrad")
    .Input("x: float")
    .Input("dy: float")
    .Input("kernel_size: int32")
    .Attr("stride: int")
    .Output("dw: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      tensorflow::shape_inference::DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &k));
      c->set_output(0, c->MakeShape({k, k, c->Dim(x, 3), c->MakeDim(1)}));
      return tensorflow::OkStatus();
    })
    .Doc("Filter gradient of a SAME depthwise convolution (NHWC, [k, k, C, 1]).");

REGISTER_KERNEL_BUILDER(Name("BignasDepthwiseFilterGrad")
                            .Device(tensorflow::DEVICE_CPU)
                            .HostMemory("kernel_size"),
                        BignasDepthwiseFilterGradOp);

REGISTER_OP("BignasBatchNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("epsilon: float")
    .Attr("swish: bool")
    .Output("y: float")
    .Output("mean: float")
    .Output("inv_std: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(1));
      return tensorflow::OkStatus();
    })
    .Doc("Batch-statistics batch norm over the last dimension, then swish if `swish`.");

REGISTER_KERNEL_BUILDER(Name("BignasBatchNorm").Device(tensorflow::DEVICE_CPU),
                        BignasBatchNormOp);

REGISTER_OP("BignasBatchNormGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Attr("swish: bool")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of BignasBatchNorm with respect to x, gamma and beta.");

REGISTER_KERNEL_BUILDER(Name("BignasBatchNormGrad").Device(tensorflow::DEVICE_CPU),
                        BignasBatchNormGradOp);

REGISTER_OP("BignasScaleChannelsGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("s: float")
    .Output("dx: float")
    .Output("ds: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of x * s (s one value per sample and channel) for x and s.");

REGISTER_KERNEL_BUILDER(Name("BignasScaleChannelsGrad").Device(tensorflow::DEVICE_CPU),
                        BignasScaleChannelsGradOp);
