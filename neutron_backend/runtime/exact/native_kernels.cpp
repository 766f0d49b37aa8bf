// The exact engine's compiled inner loops: TFLite's int8 requantization and the depthwise convolution, in integer
// arithmetic exactly as LiteRT's reference kernels (BUILTIN_REF) do them. Loaded with ctypes
// (neutron_backend/runtime/exact/native.py); every array is C-contiguous and its shape is passed alongside.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

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

#if NB_AVX512
// The mask of the first `count` of kWidth lanes (all of them when count >= kWidth).
template <typename Mask, int kWidth>
inline Mask first_lanes(int64_t count) {
  return count >= kWidth ? static_cast<Mask>(~static_cast<uint64_t>(0))
                         : static_cast<Mask>((static_cast<uint64_t>(1) << count) - 1);
}

// multiply_double_rounding on 16 lanes, its two roundings done as one: with P = (x << left) * M (64 bits) and
// r = max(-shift, 0), RoundingDivideByPOT(floor((P + 2^30) / 2^31), r) rounds half away from zero, which is
// floor((h + 2^(r-1) - [h < 0]) / 2^r) for r >= 1; nested floors of divisions by powers of two merge, and
// h < 0 exactly when P < -2^30, so the result is (P + 2^30 + 2^31 * (2^(r-1) - [P < -2^30])) >> (31 + r)
// (for r = 0 simply (P + 2^30) >> 31). |P| < 2^62, so no 64-bit sum overflows. The even channels' products
// come from vpmuldq on the low halves of the 64-bit lanes, the odd ones' from the lanes shifted down.
struct Requant16 {
  __m512i offset, multiplier_even, multiplier_odd, nudge_even, nudge_odd, shift_even, shift_odd, left;
  __mmask8 round_even, round_odd;
  bool any_left;

  Requant16(const int32_t* offsets, const int32_t* multipliers, const int32_t* shifts, __mmask16 lanes) {
    alignas(64) int64_t nudge[16], total_shift[16];
    alignas(64) int32_t lefts[16];
    uint32_t rounding = 0;
    any_left = false;
    for (int i = 0; i < 16; ++i) {
      const int32_t s = (lanes >> i) & 1 ? shifts[i] : 0;
      const int32_t right = s > 0 ? 0 : -s;
      lefts[i] = s > 0 ? s : 0;
      any_left = any_left || s > 0;
      nudge[i] = (static_cast<int64_t>(1) << 30) + (right > 0 ? static_cast<int64_t>(1) << (right + 30) : 0);
      total_shift[i] = 31 + right;
      rounding |= (right > 0 ? 1u : 0u) << i;
    }
    offset = _mm512_maskz_loadu_epi32(lanes, offsets);
    const __m512i m = _mm512_maskz_loadu_epi32(lanes, multipliers);
    multiplier_even = m;
    multiplier_odd = _mm512_srli_epi64(m, 32);
    const __m512i even_index = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd_index = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    const __m512i nudge_low = _mm512_load_si512(nudge), nudge_high = _mm512_load_si512(nudge + 8);
    const __m512i shift_low = _mm512_load_si512(total_shift), shift_high = _mm512_load_si512(total_shift + 8);
    nudge_even = _mm512_permutex2var_epi64(nudge_low, even_index, nudge_high);
    nudge_odd = _mm512_permutex2var_epi64(nudge_low, odd_index, nudge_high);
    shift_even = _mm512_permutex2var_epi64(shift_low, even_index, shift_high);
    shift_odd = _mm512_permutex2var_epi64(shift_low, odd_index, shift_high);
    left = _mm512_load_si512(lefts);
    uint32_t even = 0, odd = 0;
    for (int i = 0; i < 8; ++i) {
      even |= ((rounding >> (2 * i)) & 1u) << i;
      odd |= ((rounding >> (2 * i + 1)) & 1u) << i;
    }
    round_even = static_cast<__mmask8>(even);
    round_odd = static_cast<__mmask8>(odd);
  }

