import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Struct } from "../src/framing/struct.js";

/*
 * Ground truth: every vector below was produced by CPython 3.11.7's `struct`
 * module on x86_64 Linux (e.g. `struct.pack("@bhq", 1, 2, 3).hex()`,
 * `struct.calcsize("llh0l")`), then pasted here as literals. Integers of
 * 8 bytes are written as bigint literals, since that is how they unpack.
 */

/** [format, values to pack, packed hex, values unpacked from that hex] */
type Row = [format: string, values: unknown[], hex: string, unpacked: unknown[]];

const b = (hex: string): Buffer => Buffer.from(hex, "hex");

const EVERY_CODE: Row[] = [
  ["@3x", [], "000000", []],
  ["@3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  ["@3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  ["@3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  ["@3?", [true, false, true], "010001", [true, false, true]],
  ["@3h", [-32768, 32767, -2], "0080ff7ffeff", [-32768, 32767, -2]],
  ["@3H", [0, 65535, 52719], "0000ffffefcd", [0, 65535, 52719]],
  ["@3i", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["@3I", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["@3l", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["@3L", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["@3q", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["@3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["@3e", [1.5, -0.25, 65504.0], "003e00b4ff7b", [1.5, -0.25, 65504.0]],
  ["@3f", [1.5, -0.1, 3.4028234663852886e+38], "0000c03fcdccccbdffff7f7f", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  ["@3d", [3.141592653589793, -1e+300, 5e-324], "182d4454fb2109409c7500883ce437fe0100000000000000", [3.141592653589793, -1e+300, 5e-324]],
  ["@5s", [b("6869")], "6869000000", [b("6869000000")]],
  ["@5p", [b("6869")], "0268690000", [b("6869")]],
  ["@3n", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["@3N", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["@3P", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["=3x", [], "000000", []],
  ["=3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  ["=3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  ["=3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  ["=3?", [true, false, true], "010001", [true, false, true]],
  ["=3h", [-32768, 32767, -2], "0080ff7ffeff", [-32768, 32767, -2]],
  ["=3H", [0, 65535, 52719], "0000ffffefcd", [0, 65535, 52719]],
  ["=3i", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["=3I", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["=3l", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["=3L", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["=3q", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["=3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["=3e", [1.5, -0.25, 65504.0], "003e00b4ff7b", [1.5, -0.25, 65504.0]],
  ["=3f", [1.5, -0.1, 3.4028234663852886e+38], "0000c03fcdccccbdffff7f7f", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  ["=3d", [3.141592653589793, -1e+300, 5e-324], "182d4454fb2109409c7500883ce437fe0100000000000000", [3.141592653589793, -1e+300, 5e-324]],
  ["=5s", [b("6869")], "6869000000", [b("6869000000")]],
  ["=5p", [b("6869")], "0268690000", [b("6869")]],
  ["<3x", [], "000000", []],
  ["<3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  ["<3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  ["<3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  ["<3?", [true, false, true], "010001", [true, false, true]],
  ["<3h", [-32768, 32767, -2], "0080ff7ffeff", [-32768, 32767, -2]],
  ["<3H", [0, 65535, 52719], "0000ffffefcd", [0, 65535, 52719]],
  ["<3i", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["<3I", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["<3l", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["<3L", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["<3q", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["<3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["<3e", [1.5, -0.25, 65504.0], "003e00b4ff7b", [1.5, -0.25, 65504.0]],
  ["<3f", [1.5, -0.1, 3.4028234663852886e+38], "0000c03fcdccccbdffff7f7f", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  ["<3d", [3.141592653589793, -1e+300, 5e-324], "182d4454fb2109409c7500883ce437fe0100000000000000", [3.141592653589793, -1e+300, 5e-324]],
  ["<5s", [b("6869")], "6869000000", [b("6869000000")]],
  ["<5p", [b("6869")], "0268690000", [b("6869")]],
  [">3x", [], "000000", []],
  [">3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  [">3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  [">3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  [">3?", [true, false, true], "010001", [true, false, true]],
  [">3h", [-32768, 32767, -2], "80007ffffffe", [-32768, 32767, -2]],
  [">3H", [0, 65535, 52719], "0000ffffcdef", [0, 65535, 52719]],
  [">3i", [-2147483648, 2147483647, -2], "800000007ffffffffffffffe", [-2147483648, 2147483647, -2]],
  [">3I", [0, 4294967295, 2309737967], "00000000ffffffff89abcdef", [0, 4294967295, 2309737967]],
  [">3l", [-2147483648, 2147483647, -2], "800000007ffffffffffffffe", [-2147483648, 2147483647, -2]],
  [">3L", [0, 4294967295, 2309737967], "00000000ffffffff89abcdef", [0, 4294967295, 2309737967]],
  [">3q", [-9223372036854775808n, 9223372036854775807n, -2n], "80000000000000007ffffffffffffffffffffffffffffffe", [-9223372036854775808n, 9223372036854775807n, -2n]],
  [">3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffff0123456789abcdef", [0n, 18446744073709551615n, 81985529216486895n]],
  [">3e", [1.5, -0.25, 65504.0], "3e00b4007bff", [1.5, -0.25, 65504.0]],
  [">3f", [1.5, -0.1, 3.4028234663852886e+38], "3fc00000bdcccccd7f7fffff", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  [">3d", [3.141592653589793, -1e+300, 5e-324], "400921fb54442d18fe37e43c8800759c0000000000000001", [3.141592653589793, -1e+300, 5e-324]],
  [">5s", [b("6869")], "6869000000", [b("6869000000")]],
  [">5p", [b("6869")], "0268690000", [b("6869")]],
  ["!3x", [], "000000", []],
  ["!3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  ["!3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  ["!3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  ["!3?", [true, false, true], "010001", [true, false, true]],
  ["!3h", [-32768, 32767, -2], "80007ffffffe", [-32768, 32767, -2]],
  ["!3H", [0, 65535, 52719], "0000ffffcdef", [0, 65535, 52719]],
  ["!3i", [-2147483648, 2147483647, -2], "800000007ffffffffffffffe", [-2147483648, 2147483647, -2]],
  ["!3I", [0, 4294967295, 2309737967], "00000000ffffffff89abcdef", [0, 4294967295, 2309737967]],
  ["!3l", [-2147483648, 2147483647, -2], "800000007ffffffffffffffe", [-2147483648, 2147483647, -2]],
  ["!3L", [0, 4294967295, 2309737967], "00000000ffffffff89abcdef", [0, 4294967295, 2309737967]],
  ["!3q", [-9223372036854775808n, 9223372036854775807n, -2n], "80000000000000007ffffffffffffffffffffffffffffffe", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["!3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffff0123456789abcdef", [0n, 18446744073709551615n, 81985529216486895n]],
  ["!3e", [1.5, -0.25, 65504.0], "3e00b4007bff", [1.5, -0.25, 65504.0]],
  ["!3f", [1.5, -0.1, 3.4028234663852886e+38], "3fc00000bdcccccd7f7fffff", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  ["!3d", [3.141592653589793, -1e+300, 5e-324], "400921fb54442d18fe37e43c8800759c0000000000000001", [3.141592653589793, -1e+300, 5e-324]],
  ["!5s", [b("6869")], "6869000000", [b("6869000000")]],
  ["!5p", [b("6869")], "0268690000", [b("6869")]],
  ["3x", [], "000000", []],
  ["3c", [b("00"), b("41"), b("ff")], "0041ff", [b("00"), b("41"), b("ff")]],
  ["3b", [-128, 127, -2], "807ffe", [-128, 127, -2]],
  ["3B", [0, 255, 239], "00ffef", [0, 255, 239]],
  ["3?", [true, false, true], "010001", [true, false, true]],
  ["3h", [-32768, 32767, -2], "0080ff7ffeff", [-32768, 32767, -2]],
  ["3H", [0, 65535, 52719], "0000ffffefcd", [0, 65535, 52719]],
  ["3i", [-2147483648, 2147483647, -2], "00000080ffffff7ffeffffff", [-2147483648, 2147483647, -2]],
  ["3I", [0, 4294967295, 2309737967], "00000000ffffffffefcdab89", [0, 4294967295, 2309737967]],
  ["3l", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["3L", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["3q", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["3Q", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["3e", [1.5, -0.25, 65504.0], "003e00b4ff7b", [1.5, -0.25, 65504.0]],
  ["3f", [1.5, -0.1, 3.4028234663852886e+38], "0000c03fcdccccbdffff7f7f", [1.5, -0.10000000149011612, 3.4028234663852886e+38]],
  ["3d", [3.141592653589793, -1e+300, 5e-324], "182d4454fb2109409c7500883ce437fe0100000000000000", [3.141592653589793, -1e+300, 5e-324]],
  ["5s", [b("6869")], "6869000000", [b("6869000000")]],
  ["5p", [b("6869")], "0268690000", [b("6869")]],
  ["3n", [-9223372036854775808n, 9223372036854775807n, -2n], "0000000000000080ffffffffffffff7ffeffffffffffffff", [-9223372036854775808n, 9223372036854775807n, -2n]],
  ["3N", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
  ["3P", [0n, 18446744073709551615n, 81985529216486895n], "0000000000000000ffffffffffffffffefcdab8967452301", [0n, 18446744073709551615n, 81985529216486895n]],
];
const REPEATS: Row[] = [
  ["<4h", [1, -1, 2, -2], "0100ffff0200feff", [1, -1, 2, -2]],
  ["<10s", [b("68656c6c6f")], "68656c6c6f0000000000", [b("68656c6c6f0000000000")]],
  ["<0s", [b("616263")], "", [b("")]],
  ["<0h", [], "", []],
  [">2?2c", [true, false, b("61"), b("62")], "01006162", [true, false, b("61"), b("62")]],
  ["< 2h\t\n3B ", [1, 2, 3, 4, 5], "01000200030405", [1, 2, 3, 4, 5]],
  ["<01h", [7], "0700", [7]],
  ["!2x h 0x b", [258, -3], "00000102fd", [258, -3]],
  ["=H3s2b", [513, b("78797a"), -1, 1], "010278797aff01", [513, b("78797a"), -1, 1]],
];
const ALIGNED: Row[] = [
  ["@ci", [b("61"), 1], "6100000001000000", [b("61"), 1]],
  ["@ic", [1, b("61")], "0100000061", [1, b("61")]],
  ["@bhq", [1, 2, 3n], "01000200000000000300000000000000", [1, 2, 3n]],
  ["@llh0l", [1n, -1n, 5], "0100000000000000ffffffffffffffff0500000000000000", [1n, -1n, 5]],
  ["@?d", [true, 2.5], "01000000000000000000000000000440", [true, 2.5]],
  ["@ce", [b("7a"), 1.0], "7a00003c", [b("7a"), 1.0]],
  ["@bf", [-1, 0.5], "ff0000000000003f", [-1, 0.5]],
  ["@3sP", [b("6162"), 9n], "61620000000000000900000000000000", [b("616200"), 9n]],
  ["@cn", [b("61"), -5n], "6100000000000000fbffffffffffffff", [b("61"), -5n]],
  ["@BN", [1, 5n], "01000000000000000500000000000000", [1, 5n]],
  ["@h0q", [3], "0300000000000000", [3]],
  ["@c0s i", [b("61"), b(""), 7], "6100000007000000", [b("61"), b(""), 7]],
];
const CALCSIZE: [string, number][] = [
  ["", 0],
  ["@", 0],
  ["c", 1],
  ["ci", 8],
  ["ic", 5],
  ["@ci", 8],
  ["=ci", 5],
  ["<ci", 5],
  ["llh0l", 24],
  ["@c0i", 4],
  ["@cx", 2],
  ["@c?", 2],
  ["@ce", 4],
  ["@cf", 8],
  ["@cd", 16],
  ["@cq", 16],
  ["@cl", 16],
  ["=cl", 5],
  ["@cn", 16],
  ["@cN", 16],
  ["@cP", 16],
  ["bhilqnNP", 48],
  ["<bhilq", 19],
  ["@xxxi", 8],
  ["@5s i", 12],
  ["@i5s", 9],
  ["@h0e", 2],
  ["@b0d", 8],
  ["@3c2d", 24],
  ["0p", 0],
  ["@c0s", 1],
  ["@ b 2h 3i", 20],
  ["!100s", 100],
  ["=2l 3L", 20],
  ["@?h", 4],
  ["@e?d", 16],
];
const STRINGS: Row[] = [
  ["<3s", [b("")], "000000", [b("000000")]],
  ["<3s", [b("6162")], "616200", [b("616200")]],
  ["<3s", [b("616263")], "616263", [b("616263")]],
  ["<3s", [b("616263646566")], "616263", [b("616263")]],
  ["<1s", [b("78797a")], "78", [b("78")]],
  ["<4p", [b("")], "00000000", [b("")]],
  ["<4p", [b("6162")], "02616200", [b("6162")]],
  ["<4p", [b("616263")], "03616263", [b("616263")]],
  ["<4p", [b("616263646566")], "03616263", [b("616263")]],
  ["<1p", [b("616263")], "00", [b("")]],
];
const PASCAL_UNPACK: [string, string, string][] = [
  ["3p", "09abcd", "abcd"],
  ["3p", "01abcd", "ab"],
  ["3p", "00abcd", ""],
  ["1p", "05", ""],
  ["5p", "ff41424344", "41424344"],
];
const FLOATS: Row[] = [
  ["<e", [Infinity], "007c", [Infinity]],
  ["<e", [-Infinity], "00fc", [-Infinity]],
  ["<e", [NaN], "007e", [NaN]],
  ["<e", [0.0], "0000", [0.0]],
  ["<e", [-0], "0080", [-0]],
  ["<e", [1.0], "003c", [1.0]],
  ["<e", [-2.0], "00c0", [-2.0]],
  ["<e", [0.1], "662e", [0.0999755859375]],
  ["<e", [0.3333333333333333], "5535", [0.333251953125]],
  ["<e", [5.960464477539063e-08], "0100", [5.960464477539063e-08]],
  ["<e", [-5.960464477539063e-08], "0180", [-5.960464477539063e-08]],
  ["<e", [6.103515625e-05], "0004", [6.103515625e-05]],
  ["<e", [6.097555160522461e-05], "ff03", [6.097555160522461e-05]],
  ["<e", [6.097555160522461e-05], "ff03", [6.097555160522461e-05]],
  ["<e", [2.9802322387695312e-08], "0000", [0.0]],
  ["<e", [2.980232536792755e-08], "0100", [5.960464477539063e-08]],
  ["<e", [8.940696716308594e-08], "0200", [1.1920928955078125e-07]],
  ["<e", [1.4901161193847656e-07], "0200", [1.1920928955078125e-07]],
  ["<e", [65504.0], "ff7b", [65504.0]],
  ["<e", [65519.99], "ff7b", [65504.0]],
  ["<e", [-65519.0], "fffb", [-65504.0]],
  ["<e", [1.00048828125], "003c", [1.0]],
  ["<e", [1.00146484375], "023c", [1.001953125]],
  ["<e", [1.0004882812509095], "013c", [1.0009765625]],
  ["<e", [2049], "0068", [2048.0]],
  ["<e", [2051], "0268", [2052.0]],
  ["<e", [6.1e-05], "ff03", [6.097555160522461e-05]],
  ["<e", [1e-08], "0000", [0.0]],
  ["<e", [1e-07], "0200", [1.1920928955078125e-07]],
  ["<f", [Infinity], "0000807f", [Infinity]],
  ["<f", [-Infinity], "000080ff", [-Infinity]],
  ["<f", [NaN], "0000c07f", [NaN]],
  ["<f", [0.0], "00000000", [0.0]],
  ["<f", [-0], "00000080", [-0]],
  ["<f", [1.0], "0000803f", [1.0]],
  ["<f", [-2.0], "000000c0", [-2.0]],
  ["<f", [0.1], "cdcccc3d", [0.10000000149011612]],
  ["<f", [0.3333333333333333], "abaaaa3e", [0.3333333432674408]],
  ["<f", [1.401298464324817e-45], "01000000", [1.401298464324817e-45]],
  ["<f", [-1.401298464324817e-45], "01000080", [-1.401298464324817e-45]],
  ["<f", [1.1754943508222875e-38], "00008000", [1.1754943508222875e-38]],
  ["<f", [7.006492321624085e-46], "00000000", [0.0]],
  ["<f", [7.006493022273318e-46], "01000000", [1.401298464324817e-45]],
  ["<f", [2.1019476964872256e-45], "02000000", [2.802596928649634e-45]],
  ["<f", [3.4028235551208306e+38], "ffff7f7f", [3.4028234663852886e+38]],
  ["<f", [1.0000000596046448], "0000803f", [1.0]],
  ["<f", [1.0000001788139343], "0200803f", [1.000000238418579]],
  ["<f", [16777217.0], "0000804b", [16777216.0]],
  ["<f", [1e-45], "01000000", [1.401298464324817e-45]],
  ["<f", [3.4e+38], "9ec97f7f", [3.3999999521443642e+38]],
  ["<d", [Infinity], "000000000000f07f", [Infinity]],
  ["<d", [-Infinity], "000000000000f0ff", [-Infinity]],
  ["<d", [NaN], "000000000000f87f", [NaN]],
  ["<d", [0.0], "0000000000000000", [0.0]],
  ["<d", [-0], "0000000000000080", [-0]],
  ["<d", [1.0], "000000000000f03f", [1.0]],
  ["<d", [-2.0], "00000000000000c0", [-2.0]],
  ["<d", [0.1], "9a9999999999b93f", [0.1]],
  ["<d", [0.3333333333333333], "555555555555d53f", [0.3333333333333333]],
  ["<d", [5e-324], "0100000000000000", [5e-324]],
  ["<d", [-5e-324], "0100000000000080", [-5e-324]],
  ["<d", [2.2250738585072014e-308], "0000000000001000", [2.2250738585072014e-308]],
  ["<d", [1.7976931348623157e+308], "ffffffffffffef7f", [1.7976931348623157e+308]],
  ["<d", [9007199254740992.0], "0000000000004043", [9007199254740992.0]],
  [">e", [Infinity], "7c00", [Infinity]],
  [">e", [-Infinity], "fc00", [-Infinity]],
  [">e", [NaN], "7e00", [NaN]],
  [">e", [0.0], "0000", [0.0]],
  [">e", [-0], "8000", [-0]],
  [">e", [1.0], "3c00", [1.0]],
  [">e", [-2.0], "c000", [-2.0]],
  [">e", [0.1], "2e66", [0.0999755859375]],
  [">e", [0.3333333333333333], "3555", [0.333251953125]],
  [">e", [5.960464477539063e-08], "0001", [5.960464477539063e-08]],
  [">e", [-5.960464477539063e-08], "8001", [-5.960464477539063e-08]],
  [">e", [6.103515625e-05], "0400", [6.103515625e-05]],
  [">e", [6.097555160522461e-05], "03ff", [6.097555160522461e-05]],
  [">e", [6.097555160522461e-05], "03ff", [6.097555160522461e-05]],
  [">e", [2.9802322387695312e-08], "0000", [0.0]],
  [">e", [2.980232536792755e-08], "0001", [5.960464477539063e-08]],
  [">e", [8.940696716308594e-08], "0002", [1.1920928955078125e-07]],
  [">e", [1.4901161193847656e-07], "0002", [1.1920928955078125e-07]],
  [">e", [65504.0], "7bff", [65504.0]],
  [">e", [65519.99], "7bff", [65504.0]],
  [">e", [-65519.0], "fbff", [-65504.0]],
  [">e", [1.00048828125], "3c00", [1.0]],
  [">e", [1.00146484375], "3c02", [1.001953125]],
  [">e", [1.0004882812509095], "3c01", [1.0009765625]],
  [">e", [2049], "6800", [2048.0]],
  [">e", [2051], "6802", [2052.0]],
  [">e", [6.1e-05], "03ff", [6.097555160522461e-05]],
  [">e", [1e-08], "0000", [0.0]],
  [">e", [1e-07], "0002", [1.1920928955078125e-07]],
  [">f", [Infinity], "7f800000", [Infinity]],
  [">f", [-Infinity], "ff800000", [-Infinity]],
  [">f", [NaN], "7fc00000", [NaN]],
  [">f", [0.0], "00000000", [0.0]],
  [">f", [-0], "80000000", [-0]],
  [">f", [1.0], "3f800000", [1.0]],
  [">f", [-2.0], "c0000000", [-2.0]],
  [">f", [0.1], "3dcccccd", [0.10000000149011612]],
  [">f", [0.3333333333333333], "3eaaaaab", [0.3333333432674408]],
  [">f", [1.401298464324817e-45], "00000001", [1.401298464324817e-45]],
  [">f", [-1.401298464324817e-45], "80000001", [-1.401298464324817e-45]],
  [">f", [1.1754943508222875e-38], "00800000", [1.1754943508222875e-38]],
  [">f", [7.006492321624085e-46], "00000000", [0.0]],
  [">f", [7.006493022273318e-46], "00000001", [1.401298464324817e-45]],
  [">f", [2.1019476964872256e-45], "00000002", [2.802596928649634e-45]],
  [">f", [3.4028235551208306e+38], "7f7fffff", [3.4028234663852886e+38]],
  [">f", [1.0000000596046448], "3f800000", [1.0]],
  [">f", [1.0000001788139343], "3f800002", [1.000000238418579]],
  [">f", [16777217.0], "4b800000", [16777216.0]],
  [">f", [1e-45], "00000001", [1.401298464324817e-45]],
  [">f", [3.4e+38], "7f7fc99e", [3.3999999521443642e+38]],
  [">d", [Infinity], "7ff0000000000000", [Infinity]],
  [">d", [-Infinity], "fff0000000000000", [-Infinity]],
  [">d", [NaN], "7ff8000000000000", [NaN]],
  [">d", [0.0], "0000000000000000", [0.0]],
  [">d", [-0], "8000000000000000", [-0]],
  [">d", [1.0], "3ff0000000000000", [1.0]],
  [">d", [-2.0], "c000000000000000", [-2.0]],
  [">d", [0.1], "3fb999999999999a", [0.1]],
  [">d", [0.3333333333333333], "3fd5555555555555", [0.3333333333333333]],
  [">d", [5e-324], "0000000000000001", [5e-324]],
  [">d", [-5e-324], "8000000000000001", [-5e-324]],
  [">d", [2.2250738585072014e-308], "0010000000000000", [2.2250738585072014e-308]],
  [">d", [1.7976931348623157e+308], "7fefffffffffffff", [1.7976931348623157e+308]],
  [">d", [9007199254740992.0], "4340000000000000", [9007199254740992.0]],
];
const FLOAT_OVERFLOW: [string, number][] = [
  ["<e", 65520.0],
  [">e", -65520.0],
  ["<e", 10000000000.0],
  ["@e", 70000.0],
  ["<f", 3.5e+38],
  ["!f", -1e+39],
  ["=f", 1.7976931348623157e+308],
  ["<f", 3.4028235677973366e+38],
];
const NATIVE_F_OVERFLOW = "0000807f000080ff";
const INT_BOUNDS: [string, bigint, bigint, string, string][] = [
  ["@b", -128n, 127n, "80", "7f"],
  ["@B", 0n, 255n, "00", "ff"],
  ["@h", -32768n, 32767n, "0080", "ff7f"],
  ["@H", 0n, 65535n, "0000", "ffff"],
  ["@i", -2147483648n, 2147483647n, "00000080", "ffffff7f"],
  ["@I", 0n, 4294967295n, "00000000", "ffffffff"],
  ["@l", -9223372036854775808n, 9223372036854775807n, "0000000000000080", "ffffffffffffff7f"],
  ["@L", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  ["@q", -9223372036854775808n, 9223372036854775807n, "0000000000000080", "ffffffffffffff7f"],
  ["@Q", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  ["@n", -9223372036854775808n, 9223372036854775807n, "0000000000000080", "ffffffffffffff7f"],
  ["@N", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  ["@P", -9223372036854775808n, 18446744073709551615n, "0000000000000080", "ffffffffffffffff"],
  ["=b", -128n, 127n, "80", "7f"],
  ["=B", 0n, 255n, "00", "ff"],
  ["=h", -32768n, 32767n, "0080", "ff7f"],
  ["=H", 0n, 65535n, "0000", "ffff"],
  ["=i", -2147483648n, 2147483647n, "00000080", "ffffff7f"],
  ["=I", 0n, 4294967295n, "00000000", "ffffffff"],
  ["=l", -2147483648n, 2147483647n, "00000080", "ffffff7f"],
  ["=L", 0n, 4294967295n, "00000000", "ffffffff"],
  ["=q", -9223372036854775808n, 9223372036854775807n, "0000000000000080", "ffffffffffffff7f"],
  ["=Q", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  ["<b", -128n, 127n, "80", "7f"],
  ["<B", 0n, 255n, "00", "ff"],
  ["<h", -32768n, 32767n, "0080", "ff7f"],
  ["<H", 0n, 65535n, "0000", "ffff"],
  ["<i", -2147483648n, 2147483647n, "00000080", "ffffff7f"],
  ["<I", 0n, 4294967295n, "00000000", "ffffffff"],
  ["<l", -2147483648n, 2147483647n, "00000080", "ffffff7f"],
  ["<L", 0n, 4294967295n, "00000000", "ffffffff"],
  ["<q", -9223372036854775808n, 9223372036854775807n, "0000000000000080", "ffffffffffffff7f"],
  ["<Q", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  [">b", -128n, 127n, "80", "7f"],
  [">B", 0n, 255n, "00", "ff"],
  [">h", -32768n, 32767n, "8000", "7fff"],
  [">H", 0n, 65535n, "0000", "ffff"],
  [">i", -2147483648n, 2147483647n, "80000000", "7fffffff"],
  [">I", 0n, 4294967295n, "00000000", "ffffffff"],
  [">l", -2147483648n, 2147483647n, "80000000", "7fffffff"],
  [">L", 0n, 4294967295n, "00000000", "ffffffff"],
  [">q", -9223372036854775808n, 9223372036854775807n, "8000000000000000", "7fffffffffffffff"],
  [">Q", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
  ["!b", -128n, 127n, "80", "7f"],
  ["!B", 0n, 255n, "00", "ff"],
  ["!h", -32768n, 32767n, "8000", "7fff"],
  ["!H", 0n, 65535n, "0000", "ffff"],
  ["!i", -2147483648n, 2147483647n, "80000000", "7fffffff"],
  ["!I", 0n, 4294967295n, "00000000", "ffffffff"],
  ["!l", -2147483648n, 2147483647n, "80000000", "7fffffff"],
  ["!L", 0n, 4294967295n, "00000000", "ffffffff"],
  ["!q", -9223372036854775808n, 9223372036854775807n, "8000000000000000", "7fffffffffffffff"],
  ["!Q", 0n, 18446744073709551615n, "0000000000000000", "ffffffffffffffff"],
];
const BAD_FORMATS: string[] = [
  "z",
  "hhz",
  " <h",
  "h<",
  "<<h",
  "4 h",
  "4",
  "h4",
  "<n",
  "=N",
  "!P",
  ">n",
  "h\u0000h",
  "\u00e9",
  "$",
  "3$",
  "h!",
  "*",
  "-1h",
  "1.5h",
];
const HALF_DECODE_SHA256 = "62dd074b90fef6531d8f6d66a4bb7b109b3e67f4c35521b7d520918eddd6cd97";
const HALF_ENCODE_SHA256 = "9059c6c975048b6910e10950ecf3d0423dd778cabfe6190774820fc69346aa4c";

function checkRows(rows: readonly Row[]): void {
  for (const [format, values, hex, unpacked] of rows) {
    const s = new Struct(format);
    assert.equal(s.pack(...values).toString("hex"), hex, `pack ${JSON.stringify(format)}`);
    assert.equal(s.size, hex.length / 2, `size of ${JSON.stringify(format)}`);
    assert.deepEqual(s.unpack(b(hex)), unpacked, `unpack ${JSON.stringify(format)}`);
  }
}

/** The next float64 after the positive finite `x`, towards 0 or +Infinity. */
function nextAfter(x: number, up: boolean): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  view.setBigUint64(0, view.getBigUint64(0) + (up ? 1n : -1n));
  return view.getFloat64(0);
}

describe("Struct: format compilation", () => {
  it("computes sizes like struct.calcsize, including @ alignment", () => {
    for (const [format, size] of CALCSIZE) {
      assert.equal(new Struct(format).size, size, `calcsize(${JSON.stringify(format)})`);
    }
  });

  it("exposes the format, size and value count", () => {
    const s = new Struct("<h 3s 2x 0i 4B");
    assert.equal(s.format, "<h 3s 2x 0i 4B");
    assert.equal(s.size, 11);
    assert.equal(s.valueCount, 6);
  });

  it("rejects every format that Python rejects with a RangeError", () => {
    for (const format of BAD_FORMATS) {
      assert.throws(() => new Struct(format), RangeError, JSON.stringify(format));
    }
  });

  it("names the bad character and its index", () => {
    assert.throws(() => new Struct("hhz"), { name: "RangeError", message: 'bad char "z" at index 2 in struct format "hhz"' });
    assert.throws(() => new Struct("4 h"), { message: /bad char " " at index 1/ });
    assert.throws(() => new Struct("h<"), { message: /"<" \(a byte order character is only allowed as the first character\) at index 1/ });
    assert.throws(() => new Struct("<hn"), { message: /"n" \('n' is only available in native '@' mode\) at index 2/ });
    assert.throws(() => new Struct("=N"), { message: /'N' is only available in native '@' mode/ });
    assert.throws(() => new Struct("<P"), { message: /'P' is only available/ });
    assert.throws(() => new Struct("h12"), { message: /^repeat count given without format specifier at index 1/ });
    assert.throws(() => new Struct("99999999999999999999s"), { name: "RangeError", message: /total struct size too long/ });
    assert.throws(() => new Struct("4611686018427387904h"), { name: "RangeError", message: /total struct size too long/ });
  });

  it("throws TypeError for a format that is not a string", () => {
    for (const format of [5, null, undefined, Buffer.from("h"), ["h"]]) {
      assert.throws(() => new Struct(format as unknown as string), TypeError);
    }
  });

  it("ignores whitespace between codes and accepts an empty format", () => {
    assert.equal(new Struct(" \t\n\v\f\rh \t\n\v\f\rh ").size, 4);
    const empty = new Struct("");
    assert.equal(empty.size, 0);
    assert.equal(empty.pack().length, 0);
    assert.deepEqual(empty.unpack(Buffer.alloc(0)), []);
    assert.equal(new Struct("!").size, 0);
  });

  it("does not allocate per repeated item when compiling", () => {
    const s = new Struct("4000000000x");
    assert.equal(s.size, 4_000_000_000);
    assert.equal(s.valueCount, 0);
  });
});

describe("Struct: packing and unpacking", () => {
  it("packs and unpacks every code in every byte order", () => checkRows(EVERY_CODE));
  it("honours repeat counts and whitespace", () => checkRows(REPEATS));
  it("aligns native items to their own size with no trailing padding", () => checkRows(ALIGNED));
  it("pads and truncates s and p fields", () => checkRows(STRINGS));
  it("handles e, f and d special values, subnormals and rounding", () => checkRows(FLOATS));

  it("caps Pascal length bytes at 255 and at count-1", () => {
    // struct.pack("<256p", b"q"*300): length byte 255, 255 data bytes.
    const p256 = new Struct("256p").pack("q".repeat(300));
    assert.equal(p256.length, 256);
    assert.equal(p256[0], 255);
    assert.ok(p256.subarray(1).every((x) => x === 0x71));
    // struct.pack("<300p", b"r"*280): length byte 255 although 280 bytes are stored.
    const p300 = new Struct("300p").pack(Buffer.alloc(280, 0x72));
    assert.equal(p300[0], 255);
    assert.ok(p300.subarray(1, 281).every((x) => x === 0x72));
    assert.ok(p300.subarray(281).every((x) => x === 0));
    assert.deepEqual(new Struct("300p").unpack(p300), [Buffer.alloc(255, 0x72)]);
    // struct.pack("<257p", b"t"*256) stores 256 bytes; unpack returns 255 of them.
    const p257 = new Struct("257p").pack(Buffer.alloc(256, 0x74));
    assert.equal(p257[0], 255);
    assert.deepEqual(new Struct("257p").unpack(p257), [Buffer.alloc(255, 0x74)]);
    for (const [format, hex, data] of PASCAL_UNPACK) {
      assert.deepEqual(new Struct(format).unpack(b(hex)), [b(data)], `${format} ${hex}`);
    }
  });

  it("packs 0s and 0p as nothing, consuming one value", () => {
    assert.equal(new Struct("B0sB").pack(1, "ignored", 2).toString("hex"), "0102");
    // CPython writes a stray byte for 0p and cannot unpack it; here it is empty.
    assert.equal(new Struct("B0pB").pack(1, "ignored", 2).toString("hex"), "0102");
    assert.deepEqual(new Struct("B0pB").unpack(b("0102")), [1, Buffer.alloc(0), 2]);
  });

  it("accepts strings and Uint8Arrays for c, s and p", () => {
    assert.equal(new Struct("c").pack("A").toString("hex"), "41");
    assert.equal(new Struct("c").pack("\u00e9").toString("hex"), "e9");
    assert.equal(new Struct("c").pack(new Uint8Array([7])).toString("hex"), "07");
    assert.equal(new Struct("4s").pack("h\u00e9").toString("hex"), "68c3a900");
    assert.equal(new Struct("4p").pack("h\u00e9").toString("hex"), "0368c3a9");
    assert.equal(new Struct("2s").pack(new Uint8Array([1, 2, 3])).toString("hex"), "0102");
    const [c, s] = new Struct("c2s").unpack(b("414243"));
    assert.ok(Buffer.isBuffer(c) && Buffer.isBuffer(s));
  });

  it("returns copies for c, s and p, not views of the input", () => {
    const input = b("410242014300");
    const [c, s, p] = new Struct("c2s3p").unpack(input);
    input.fill(0);
    assert.deepEqual([c, s, p], [b("41"), b("0242"), b("43")]);
  });

  it("packs the truthiness of any value with ?, and unpacks any non-zero byte as true", () => {
    const s = new Struct("8?");
    assert.equal(s.pack(0, 1, "", "x", null, {}, NaN, 0n).toString("hex"), "0001000100010000");
    assert.deepEqual(new Struct("3?").unpack(b("0002ff")), [false, true, true]);
  });

  it("unpacks 1 to 4 byte integers as numbers and 8 byte integers as bigints", () => {
    const eight = b("feffffffffffffff");
    assert.deepEqual(new Struct("@l").unpack(eight), [-2n]);
    assert.deepEqual(new Struct("@L").unpack(eight), [18446744073709551614n]);
    assert.deepEqual(new Struct("<q").unpack(eight), [-2n]);
    assert.deepEqual(new Struct("<2l").unpack(eight), [-2, -1]);
    assert.deepEqual(new Struct("<I").pack(4294967295n), b("ffffffff"));
  });

  it("round-trips large q and Q values as bigints", () => {
    const cases: [string, bigint, string][] = [
      [">q", -1234567890123456789n, "eeddef0b82167eeb"],
      ["<q", 9007199254740993n, "0100000000002000"],
      ["<Q", 18446744073709551614n, "feffffffffffffff"],
      [">Q", 81985529216486895n, "0123456789abcdef"],
    ];
    for (const [format, value, hex] of cases) {
      const s = new Struct(format);
      assert.equal(s.pack(value).toString("hex"), hex);
      assert.deepEqual(s.unpack(b(hex)), [value]);
    }
    // An integral number is accepted as well.
    assert.equal(new Struct(">Q").pack(2 ** 60).toString("hex"), "1000000000000000");
  });

  it("packs a negative NaN with e as Python does (fe00: the sign kept, the payload dropped)", () => {
    const bits = new DataView(new ArrayBuffer(8));
    bits.setUint32(0, 0xfff80001); // a negative NaN with a payload
    const negative = bits.getFloat64(0);
    assert.equal(new Struct(">e").pack(negative).toString("hex"), "fe00");
    assert.equal(new Struct(">e").pack(NaN).toString("hex"), "7e00");
  });

  it("unpacks a half NaN with its sign, as Python does (fe00 is fff8000000000000), also once the code is optimized", () => {
    // struct.unpack("<e", bytes.fromhex(h)) for each pattern, repacked with "<d".
    const cases: Array<[string, string]> = [["00fe", "000000000000f8ff"], ["01fc", "000000000000f8ff"], ["ffff", "000000000000f8ff"], ["007e", "000000000000f87f"], ["017c", "000000000000f87f"]];
    const half = new Struct("<e");
    const double = new Struct("<d");
    for (let round = 0; round < 20_000; round++) {
      for (const [hex, want] of cases) {
        assert.equal(double.pack(half.unpack(Buffer.from(hex, "hex"))[0]).toString("hex"), want, `${hex} in round ${round}`);
      }
    }
    // Beside other numbers: after a few calls V8 makes the result an array
    // of doubles, which stores a NaN as the canonical (positive) one.
    const four = new Struct("<4e");
    const bytes = Buffer.from("fcffbef0e1e0aff0", "hex");
    for (let round = 0; round < 2_000; round++) {
      for (const call of [() => four.unpack(bytes), () => four.unpackFrom(bytes)]) {
        assert.equal(double.pack(call()[0]).toString("hex"), "000000000000f8ff", `round ${round}`);
      }
    }
  });

  it("decodes every half-precision bit pattern like Python", () => {
    // struct.unpack("<65536e", all patterns) re-packed as "<65536d", NaNs as 0.0.
    const all = Buffer.alloc(2 * 65536);
    for (let i = 0; i < 65536; i++) all.writeUInt16LE(i, 2 * i);
    const values = new Struct("<65536e").unpack(all).map((x) => (Number.isNaN(x) ? 0 : x));
    const digest = createHash("sha256").update(new Struct("<65536d").pack(...values)).digest("hex");
    assert.equal(digest, HALF_DECODE_SHA256);
  });

  it("rounds to half precision like Python at every midpoint and its neighbours", () => {
    // For every finite half v: pack v, the midpoint to the next half, and the
    // doubles just below and above that midpoint ("ffff" where Python overflows).
    const half = new Struct("<e");
    const parts: Buffer[] = [];
    const encode = (x: number): Buffer => {
      try {
        return half.pack(x);
      } catch (error) {
        assert.ok(error instanceof RangeError);
        return b("ffff");
      }
    };
    for (let bits = 0; bits < 0x7c00; bits++) {
      const v = half.unpack(Buffer.from([bits & 0xff, bits >> 8]))[0] as number;
      const next = bits < 0x7bff ? (half.unpack(Buffer.from([(bits + 1) & 0xff, (bits + 1) >> 8]))[0] as number) : 65536;
      const mid = (v + next) / 2;
      parts.push(encode(v), encode(mid), encode(nextAfter(mid, false)), encode(nextAfter(mid, true)));
    }
    assert.equal(createHash("sha256").update(Buffer.concat(parts)).digest("hex"), HALF_ENCODE_SHA256);
  });

  it("rejects floats too large for e, and for f with standard sizes", () => {
    for (const [format, value] of FLOAT_OVERFLOW) {
      assert.throws(() => new Struct(format).pack(value), { name: "RangeError", message: /float too large to pack with [ef] format/ });
    }
    assert.throws(() => new Struct("d").pack(10n ** 400n), { name: "RangeError", message: /int too large to convert to float/ });
  });

  it("overflows f to infinity under @, as CPython's unchecked cast does", () => {
    assert.equal(new Struct("@2f").pack(3.5e38, -1e39).toString("hex"), NATIVE_F_OVERFLOW);
  });

  it("accepts bigints for float codes", () => {
    assert.equal(new Struct(">d").pack(3n).toString("hex"), "4008000000000000");
    assert.equal(new Struct(">e").pack(-2n).toString("hex"), "c000");
  });
});

describe("Struct: integer ranges", () => {
  it("accepts both boundaries of every integer code and rejects one past them", () => {
    for (const [format, lo, hi, loHex, hiHex] of INT_BOUNDS) {
      const s = new Struct(format);
      const eight = s.size === 8;
      assert.equal(s.pack(lo).toString("hex"), loHex, `${format} min`);
      assert.equal(s.pack(hi).toString("hex"), hiHex, `${format} max`);
      // P unpacks unsigned, so its (negative) minimum comes back as 2**63.
      const loBack = format.endsWith("P") ? 2n ** 63n : lo;
      assert.deepEqual(s.unpack(b(loHex)), [eight ? loBack : Number(loBack)], `${format} unpack min`);
      assert.deepEqual(s.unpack(b(hiHex)), [eight ? hi : Number(hi)], `${format} unpack max`);
      if (Number.isSafeInteger(Number(lo)) && Number.isSafeInteger(Number(hi))) {
        assert.equal(s.pack(Number(lo)).toString("hex"), loHex);
        assert.equal(s.pack(Number(hi)).toString("hex"), hiHex);
        assert.throws(() => s.pack(Number(lo) - 1), RangeError, `${format} number min-1`);
        assert.throws(() => s.pack(Number(hi) + 1), RangeError, `${format} number max+1`);
      } else {
        // Numbers at 2**63 and 2**64 are exactly one past the bigint limits.
        assert.throws(() => s.pack(Number(hi) + 1), RangeError, `${format} number max+1`);
      }
      assert.throws(() => s.pack(lo - 1n), { name: "RangeError", message: /argument out of range/ }, `${format} min-1`);
      assert.throws(() => s.pack(hi + 1n), { name: "RangeError", message: /argument out of range/ }, `${format} max+1`);
    }
  });

  it("explains the range in the message", () => {
    assert.throws(() => new Struct(">h").pack(40000), {
      name: "RangeError",
      message: "argument out of range: 'h' format requires -32768 <= number <= 32767 (got 40000)",
    });
    assert.throws(() => new Struct("<B").pack(-1), { message: /'B' format requires 0 <= number <= 255 \(got -1\)/ });
  });

  it("rejects non-integers with a TypeError", () => {
    for (const format of ["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "n", "N", "P", "<l", ">q"]) {
      const s = new Struct(format);
      for (const bad of [1.5, NaN, Infinity, -Infinity, "1", true, null, undefined, [1], {}]) {
        assert.throws(() => s.pack(bad), TypeError, `${format} ${String(bad)}`);
      }
    }
    assert.throws(() => new Struct("h").pack(1.5), { message: /required argument is not an integer/ });
  });

  it("accepts -0 and integral floats", () => {
    assert.equal(new Struct("<h").pack(-0).toString("hex"), "0000");
    assert.equal(new Struct("<h").pack(2.0).toString("hex"), "0200");
  });
});

describe("Struct: argument and buffer errors", () => {
  it("rejects a wrong number of values with a TypeError", () => {
    const s = new Struct("3h");
    assert.throws(() => s.pack(1, 2), { name: "TypeError", message: "pack expected 3 items for packing (got 2)" });
    assert.throws(() => s.pack(1, 2, 3, 4), { name: "TypeError", message: "pack expected 3 items for packing (got 4)" });
    assert.throws(() => new Struct("2x").pack(0), { message: "pack expected 0 items for packing (got 1)" });
    assert.throws(() => new Struct("5s").pack(), { message: "pack expected 1 items for packing (got 0)" });
    assert.throws(() => s.packInto(Buffer.alloc(6), 0, 1), {
      name: "TypeError",
      message: "pack_into expected 3 items for packing (got 1)",
    });
  });

  it("rejects values of the wrong type", () => {
    assert.throws(() => new Struct("f").pack("1"), { name: "TypeError", message: /required argument is not a float/ });
    assert.throws(() => new Struct("d").pack(null), TypeError);
    assert.throws(() => new Struct("e").pack(undefined), TypeError);
    for (const bad of ["ab", "", "\u0100", Buffer.alloc(2), Buffer.alloc(0), 65, null]) {
      assert.throws(() => new Struct("c").pack(bad), { name: "TypeError", message: /char format requires/ });
    }
    for (const bad of [5, null, undefined, [1, 2], {}]) {
      assert.throws(() => new Struct("3s").pack(bad), { name: "TypeError", message: /argument for 's'/ });
      assert.throws(() => new Struct("3p").pack(bad), { name: "TypeError", message: /argument for 'p'/ });
    }
  });

  it("requires unpack's buffer to be exactly size bytes", () => {
    const s = new Struct("<hi");
    assert.throws(() => s.unpack(Buffer.alloc(5)), { name: "RangeError", message: "unpack requires a buffer of 6 bytes (got 5)" });
    assert.throws(() => s.unpack(Buffer.alloc(7)), RangeError);
    assert.throws(() => s.unpack("123456" as unknown as Uint8Array), TypeError);
  });

  it("unpackFrom reads at an offset, negative offsets counting from the end", () => {
    const s = new Struct("<h");
    const data = b("010203");
    assert.deepEqual(s.unpackFrom(data), [0x0201]);
    assert.deepEqual(s.unpackFrom(data, 1), [0x0302]);
    assert.deepEqual(s.unpackFrom(data, -2), [0x0302]);
    assert.deepEqual(s.unpackFrom(data, -3), [0x0201]);
    assert.throws(() => s.unpackFrom(data, 2), {
      name: "RangeError",
      message: "unpackFrom requires a buffer of at least 4 bytes for unpacking 2 bytes at offset 2 (actual buffer size is 3)",
    });
    assert.throws(() => s.unpackFrom(data, -4), { name: "RangeError", message: "offset -4 out of range for 3-byte buffer" });
    assert.throws(() => s.unpackFrom(data, 0.5), TypeError);
    assert.deepEqual(new Struct("0s").unpackFrom(data, 3), [Buffer.alloc(0)]);
  });

  it("packInto writes at an offset and leaves the buffer untouched on error", () => {
    const s = new Struct(">hb");
    const buf = Buffer.alloc(5, 0xaa);
    s.packInto(buf, 1, 258, -1);
    assert.equal(buf.toString("hex"), "aa0102ffaa");
    s.packInto(buf, -3, 3, 4);
    assert.equal(buf.toString("hex"), "aa01000304");
    assert.throws(() => s.packInto(buf, 0, 1, 1000), RangeError);
    assert.equal(buf.toString("hex"), "aa01000304");
    assert.throws(() => s.packInto(buf, 3, 1, 2), {
      name: "RangeError",
      message: "packInto requires a buffer of at least 6 bytes for packing 3 bytes at offset 3 (actual buffer size is 5)",
    });
    assert.throws(() => s.packInto(buf, -2, 1, 2), { name: "RangeError", message: "no space to pack 3 bytes at offset -2" });
    assert.throws(() => s.packInto(buf, -6, 1, 2), { name: "RangeError", message: "offset -6 out of range for 5-byte buffer" });
    assert.throws(() => s.packInto(buf, 1.5, 1, 2), TypeError);
  });

  it("works on Uint8Array views with a byte offset", () => {
    const backing = new Uint8Array(16);
    const view = backing.subarray(3, 11);
    new Struct("<q").packInto(view, 0, -2n);
    assert.deepEqual(Array.from(backing.subarray(3, 11)), [0xfe, 255, 255, 255, 255, 255, 255, 255]);
    assert.deepEqual(new Struct("<q").unpack(view), [-2n]);
    assert.deepEqual(new Struct("<i").unpackFrom(view, 4), [-1]);
  });

  it("gives every error a stable code (README, Errors)", () => {
    const code = (fn: () => unknown): unknown => {
      try {
        fn();
      } catch (err) {
        return [(err as Error).constructor.name, (err as { code?: unknown }).code];
      }
      return "no error";
    };
    assert.deepEqual(code(() => new Struct("!Hz")), ["RangeError", "ERR_INVALID_ARG_VALUE"]);
    assert.deepEqual(code(() => new Struct(7 as unknown as string)), ["TypeError", "ERR_INVALID_ARG_TYPE"]);
    assert.deepEqual(code(() => new Struct("!B").pack(256)), ["RangeError", "ERR_OUT_OF_RANGE"]);
    assert.deepEqual(code(() => new Struct("!B").pack("x")), ["TypeError", "ERR_INVALID_ARG_TYPE"]);
    assert.deepEqual(code(() => new Struct("!BB").pack(1)), ["TypeError", "ERR_INVALID_ARG_TYPE"]);
    assert.deepEqual(code(() => new Struct("!I").unpack(Buffer.alloc(2))), ["RangeError", "ERR_OUT_OF_RANGE"]);
    assert.deepEqual(code(() => new Struct("!I").unpackFrom(Buffer.alloc(4), 2)), ["RangeError", "ERR_OUT_OF_RANGE"]);
  });
});

// ---- randomized round trips -------------------------------------------------

interface Field {
  code: string;
  count: number | null;
}

const INT_LIMITS: Record<string, [bigint, bigint]> = {
  b: [-(2n ** 7n), 2n ** 7n - 1n],
  B: [0n, 2n ** 8n - 1n],
  h: [-(2n ** 15n), 2n ** 15n - 1n],
  H: [0n, 2n ** 16n - 1n],
  i: [-(2n ** 31n), 2n ** 31n - 1n],
  I: [0n, 2n ** 32n - 1n],
  q: [-(2n ** 63n), 2n ** 63n - 1n],
  Q: [0n, 2n ** 64n - 1n],
};

/** The range of an integer code under `native` sizes, or undefined. */
function intLimits(code: string, native: boolean): [bigint, bigint] | undefined {
  if (code === "l") return INT_LIMITS[native ? "q" : "i"];
  if (code === "L") return INT_LIMITS[native ? "Q" : "I"];
  if (code === "n") return INT_LIMITS.q;
  if (code === "N") return INT_LIMITS.Q;
  return INT_LIMITS[code];
}

/** Arbitrary values for one field, plus the values unpack must return for them. */
function fieldValues(field: Field, native: boolean): fc.Arbitrary<[unknown, unknown][]> {
  const { code } = field;
  const count = field.count ?? 1;
  const limits = intLimits(code, native);
  if (code === "x") return fc.constant([]);
  if (code === "s" || code === "p") {
    return fc.uint8Array({ maxLength: count + 3 }).map((data) => {
      const stored = code === "s" ? Math.min(data.length, count) : Math.max(0, Math.min(data.length, count - 1, 255));
      const back = Buffer.alloc(code === "s" ? count : stored);
      back.set(data.subarray(0, stored));
      return [[data, back]];
    });
  }
  let one: fc.Arbitrary<[unknown, unknown]>;
  if (limits !== undefined) {
    const [min, max] = limits;
    const big = max > 2n ** 32n;
    one = fc.bigInt({ min, max }).chain((v) =>
      // Pass safe integers as numbers half the time: both are accepted.
      fc.boolean().map((asNumber): [unknown, unknown] => [
        asNumber && Number.isSafeInteger(Number(v)) ? Number(v) : v,
        big ? v : Number(v),
      ]),
    );
  } else if (code === "?") {
    one = fc.boolean().map((v): [unknown, unknown] => [v, v]);
  } else if (code === "c") {
    one = fc.integer({ min: 0, max: 255 }).map((v): [unknown, unknown] => [Buffer.from([v]), Buffer.from([v])]);
  } else if (code === "d") {
    one = fc.double().map((v): [unknown, unknown] => [v, v]);
  } else if (code === "f") {
    one = fc.float().map((v): [unknown, unknown] => [v, v]);
  } else if (code === "e") {
    // Every finite half-precision value is a multiple of 2**-24 below 65520.
    one = fc
      .integer({ min: -2047, max: 2047 })
      .chain((m) => fc.integer({ min: -24, max: 5 }).map((k) => m * 2 ** k))
      .map((v): [unknown, unknown] => [v, v]);
  } else {
    // P: unsigned pointer-sized integer.
    one = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((v): [unknown, unknown] => [v, v]);
  }
  return fc.array(one, { minLength: count, maxLength: count });
}

const structCase = fc
  .record({
    prefix: fc.constantFrom("", "@", "=", "<", ">", "!"),
    fields: fc.array(
      fc.record({
        code: fc.constantFrom(..."xcbB?hHiIlLqQnNPefdsp"),
        count: fc.option(fc.integer({ min: 0, max: 4 }), { nil: null }),
        space: fc.constantFrom("", " ", "\t"),
      }),
      { maxLength: 8 },
    ),
  })
  .chain(({ prefix, fields }) => {
    const native = prefix === "" || prefix === "@";
    const usable = fields.filter((f) => native || !"nNP".includes(f.code));
    const format = prefix + usable.map((f) => `${f.count ?? ""}${f.code}${f.space}`).join("");
    return fc
      .tuple(...usable.map((f) => fieldValues(f, native)))
      .map((pairs) => ({ format, pairs: pairs.flat() }));
  });

describe("Struct: randomized round trips", () => {
  it("unpack(pack(values)) returns the values (with s/p padding and truncation applied)", () => {
    fc.assert(
      fc.property(structCase, ({ format, pairs }) => {
        const s = new Struct(format);
        const packed = s.pack(...pairs.map(([v]) => v));
        assert.equal(packed.length, s.size);
        assert.deepEqual(s.unpack(packed), pairs.map(([, back]) => back));
        // Re-packing what was unpacked gives the same bytes.
        assert.deepEqual(s.pack(...s.unpack(packed)), packed);
      }),
      { numRuns: 500 },
    );
  });

  it("pack(unpack(bytes)) returns the bytes for unaligned integer, c and s formats", () => {
    const bytesCase = fc
      .record({
        prefix: fc.constantFrom("=", "<", ">", "!"),
        codes: fc.array(fc.tuple(fc.constantFrom(..."bBhHiIlLqQcs"), fc.integer({ min: 0, max: 3 })), { maxLength: 8 }),
      })
      .chain(({ prefix, codes }) => {
        const s = new Struct(prefix + codes.map(([c, n]) => `${n}${c}`).join(""));
        return fc.uint8Array({ minLength: s.size, maxLength: s.size }).map((data) => ({ s, data }));
      });
    fc.assert(
      fc.property(bytesCase, ({ s, data }) => {
        assert.deepEqual(new Uint8Array(s.pack(...s.unpack(data))), data);
      }),
      { numRuns: 500 },
    );
  });

  it("round-trips q and Q bigints over their whole range", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (q, u) => {
        for (const prefix of ["<", ">", "@"]) {
          const s = new Struct(`${prefix}qQ`);
          assert.deepEqual(s.unpack(s.pack(q, u)), [q, u]);
        }
      }),
    );
  });
});
