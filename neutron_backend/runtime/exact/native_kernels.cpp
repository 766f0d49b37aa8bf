// The exact engine's compiled inner loops: TFLite's int8 requantization and the depthwise convolution, in integer
// arithmetic exactly as LiteRT's reference kernels (BUILTIN_REF) do them. Loaded with ctypes
// (neutron_backend/runtime/exact/native.py); every array is C-contiguous and its shape is passed alongside.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512BW__) && defined(__AVX512F__)
#include <immintrin.h>
#define NB_AVX512 1
#else
#define NB_AVX512 0
#endif
#if NB_AVX512 && defined(__AVX512VNNI__)
#define NB_VNNI 1
#else
#define NB_VNNI 0
#endif

namespace {

// gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded half away from zero, 0 <= exponent <= 31.
inline int32_t rounding_divide_by_pot(int32_t x, int32_t exponent) {
  const int32_t mask = static_cast<int32_t>((static_cast<uint32_t>(1) << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// TFLite's MultiplyByQuantizedMultiplier with gemmlowp's double rounding. The multiplier is never INT32_MIN
// (QuantizeMultiplier gives [0, 2^31)), so SaturatingRoundingDoublingHighMul never saturates; its nudged
// truncating division by 2^31 equals floor((a * b + 2^30) / 2^31) for either sign, an arithmetic shift.
inline int32_t multiply_double_rounding(int32_t x, int32_t multiplier, int32_t shift) {
  const int32_t left = shift > 0 ? shift : 0;
  const int32_t right = shift > 0 ? 0 : -shift;
  const int32_t shifted = static_cast<int32_t>(static_cast<uint32_t>(x) << left);  // int32 wrap, as in C
  const int64_t product = static_cast<int64_t>(shifted) * multiplier;
  const int32_t high = static_cast<int32_t>((product + (static_cast<int64_t>(1) << 30)) >> 31);
  return rounding_divide_by_pot(high, right);
}

// TFLITE_SINGLE_ROUNDING's MultiplyByQuantizedMultiplier: (x * m + 2^(30 - shift)) >> (31 - shift).
inline int32_t multiply_single_rounding(int32_t x, int32_t multiplier, int32_t shift) {
  const int32_t total = 31 - shift;
  const int64_t round = static_cast<int64_t>(1) << (total - 1);
  return static_cast<int32_t>((static_cast<int64_t>(x) * multiplier + round) >> total);
}

inline int8_t clamp_to_int8(int32_t value, int32_t low, int32_t high) {
  return static_cast<int8_t>(value < low ? low : (value > high ? high : value));
}

// Requantizes `rows` rows of `channels` accumulators (rows `acc_stride` and `out_stride` elements apart):
// out[c] = clamp(M(acc[c] + offset[c]) + zero_point, low, high).
inline void requantize_rows(const int32_t* acc, int64_t acc_stride, int64_t rows, const int32_t* offset,
                            const int32_t* multiplier, const int32_t* shift, int32_t channels, int32_t single_rounding,
                            int32_t zero_point, int32_t low, int32_t high, int8_t* out, int64_t out_stride) {
  if (single_rounding) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int32_t c = 0; c < channels; ++c) {
        const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(acc[r * acc_stride + c]) +
                                               static_cast<uint32_t>(offset[c]));
        out[r * out_stride + c] =
            clamp_to_int8(multiply_single_rounding(x, multiplier[c], shift[c]) + zero_point, low, high);
      }
    }
    return;
  }
#if NB_AVX512
  // multiply_double_rounding on 16 lanes: the 64-bit products of the even and the odd lanes (vpmuldq), each
  // nudged and shifted, are woven back into 32-bit lanes. Each block's per-channel vectors serve every row.
  const __m512i zero = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i nudge = _mm512_set1_epi64(static_cast<int64_t>(1) << 30);
  const __m512i zero_point_lanes = _mm512_set1_epi32(zero_point);
  const __m512i low_lanes = _mm512_set1_epi32(low);
  const __m512i high_lanes = _mm512_set1_epi32(high);
  for (int32_t c = 0; c < channels; c += 16) {
    const __mmask16 lanes = channels - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                               : static_cast<__mmask16>((1u << (channels - c)) - 1);
    const __m512i offsets = _mm512_maskz_loadu_epi32(lanes, offset + c);
    const __m512i multipliers = _mm512_maskz_loadu_epi32(lanes, multiplier + c);
    const __m512i odd_multipliers = _mm512_srli_epi64(multipliers, 32);
    const __m512i shifts = _mm512_maskz_loadu_epi32(lanes, shift + c);
    const __m512i left = _mm512_max_epi32(shifts, zero);
    const __m512i right = _mm512_max_epi32(_mm512_sub_epi32(zero, shifts), zero);
    const __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
    const __m512i half_mask = _mm512_srai_epi32(mask, 1);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i x = _mm512_add_epi32(_mm512_maskz_loadu_epi32(lanes, acc + r * acc_stride + c), offsets);
      const __m512i shifted = _mm512_sllv_epi32(x, left);
      const __m512i even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(shifted, multipliers), nudge), 31);
      const __m512i odd = _mm512_srai_epi64(
          _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(shifted, 32), odd_multipliers), nudge), 31);
      const __m512i high_part = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
      const __m512i remainder = _mm512_and_si512(high_part, mask);
      const __m512i threshold = _mm512_add_epi32(half_mask, _mm512_srli_epi32(high_part, 31));
      __m512i y = _mm512_srav_epi32(high_part, right);
      y = _mm512_mask_add_epi32(y, _mm512_cmpgt_epi32_mask(remainder, threshold), y, one);
      y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, zero_point_lanes), low_lanes), high_lanes);
      _mm_mask_storeu_epi8(out + r * out_stride + c, lanes, _mm512_cvtepi32_epi8(y));
    }
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < channels; ++c) {
      const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(acc[r * acc_stride + c]) +
                                             static_cast<uint32_t>(offset[c]));
      out[r * out_stride + c] =
          clamp_to_int8(multiply_double_rounding(x, multiplier[c], shift[c]) + zero_point, low, high);
    }
  }