  // x: the accumulators with the offset added; returns the requantized values before the zero point.
  inline __m512i apply(__m512i x) const {
    const __m512i below = _mm512_set1_epi64(-(static_cast<int64_t>(1) << 30));
    const __m512i half = _mm512_set1_epi64(static_cast<int64_t>(1) << 31);
    if (any_left) x = _mm512_sllv_epi32(x, left);
    __m512i even = _mm512_mul_epi32(x, multiplier_even);
    __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), multiplier_odd);
    const __mmask8 negative_even = _mm512_mask_cmplt_epi64_mask(round_even, even, below);
    const __mmask8 negative_odd = _mm512_mask_cmplt_epi64_mask(round_odd, odd, below);
    even = _mm512_add_epi64(even, nudge_even);
    odd = _mm512_add_epi64(odd, nudge_odd);
    even = _mm512_srav_epi64(_mm512_mask_sub_epi64(even, negative_even, even, half), shift_even);
    odd = _mm512_srav_epi64(_mm512_mask_sub_epi64(odd, negative_odd, odd, half), shift_odd);
    return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  }
};

// Adds the zero point, clamps and stores the lanes as int8.
inline void store_int8(int8_t* out, __mmask16 lanes, __m512i y, __m512i zero_point, __m512i low, __m512i high) {
  y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, zero_point), low), high);
  _mm_mask_storeu_epi8(out, lanes, _mm512_cvtepi32_epi8(y));
}
#endif

// requantize_rows one value at a time, with the rounding of `Multiply`.
template <int32_t (*Multiply)(int32_t, int32_t, int32_t)>
inline void requantize_rows_scalar(const int32_t* acc, int64_t acc_stride, int64_t rows, const int32_t* offset,
                                   const int32_t* multiplier, const int32_t* shift, int32_t channels,
                                   int32_t zero_point, int32_t low, int32_t high, int8_t* out, int64_t out_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < channels; ++c) {
      // The offset is added as C adds int32 (wrapping), as the reference's int32 accumulator does.
      const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(acc[r * acc_stride + c]) +
                                             static_cast<uint32_t>(offset[c]));
      out[r * out_stride + c] = clamp_to_int8(Multiply(x, multiplier[c], shift[c]) + zero_point, low, high);
    }
  }
}

// Requantizes `rows` rows of `channels` accumulators (rows `acc_stride` and `out_stride` elements apart):
// out[c] = clamp(M(acc[c] + offset[c]) + zero_point, low, high).
inline void requantize_rows(const int32_t* acc, int64_t acc_stride, int64_t rows, const int32_t* offset,
                            const int32_t* multiplier, const int32_t* shift, int32_t channels, int32_t single_rounding,
                            int32_t zero_point, int32_t low, int32_t high, int8_t* out, int64_t out_stride) {
  if (single_rounding) {
    requantize_rows_scalar<multiply_single_rounding>(acc, acc_stride, rows, offset, multiplier, shift, channels,
                                                     zero_point, low, high, out, out_stride);
    return;
  }
#if NB_AVX512
  const __m512i zero_point_lanes = _mm512_set1_epi32(zero_point);
  const __m512i low_lanes = _mm512_set1_epi32(low);
  const __m512i high_lanes = _mm512_set1_epi32(high);
  for (int32_t c = 0; c < channels; c += 16) {
    const __mmask16 lanes = first_lanes<__mmask16, 16>(channels - c);
    const Requant16 requant(offset + c, multiplier + c, shift + c, lanes);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i x = _mm512_add_epi32(_mm512_maskz_loadu_epi32(lanes, acc + r * acc_stride + c), requant.offset);
      store_int8(out + r * out_stride + c, lanes, requant.apply(x), zero_point_lanes, low_lanes, high_lanes);
    }
  }
#else
  requantize_rows_scalar<multiply_double_rounding>(acc, acc_stride, rows, offset, multiplier, shift, channels,
                                                   zero_point, low, high, out, out_stride);
#endif
}

