// BLAKE3's SSE2 code for x86-64, from Debian's librust-blake3-dev (see blake3_lib.c).
#include <blake3_sse2_x86-64_unix.S>
