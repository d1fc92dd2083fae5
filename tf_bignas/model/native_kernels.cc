// Two CPU kernels for the supernet's training step, built on the user's
// machine by tf_bignas/model/native.py (`build_native_ops`), which checks both
// against TensorFlow's own ops before any use.
//
// BignasSwishGrad: the swish (SiLU) gradient, dx = dy * s * (1 + x * (1 - s))
// with s = sigmoid(x), in one pass over x and dy. TensorFlow's own gradient of
// tf.nn.silu is six element-wise ops, each a pass over the whole activation.
//
// BignasDepthwiseFilterGrad: the filter gradient of a "SAME" depthwise
// convolution (NHWC, square kernel and stride), as
// DepthwiseConv2dNativeBackpropFilter computes it, without a padded copy of
// the input: for each output row, every kernel tap's products summed over the
// row in vector registers (16, 8, 4 or 1 channels at once) and added to one of
// 8 fixed groups of rows, the groups summed in order, so the result does not
// depend on the number of threads.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::errors::InvalidArgument;

// ---------------------------------------------------------------- swish grad

// Elements per inner block of the swish gradient: s lives in a stack buffer.
constexpr int64_t kSwishBlock = 2048;

class BignasSwishGradOp : public OpKernel {
 public:
  explicit BignasSwishGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
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
    auto work = [xs, gs, out](int64_t begin, int64_t end) {
      alignas(64) float s_buffer[kSwishBlock];
      for (int64_t b = begin; b < end; b += kSwishBlock) {
        const int64_t m = std::min(kSwishBlock, end - b);
        Eigen::Map<const Eigen::ArrayXf> xv(xs + b, m), gv(gs + b, m);
        Eigen::Map<Eigen::ArrayXf> s(s_buffer, m), ov(out + b, m);
        s = xv.logistic();
        ov = gv * s * (1.0f + xv * (1.0f - s));
      }
    };
    const auto* threads = context->device()->tensorflow_cpu_worker_threads();
    // About 40 cycles per element (a logistic and five products).
    tensorflow::Shard(threads->num_threads, threads->workers, x.NumElements(), 40, work);
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
    for (; c + 16 <= q.C; c += 16) TapsOfRow<K, 16>(xr + c, g + c, out + c, q);
    if (c + 8 <= q.C) {
      TapsOfRow<K, 8>(xr + c, g + c, out + c, q);
      c += 8;
    }
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

}  // namespace

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