#if NB_VNNI
constexpr int kTileRows = 4;

// One tile of the GEMM: kTileRows activation rows (u8, `groups` groups of 4 depth positions each, rows
// groups * 4 bytes apart) times kBlocks blocks of 16 output channels, each sum starting from `init`; vpdpbusd
// sums 4 u8 x s8 products per int32 lane, wrapping as C's int32 does.
template <int kBlocks>
inline void gemm_tile(const uint8_t* rows, int32_t groups, const int8_t* packed, const __m512i* init,
                      __m512i (&acc)[kTileRows][kBlocks]) {
  for (int r = 0; r < kTileRows; ++r)
    for (int j = 0; j < kBlocks; ++j) acc[r][j] = init[j];
  const int64_t row_bytes = static_cast<int64_t>(groups) * 4;
  for (int32_t g = 0; g < groups; ++g) {
    __m512i weights[kBlocks];
    for (int j = 0; j < kBlocks; ++j) {
      weights[j] = _mm512_loadu_si512(packed + (static_cast<int64_t>(j) * groups + g) * 64);
    }
    for (int r = 0; r < kTileRows; ++r) {
      int32_t four;
      std::memcpy(&four, rows + r * row_bytes + g * 4, 4);
      const __m512i broadcast = _mm512_set1_epi32(four);
      for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], broadcast, weights[j]);
    }
  }
}

// The GEMM's output for `panel_rows` prepared rows and kBlocks blocks of 16 channels starting at channel
// `first`: double rounding requantizes each tile in registers; single rounding (rare: LiteRT's int8 fully
// connected) sums from zero and requantizes through requantize_rows.
template <int kBlocks>
void gemm_blocks(const uint8_t* panel, int64_t panel_rows, int32_t groups, const int8_t* packed, int32_t n,
                 int32_t first, const Requant16* requant, const int32_t* offset, const int32_t* multiplier,
                 const int32_t* shift, bool single_rounding, int32_t zero_point, int32_t low, int32_t high,
                 int8_t* out, int32_t* tile) {
  const __m512i zero_point_lanes = _mm512_set1_epi32(zero_point);
  const __m512i low_lanes = _mm512_set1_epi32(low);
  const __m512i high_lanes = _mm512_set1_epi32(high);
  __m512i init[kBlocks];
  __mmask16 lanes[kBlocks];
  for (int j = 0; j < kBlocks; ++j) {
    init[j] = single_rounding ? _mm512_setzero_si512() : requant[j].offset;
    lanes[j] = first_lanes<__mmask16, 16>(n - first - 16 * j);
  }
  const int32_t channels = n - first < kBlocks * 16 ? n - first : kBlocks * 16;
  for (int64_t r0 = 0; r0 < panel_rows; r0 += kTileRows) {
    const int present = panel_rows - r0 < kTileRows ? static_cast<int>(panel_rows - r0) : kTileRows;
    __m512i acc[kTileRows][kBlocks];
    gemm_tile<kBlocks>(panel + r0 * groups * 4, groups, packed, init, acc);
    int8_t* target = out + r0 * n + first;
    if (single_rounding) {
      for (int r = 0; r < kTileRows; ++r)
        for (int j = 0; j < kBlocks; ++j) _mm512_storeu_si512(tile + r * 64 + j * 16, acc[r][j]);
      requantize_rows(tile, 64, present, offset + first, multiplier + first, shift + first, channels, 1,
                      zero_point, low, high, target, n);
      continue;
    }
    for (int r = 0; r < present; ++r)
      for (int j = 0; j < kBlocks; ++j)
        store_int8(target + static_cast<int64_t>(r) * n + 16 * j, lanes[j], requant[j].apply(acc[r][j]),
                   zero_point_lanes, low_lanes, high_lanes);
  }
}

// gemm_blocks for 1 to 4 blocks of 16 channels, by count - 1.
constexpr decltype(&gemm_blocks<1>) kGemmBlocks[4] = {gemm_blocks<1>, gemm_blocks<2>, gemm_blocks<3>, gemm_blocks<4>};
#endif