#endif
}

#if NB_VNNI
// One tile of the GEMM: kRows activation rows (u8, depth padded to groups of 4) times kBlocks blocks of 16 output
// channels; vpdpbusd sums 4 u8 x s8 products per int32 lane, without saturation.
template <int kBlocks>
inline void gemm_tile(const uint8_t* rows, int32_t groups, const int8_t* packed, int32_t* tile) {
  constexpr int kRows = 4;
  __m512i acc[kRows][kBlocks];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int32_t g = 0; g < groups; ++g) {
    __m512i weights[kBlocks];
    for (int j = 0; j < kBlocks; ++j) {
      weights[j] = _mm512_loadu_si512(packed + (static_cast<int64_t>(j) * groups + g) * 64);
    }
    for (int r = 0; r < kRows; ++r) {
      int32_t four;
      std::memcpy(&four, rows + static_cast<int64_t>(r) * groups * 4 + g * 4, 4);
      const __m512i broadcast = _mm512_set1_epi32(four);
      for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], broadcast, weights[j]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kBlocks; ++j) _mm512_storeu_si512(tile + r * 64 + j * 16, acc[r][j]);
}
#endif

}  // namespace

extern "C" {

// Whether nb_gemm_requantize is compiled in (AVX-512 VNNI on the host); otherwise the caller sums with another
// GEMM and calls nb_requantize.
int32_t nb_has_gemm() { return NB_VNNI; }

// out (rows x n, int8) = requantize(a (rows x depth, int8, row stride lda) @ w^T + offset): the int8 products
// are summed as (a + 128) * w in u8 x s8 instructions, so `offset` must hold -128 * sum(w[c]) besides the bias and
// the zero-point term. `packed` is w (n x depth) as blocks of 16 channels x groups of 4 depth positions
// ([n / 16][depth / 4][16][4], both padded with zeros). Returns 0, 1 when out of memory, 2 when not compiled in.
int32_t nb_gemm_requantize(const int8_t* a, int64_t rows, int32_t depth, int64_t lda, const int8_t* packed,
                           int32_t n, const int32_t* offset, const int32_t* multiplier, const int32_t* shift,
                           int32_t single_rounding, int32_t zero_point, int32_t low, int32_t high, int8_t* out) {
#if NB_VNNI
  constexpr int kRows = 4;
  const int32_t groups = (depth + 3) / 4;
  const int32_t blocks = (n + 15) / 16;
  void* memory = std::malloc(static_cast<size_t>(kRows) * groups * 4 + sizeof(int32_t) * kRows * 64);
  if (memory == nullptr) return 1;
  uint8_t* shifted = static_cast<uint8_t*>(memory);
  int32_t* tile = reinterpret_cast<int32_t*>(shifted + static_cast<size_t>(kRows) * groups * 4);
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int present = rows - r0 < kRows ? static_cast<int>(rows - r0) : kRows;
    std::memset(shifted, 0, static_cast<size_t>(kRows) * groups * 4);
    for (int r = 0; r < present; ++r) {
      const int8_t* source = a + (r0 + r) * lda;
      uint8_t* target = shifted + static_cast<int64_t>(r) * groups * 4;
      for (int32_t d = 0; d < depth; ++d) target[d] = static_cast<uint8_t>(source[d]) ^ 0x80;
    }
    for (int32_t b0 = 0; b0 < blocks; b0 += 4) {
      const int count = blocks - b0 < 4 ? blocks - b0 : 4;
      const int8_t* weights = packed + static_cast<int64_t>(b0) * groups * 64;
      switch (count) {
        case 4: gemm_tile<4>(shifted, groups, weights, tile); break;
        case 3: gemm_tile<3>(shifted, groups, weights, tile); break;
        case 2: gemm_tile<2>(shifted, groups, weights, tile); break;
        default: gemm_tile<1>(shifted, groups, weights, tile); break;
      }
      const int32_t first = b0 * 16;
      const int32_t channels = n - first < count * 16 ? n - first : count * 16;
      requantize_rows(tile, 64, present, offset + first, multiplier + first, shift + first, channels,
                      single_rounding, zero_point, low, high, out + r0 * n + first, n);
    }
  }
  std::free(memory);
  return 0;
#else
  (void)a; (void)rows; (void)depth; (void)lda; (void)packed; (void)n; (void)offset; (void)multiplier; (void)shift;
  (void)single_rounding; (void)zero_point; (void)low; (void)high; (void)out;
  return 2;
#endif
}

