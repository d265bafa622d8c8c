// The macros -mavx2 -mfma -mf16c would define, for a file that enables those
// instruction sets by target pragma instead (setuptools has no per-file flags):
// sleef.h, included by ATen's vectors, declares its AVX functions under them.
// Include right after the pragma.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