#if NB_AVX512
// Sums x * w over the taps of one pixel for the 32 channels of `lanes` at `origin`: the taps in pairs, their
// int16 values interleaved (unpacklo/hi) so that one multiply-add of int16 pairs (vpdpwssd; vpmaddwd and an add
// without VNNI) sums two taps of 16 channels. `packed` holds this block's weights as nb_depthwise_pack lays them
// out; the sums come out in the unpack's channel order and are permuted back before they are stored.
inline void depthwise_block32(const int8_t* origin, const int64_t* tap_offset, int32_t pairs, const int16_t* packed,
                              __mmask32 lanes, int32_t* acc) {
  __m512i low = _mm512_setzero_si512();
  __m512i high = _mm512_setzero_si512();
  for (int32_t p = 0; p < pairs; ++p) {
    const __m512i a = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(lanes, origin + tap_offset[2 * p]));
    const __m512i b = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(lanes, origin + tap_offset[2 * p + 1]));
    const __m512i w_low = _mm512_loadu_si512(packed + p * 64);
    const __m512i w_high = _mm512_loadu_si512(packed + p * 64 + 32);
#if NB_VNNI
    low = _mm512_dpwssd_epi32(low, _mm512_unpacklo_epi16(a, b), w_low);
    high = _mm512_dpwssd_epi32(high, _mm512_unpackhi_epi16(a, b), w_high);
#else
    low = _mm512_add_epi32(low, _mm512_madd_epi16(_mm512_unpacklo_epi16(a, b), w_low));
    high = _mm512_add_epi32(high, _mm512_madd_epi16(_mm512_unpackhi_epi16(a, b), w_high));
#endif
  }
  // low holds channels 8L..8L+3 of each 128-bit lane L, high 8L+4..8L+7.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  _mm512_mask_storeu_epi32(acc, static_cast<__mmask16>(lanes), _mm512_permutex2var_epi32(low, first, high));
  _mm512_mask_storeu_epi32(acc + 16, static_cast<__mmask16>(lanes >> 16), _mm512_permutex2var_epi32(low, second, high));
}
#endif

}  // namespace