// Requantizes `rows` x `channels` int32 accumulators (channels last) to int8.
void nb_requantize(const int32_t* acc, int64_t rows, int32_t channels, const int32_t* offset,
                   const int32_t* multiplier, const int32_t* shift, int32_t single_rounding, int32_t zero_point,
                   int32_t low, int32_t high, int8_t* out) {
  requantize_rows(acc, channels, rows, offset, multiplier, shift, channels, single_rounding, zero_point, low, high,
                  out, channels);
}

// out[i] = table[(a[i] as uint8) << 8 | (b[i] as uint8)]: a binary int8 operator tabulated over every pair of values.
void nb_binary_table(const int8_t* a, const int8_t* b, int64_t count, const int8_t* table, int8_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = table[(static_cast<uint32_t>(static_cast<uint8_t>(a[i])) << 8) | static_cast<uint8_t>(b[i])];
  }
}

// reference_integer_ops::DepthwiseConvPerChannel on NHWC int8: output channel o = i * depth_multiplier + m
// sums (x[i] - input_zero_point) * filter[o] over its taps, adds bias[o], requantizes. The input comes padded
// with input_zero_point (those taps add nothing, as the reference skips them), so every tap is inside it.
// filter is (kh, kw, in_channels * depth_multiplier). Returns 0, or 1 when out of memory.
int32_t nb_depthwise_conv(const int8_t* input, int32_t batches, int32_t in_h, int32_t in_w, int32_t in_channels,
                          const int8_t* filter, int32_t kernel_h, int32_t kernel_w, int32_t depth_multiplier,
                          int32_t stride_h, int32_t stride_w, int32_t dilation_h, int32_t dilation_w,
                          int32_t out_h, int32_t out_w, int32_t input_zero_point, const int32_t* bias,
                          const int32_t* multiplier, const int32_t* shift, int32_t zero_point, int32_t low,
                          int32_t high, int8_t* output) {
  constexpr int32_t kBlock = 16;  // channels summed in registers across every tap of a pixel
  const int32_t out_channels = in_channels * depth_multiplier;
  // One output row of accumulators, requantized together once the row is summed.
  int32_t* row = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * out_channels * out_w));
  if (row == nullptr) return 1;
  const int64_t row_stride = static_cast<int64_t>(in_w) * in_channels;
  for (int32_t b = 0; b < batches; ++b) {
    for (int32_t oy = 0; oy < out_h; ++oy) {
      for (int32_t ox = 0; ox < out_w; ++ox) {
        int32_t* acc = row + static_cast<int64_t>(ox) * out_channels;
        const int8_t* origin = input + ((static_cast<int64_t>(b) * in_h + oy * stride_h) * in_w + ox * stride_w) *
                                           in_channels;
        int32_t o = 0;
        if (depth_multiplier == 1) {
#if NB_AVX512
          const __m512i zero_point_lanes = _mm512_set1_epi32(input_zero_point);
          for (; o + kBlock <= out_channels; o += kBlock) {
            __m512i sum = _mm512_setzero_si512();
            for (int32_t ky = 0; ky < kernel_h; ++ky) {
              for (int32_t kx = 0; kx < kernel_w; ++kx) {
                const int8_t* x = origin + ky * dilation_h * row_stride + kx * dilation_w * in_channels + o;
                const int8_t* f = filter + (ky * kernel_w + kx) * out_channels + o;
                const __m512i xs = _mm512_sub_epi32(
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))), zero_point_lanes);
                const __m512i fs = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(f)));
                sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(xs, fs));
              }
            }
            _mm512_storeu_si512(acc + o, sum);
          }