extern "C" {

// Whether nb_gemm_requantize is compiled in (AVX-512 VNNI on the host); otherwise the caller sums with another
// GEMM and calls nb_requantize.
int32_t nb_has_gemm() { return NB_VNNI; }

// The bytes of the requantization constants nb_gemm_prepare lays out for n channels (0 when nb_gemm_requantize is
// not compiled in).
int64_t nb_gemm_constants_bytes(int32_t n) {
#if NB_VNNI
  return static_cast<int64_t>(sizeof(Requant16)) * ((n + 15) / 16);
#else
  (void)n;
  return 0;
#endif
}

// Lays out the requantization constants of n channels at `constants` (64-byte aligned, nb_gemm_constants_bytes(n)
// bytes): once per operator, for every nb_gemm_requantize call with the same offset, multiplier and shift.
void nb_gemm_prepare(const int32_t* offset, const int32_t* multiplier, const int32_t* shift, int32_t n,
                     void* constants) {
#if NB_VNNI
  Requant16* requant = static_cast<Requant16*>(constants);
  for (int32_t b = 0; b < (n + 15) / 16; ++b) {
    new (requant + b) Requant16(offset + 16 * b, multiplier + 16 * b, shift + 16 * b,
                                first_lanes<__mmask16, 16>(n - 16 * b));
  }
#else
  (void)offset; (void)multiplier; (void)shift; (void)n; (void)constants;
#endif
}

// out (rows x n, int8) = requantize(a (rows x depth, int8, row stride lda) @ w^T + offset): the int8 products
// are summed as (a + 128) * w in u8 x s8 instructions, so `offset` must hold -128 * sum(w[c]) besides the bias and
// the zero-point term. `packed` is w (n x depth) as blocks of 16 channels x groups of 4 depth positions
// ([n / 16][depth / 4][16][4], both padded with zeros); `constants` what nb_gemm_prepare laid out for offset,
// multiplier and shift. Returns 0, 1 when out of memory, 2 when not compiled in.
int32_t nb_gemm_requantize(const int8_t* a, int64_t rows, int32_t depth, int64_t lda, const int8_t* packed,
                           int32_t n, const int32_t* offset, const int32_t* multiplier, const int32_t* shift,
                           const void* constants, int32_t single_rounding, int32_t zero_point, int32_t low,
                           int32_t high, int8_t* out) {
#if NB_VNNI
  const int32_t groups = (depth + 3) / 4;
  const int32_t blocks = (n + 15) / 16;
  const int64_t row_bytes = static_cast<int64_t>(groups) * 4;
  // Rows prepared (shifted to u8, depth padded) a panel at a time: a panel of about 32 KB stays in cache while
  // every block of channels passes over it.
  int64_t panel_rows = (32768 / row_bytes) / kTileRows * kTileRows;
  panel_rows = panel_rows < kTileRows ? kTileRows : (panel_rows > 64 ? 64 : panel_rows);
  const size_t panel_bytes = static_cast<size_t>(panel_rows * row_bytes);
  const size_t tile_bytes = sizeof(int32_t) * kTileRows * 64;
  char* memory = static_cast<char*>(std::aligned_alloc(64, (panel_bytes + tile_bytes + 63) / 64 * 64));
  if (memory == nullptr) return 1;
  const Requant16* requant = static_cast<const Requant16*>(constants);
  uint8_t* panel = reinterpret_cast<uint8_t*>(memory);
  int32_t* tile = reinterpret_cast<int32_t*>(memory + panel_bytes);
  for (int64_t r0 = 0; r0 < rows; r0 += panel_rows) {
    const int64_t present = rows - r0 < panel_rows ? rows - r0 : panel_rows;
    std::memset(panel, 0, panel_bytes);
    for (int64_t r = 0; r < present; ++r) {
      const int8_t* source = a + (r0 + r) * lda;
      uint8_t* target = panel + r * row_bytes;
      for (int32_t d = 0; d < depth; ++d) target[d] = static_cast<uint8_t>(source[d]) ^ 0x80;
    }
    for (int32_t b0 = 0; b0 < blocks; b0 += 4) {
      const int32_t count = blocks - b0 < 4 ? blocks - b0 : 4;  // blocks of 16 channels in this pass
      kGemmBlocks[count - 1](panel, present, groups, packed + static_cast<int64_t>(b0) * groups * 64, n, b0 * 16,
                             requant + b0, offset, multiplier, shift, single_rounding != 0, zero_point, low, high,
                             out + r0 * n, tile);
    }
  }
  std::free(memory);
  return 0;
#else
  (void)a; (void)rows; (void)depth; (void)lda; (void)packed; (void)n; (void)offset; (void)multiplier; (void)shift;
  (void)constants; (void)single_rounding; (void)zero_point; (void)low; (void)high; (void)out;
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

// out (batches, top + h + bottom, left + w + right, pixel bytes) = input (batches, h, w, pixel bytes) surrounded
// by `value`: every output byte written once.
void nb_pad_hw(const int8_t* input, int32_t batches, int32_t h, int32_t w, int32_t pixel, int32_t top,
               int32_t bottom, int32_t left, int32_t right, int32_t value, int8_t* out) {
  const int64_t in_row = static_cast<int64_t>(w) * pixel;
  const int64_t before = static_cast<int64_t>(left) * pixel;
  const int64_t after = static_cast<int64_t>(right) * pixel;
  const int64_t out_row = before + in_row + after;
  for (int32_t b = 0; b < batches; ++b) {
    std::memset(out, value, static_cast<size_t>(top * out_row));
    out += top * out_row;
    for (int32_t y = 0; y < h; ++y, out += out_row, input += in_row) {
      std::memset(out, value, static_cast<size_t>(before));
      std::memcpy(out + before, input, static_cast<size_t>(in_row));
      std::memset(out + before + in_row, value, static_cast<size_t>(after));
    }
    std::memset(out, value, static_cast<size_t>(bottom * out_row));
    out += bottom * out_row;
  }
}

// out (batches, cols, rows) = input (batches, rows, cols) transposed, in tiles that stay in cache.
void nb_transpose_2d(const int8_t* input, int64_t batches, int64_t rows, int64_t cols, int8_t* out) {
  constexpr int64_t kTile = 64;
  for (int64_t b = 0; b < batches; ++b) {
    const int8_t* source = input + b * rows * cols;
    int8_t* target = out + b * rows * cols;
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
      const int64_t r1 = r0 + kTile < rows ? r0 + kTile : rows;
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c1 = c0 + kTile < cols ? c0 + kTile : cols;
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) target[c * rows + r] = source[r * cols + c];
        }
      }
    }
  }
}

// im2col of a padded NHWC int8 input (every tap inside it): row (b, oy, ox) of `out` holds the window's taps in
// (ky, kx, channel) order, kernel_h * kernel_w * channels bytes.
void nb_im2col(const int8_t* input, int32_t batches, int32_t in_h, int32_t in_w, int32_t channels, int32_t kernel_h,
               int32_t kernel_w, int32_t stride_h, int32_t stride_w, int32_t dilation_h, int32_t dilation_w,
               int32_t out_h, int32_t out_w, int8_t* out) {
  const int64_t row_stride = static_cast<int64_t>(in_w) * channels;
  const int64_t tap_bytes = static_cast<int64_t>(channels) * (dilation_w == 1 ? kernel_w : 1);
  for (int32_t b = 0; b < batches; ++b) {
    for (int32_t oy = 0; oy < out_h; ++oy) {
      for (int32_t ox = 0; ox < out_w; ++ox) {
        const int8_t* origin = input + (static_cast<int64_t>(b) * in_h + oy * stride_h) * row_stride +
                               static_cast<int64_t>(ox) * stride_w * channels;
        for (int32_t ky = 0; ky < kernel_h; ++ky) {
          const int8_t* line = origin + static_cast<int64_t>(ky) * dilation_h * row_stride;
          if (dilation_w == 1) {
            std::memcpy(out, line, static_cast<size_t>(tap_bytes));
            out += tap_bytes;
          } else {
            for (int32_t kx = 0; kx < kernel_w; ++kx, out += tap_bytes) {
              std::memcpy(out, line + static_cast<int64_t>(kx) * dilation_w * channels, static_cast<size_t>(tap_bytes));
            }
          }
        }
      }
    }
  }
}

// Lays out a depthwise filter (taps x channels, int8) for the vectorized loop: per block of 32 channels, per
// pair of taps (the last one paired with zeros when the count is odd), two rows of 32 int16: (tap 2p, tap 2p+1)
// pairs of channels 8L+i, then of channels 8L+4+i (L the 128-bit lane, i < 4), the order unpacklo/hi_epi16 give.
// `packed` holds ceil(channels / 32) * ceil(taps / 2) * 64 int16.
void nb_depthwise_pack(const int8_t* filter, int32_t taps, int32_t channels, int16_t* packed) {
  const int32_t pairs = (taps + 1) / 2;
  const int32_t blocks = (channels + 31) / 32;
  for (int32_t block = 0; block < blocks; ++block) {
    for (int32_t p = 0; p < pairs; ++p) {
      int16_t* target = packed + (static_cast<int64_t>(block) * pairs + p) * 64;
      for (int32_t half = 0; half < 2; ++half) {
        for (int32_t lane = 0; lane < 4; ++lane) {
          for (int32_t i = 0; i < 4; ++i) {
            const int32_t channel = block * 32 + lane * 8 + half * 4 + i;
            for (int32_t t = 0; t < 2; ++t) {
              const int32_t tap = 2 * p + t;
              target[half * 32 + lane * 8 + 2 * i + t] =
                  channel < channels && tap < taps ? filter[static_cast<int64_t>(tap) * channels + channel] : 0;
            }
          }
        }
      }
    }
  }
}