#else
          for (; o + kBlock <= out_channels; o += kBlock) {
            int32_t block[kBlock] = {0};
            for (int32_t ky = 0; ky < kernel_h; ++ky) {
              for (int32_t kx = 0; kx < kernel_w; ++kx) {
                const int8_t* __restrict x = origin + ky * dilation_h * row_stride + kx * dilation_w * in_channels + o;
                const int8_t* __restrict f = filter + (ky * kernel_w + kx) * out_channels + o;
                for (int32_t j = 0; j < kBlock; ++j) {
                  block[j] += (static_cast<int32_t>(x[j]) - input_zero_point) * static_cast<int32_t>(f[j]);
                }
              }
            }
            for (int32_t j = 0; j < kBlock; ++j) acc[o + j] = block[j];
          }
#endif
        }
        for (; o < out_channels; ++o) {
          int32_t sum = 0;
          for (int32_t ky = 0; ky < kernel_h; ++ky) {
            for (int32_t kx = 0; kx < kernel_w; ++kx) {
              const int8_t* x = origin + ky * dilation_h * row_stride + kx * dilation_w * in_channels;
              sum += (static_cast<int32_t>(x[o / depth_multiplier]) - input_zero_point) *
                     static_cast<int32_t>(filter[(ky * kernel_w + kx) * out_channels + o]);
            }
          }
          acc[o] = sum;
        }
      }
      int8_t* y = output + (static_cast<int64_t>(b) * out_h + oy) * out_w * out_channels;
      requantize_rows(row, out_channels, out_w, bias, multiplier, shift, out_channels, 0, zero_point, low, high, y,
                      out_channels);
    }
  }
  std::free(row);
  return 0;
}

}  // extern "C"