// reference_integer_ops::DepthwiseConvPerChannel on NHWC int8: output channel o = i * depth_multiplier + m
// sums (x[i] - input_zero_point) * filter[o] over its taps, adds the bias, requantizes. The input comes padded
// with input_zero_point, so every tap is inside it and the sum is sum(x[i] * filter[o]) over every tap minus
// input_zero_point * sum(filter[o]): `bias` must hold that second term (a pad tap then adds nothing, as the
// reference skips it). filter is (kh, kw, in_channels * depth_multiplier). Returns 0, or 1 when out of memory.
int32_t nb_depthwise_conv(const int8_t* input, int32_t batches, int32_t in_h, int32_t in_w, int32_t in_channels,
                          const int8_t* filter, const int16_t* packed, int32_t kernel_h, int32_t kernel_w,
                          int32_t depth_multiplier, int32_t stride_h, int32_t stride_w, int32_t dilation_h,
                          int32_t dilation_w, int32_t out_h, int32_t out_w, const int32_t* bias,
                          const int32_t* multiplier, const int32_t* shift, int32_t zero_point, int32_t low,
                          int32_t high, int8_t* output) {
  const int32_t out_channels = in_channels * depth_multiplier;
  // One output row of accumulators, requantized together once the row is summed.
  const int32_t taps = kernel_h * kernel_w;
  const int32_t pairs = (taps + 1) / 2;
  int32_t* row = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * out_channels * out_w +
                                                   sizeof(int64_t) * (2 * pairs)));
  if (row == nullptr) return 1;
  const int64_t row_stride = static_cast<int64_t>(in_w) * in_channels;
  // Each tap's offset from a window's origin; an odd count's last pair repeats the last tap (its weights are 0).
  int64_t* tap_offset = reinterpret_cast<int64_t*>(row + static_cast<int64_t>(out_channels) * out_w);
  for (int32_t t = 0; t < 2 * pairs; ++t) {
    const int32_t tap = t < taps ? t : taps - 1;
    tap_offset[t] = static_cast<int64_t>(tap / kernel_w) * dilation_h * row_stride +
                    static_cast<int64_t>(tap % kernel_w) * dilation_w * in_channels;
  }
  for (int32_t b = 0; b < batches; ++b) {
    for (int32_t oy = 0; oy < out_h; ++oy) {
      for (int32_t ox = 0; ox < out_w; ++ox) {
        int32_t* acc = row + static_cast<int64_t>(ox) * out_channels;
        const int8_t* origin = input + ((static_cast<int64_t>(b) * in_h + oy * stride_h) * in_w + ox * stride_w) *
                                           in_channels;
        int32_t o = 0;
        if (depth_multiplier == 1) {
#if NB_AVX512
          for (; o < out_channels; o += 32) {
            depthwise_block32(origin + o, tap_offset, pairs, packed + static_cast<int64_t>(o / 32) * pairs * 64,
                              first_lanes<__mmask32, 32>(out_channels - o), acc + o);
          }
#else
          constexpr int32_t kBlock = 16;  // channels summed in registers across every tap of a pixel
          for (; o + kBlock <= out_channels; o += kBlock) {
            int32_t block[kBlock] = {0};
            for (int32_t ky = 0; ky < kernel_h; ++ky) {
              for (int32_t kx = 0; kx < kernel_w; ++kx) {
                const int8_t* __restrict x = origin + ky * dilation_h * row_stride + kx * dilation_w * in_channels + o;
                const int8_t* __restrict f = filter + (ky * kernel_w + kx) * out_channels + o;
                for (int32_t j = 0; j < kBlock; ++j) {
                  block[j] += static_cast<int32_t>(x[j]) * static_cast<int32_t>(f[j]);
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
              sum += static_cast<int32_t>(x[o / depth_multiplier]) *
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
