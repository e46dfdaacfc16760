/* regs STOPFILE [auto|avx512|avx|sse]
 *
 * Holds distinctive values in the vector registers across a checkpoint:
 *   avx512: zmm0-31 (all 64 bytes) and opmask k1-7   (when AVX-512F is usable)
 *   avx:    ymm0-15 (all 32 bytes)                    (when AVX is usable)
 *   sse:    xmm0-15
 * and, at every level, rbx r12-r15, MXCSR (round-toward-zero + FTZ) and one
 * x87 stack register.  Everything happens in ONE asm block: load all the
 * registers, write "ready\n" to stdout with a raw write(2), then loop on raw
 * syscalls -- nanosleep(10 ms), access(STOPFILE) -- until STOPFILE exists,
 * then store every register to memory.  Nothing else runs in between, so the
 * values can only survive if the checkpoint/restore preserved them.  C then
 * compares: "regs ok level=..." and exit 0, or "FAIL: <register> ..." and 1.
 * The default level is the best the CPU and kernel support ("auto").
 */
#include "common.h"
#include <stddef.h>
#include <stdint.h>

struct ctx {
    uint8_t vin[32][64];
    uint8_t vout[32][64];
    uint16_t kin[8], kout[8];
    uint64_t gin[5], gout[5]; /* rbx r12 r13 r14 r15 */
    uint32_t mxcsr_in, mxcsr_out, mxcsr_saved, pad;
    uint8_t x87in[16], x87out[16];
    struct timespec ts;
    const char *path;
    const char *msg;
    long msglen;
    long loops;
} __attribute__((aligned(64)));

static struct ctx C;

#define OFF(f) [o_##f] "i"(offsetof(struct ctx, f))
#define OPERANDS                                                               \
    : [c] "r"(&C), OFF(vin), OFF(vout), OFF(kin), OFF(kout), OFF(gin),         \
      OFF(gout), OFF(mxcsr_in), OFF(mxcsr_out), OFF(mxcsr_saved), OFF(x87in),  \
      OFF(x87out), OFF(ts), OFF(path), OFF(msg), OFF(msglen), OFF(loops)       \
    : "rax", "rcx", "rdx", "rsi", "rdi", "r11", "rbx", "r12", "r13", "r14",    \
      "r15", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",   \
      "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",      \
      "xmm14", "xmm15"

/* before loading vectors: save MXCSR, set ours, push one x87 value, GPRs */
#define PROLOGUE                                                               \
    "stmxcsr %c[o_mxcsr_saved](%[c])\n\t"                                      \
    "ldmxcsr %c[o_mxcsr_in](%[c])\n\t"                                         \
    "fldt %c[o_x87in](%[c])\n\t"                                               \
    "mov %c[o_gin]+0(%[c]), %%rbx\n\t"                                         \
    "mov %c[o_gin]+8(%[c]), %%r12\n\t"                                         \
    "mov %c[o_gin]+16(%[c]), %%r13\n\t"                                        \
    "mov %c[o_gin]+24(%[c]), %%r14\n\t"                                        \
    "mov %c[o_gin]+32(%[c]), %%r15\n\t"

/* write(1, msg, msglen); do { nanosleep(&ts, 0); loops++; } while (access(path, F_OK)) */
#define WAIT_LOOP                                                              \
    "mov $1, %%eax\n\t"                                                        \
    "mov $1, %%edi\n\t"                                                        \
    "mov %c[o_msg](%[c]), %%rsi\n\t"                                           \
    "mov %c[o_msglen](%[c]), %%rdx\n\t"                                        \
    "syscall\n"                                                                \
    "1:\n\t"                                                                   \
    "mov $35, %%eax\n\t"                                                       \
    "lea %c[o_ts](%[c]), %%rdi\n\t"                                            \
    "xor %%esi, %%esi\n\t"                                                     \
    "syscall\n\t"                                                              \
    "incq %c[o_loops](%[c])\n\t"                                               \
    "mov $21, %%eax\n\t"                                                       \
    "mov %c[o_path](%[c]), %%rdi\n\t"                                          \
    "xor %%esi, %%esi\n\t"                                                     \
    "syscall\n\t"                                                              \
    "test %%rax, %%rax\n\t"                                                    \
    "jnz 1b\n\t"

#define EPILOGUE                                                               \
    "mov %%rbx, %c[o_gout]+0(%[c])\n\t"                                        \
    "mov %%r12, %c[o_gout]+8(%[c])\n\t"                                        \
    "mov %%r13, %c[o_gout]+16(%[c])\n\t"                                       \
    "mov %%r14, %c[o_gout]+24(%[c])\n\t"                                       \
    "mov %%r15, %c[o_gout]+32(%[c])\n\t"                                       \
    "fstpt %c[o_x87out](%[c])\n\t"                                             \
    "stmxcsr %c[o_mxcsr_out](%[c])\n\t"                                        \
    "ldmxcsr %c[o_mxcsr_saved](%[c])\n\t"

#define FOR16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define FOR16HI(M) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)
#define FOR_K(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

#define LD_X(n) "movdqu %c[o_vin]+" #n "*64(%[c]), %%xmm" #n "\n\t"
#define ST_X(n) "movdqu %%xmm" #n ", %c[o_vout]+" #n "*64(%[c])\n\t"
#define LD_Y(n) "vmovdqu %c[o_vin]+" #n "*64(%[c]), %%ymm" #n "\n\t"
#define ST_Y(n) "vmovdqu %%ymm" #n ", %c[o_vout]+" #n "*64(%[c])\n\t"
#define LD_Z(n) "vmovdqu64 %c[o_vin]+" #n "*64(%[c]), %%zmm" #n "\n\t"
#define ST_Z(n) "vmovdqu64 %%zmm" #n ", %c[o_vout]+" #n "*64(%[c])\n\t"
#define LD_K(n) "kmovw %c[o_kin]+" #n "*2(%[c]), %%k" #n "\n\t"
#define ST_K(n) "kmovw %%k" #n ", %c[o_kout]+" #n "*2(%[c])\n\t"

static void __attribute__((noinline)) hold_sse(void)
{
    __asm__ volatile(PROLOGUE FOR16(LD_X) WAIT_LOOP FOR16(ST_X) EPILOGUE
                     : OPERANDS);
}

__attribute__((target("avx"), noinline)) static void hold_avx(void)
{
    __asm__ volatile(PROLOGUE FOR16(LD_Y) WAIT_LOOP FOR16(ST_Y) EPILOGUE
                     "vzeroupper\n\t"
                     : OPERANDS);
}

__attribute__((target("avx512f"), noinline)) static void hold_avx512(void)
{
    __asm__ volatile(PROLOGUE FOR16(LD_Z) FOR16HI(LD_Z) FOR_K(LD_K) WAIT_LOOP
                     FOR_K(ST_K) FOR16(ST_Z) FOR16HI(ST_Z) EPILOGUE
                     "vzeroupper\n\t"
                     : OPERANDS, "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
                       "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26",
                       "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2",
                       "k3", "k4", "k5", "k6", "k7");
}

static int check_bytes(const char *what, int reg, const uint8_t *got,
                       const uint8_t *want, size_t n)
{
    if (memcmp(got, want, n) == 0)
        return 0;
    char g[3 * 64 + 1] = "", w[3 * 64 + 1] = "";
    for (size_t i = 0; i < n; i++) {
        sprintf(g + 2 * i, "%02x", got[n - 1 - i]);
        sprintf(w + 2 * i, "%02x", want[n - 1 - i]);
    }
    say("FAIL: %s%d is %s, expected %s", what, reg, g, w);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [auto|avx512|avx|sse]\n", argv[0]);
        return 2;
    }
    const char *want = argc > 2 ? argv[2] : "auto";
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f");
    int hasavx = __builtin_cpu_supports("avx");
    const char *level;
    if (!strcmp(want, "auto"))
        level = has512 ? "avx512" : hasavx ? "avx" : "sse";
    else
        level = want;
    if ((!strcmp(level, "avx512") && !has512) || (!strcmp(level, "avx") && !hasavx))
        fail("level %s requested but the CPU/kernel does not support it", level);
    if (strcmp(level, "avx512") && strcmp(level, "avx") && strcmp(level, "sse"))
        fail("unknown level '%s'", level);

    for (int r = 0; r < 32; r++)
        for (int b = 0; b < 64; b++)
            C.vin[r][b] = (uint8_t)(0xA0 + r * 7 + b * 13 + (b / 16) * 0x40);
    for (int k = 0; k < 8; k++)
        C.kin[k] = (uint16_t)(0xC3A5u ^ (k * 0x1111u));
    for (int g = 0; g < 5; g++)
        C.gin[g] = 0x0123456789ABCDEFULL ^ (0x1111111111111111ULL * (uint64_t)(g + 1));
    C.mxcsr_in = 0x1f80 | 0x6000 | 0x8000; /* all masked, round toward zero, FTZ */
    long double x87 = -3.14159265358979323846264338327950288L * 1e300L;
    memset(C.x87in, 0, sizeof C.x87in);
    memcpy(C.x87in, &x87, 10);
    C.ts.tv_sec = 0;
    C.ts.tv_nsec = 10 * 1000000L;
    C.path = argv[1];
    C.msg = "ready\n";
    C.msglen = 6;
    memset(C.vout, 0, sizeof C.vout);

    say("level %s (cpu: avx512f=%d avx=%d)", level, has512 != 0, hasavx != 0);

    int nvec, vbytes;
    const char *vname;
    if (!strcmp(level, "avx512")) {
        hold_avx512();
        nvec = 32, vbytes = 64, vname = "zmm";
    } else if (!strcmp(level, "avx")) {
        hold_avx();
        nvec = 16, vbytes = 32, vname = "ymm";
    } else {
        hold_sse();
        nvec = 16, vbytes = 16, vname = "xmm";
    }

    int bad = 0;
    for (int r = 0; r < nvec; r++)
        bad += check_bytes(vname, r, C.vout[r], C.vin[r], (size_t)vbytes);
    if (!strcmp(level, "avx512"))
        for (int k = 1; k < 8; k++)
            if (C.kout[k] != C.kin[k]) {
                say("FAIL: k%d is %#x, expected %#x", k, C.kout[k], C.kin[k]);
                bad++;
            }
    static const char *gname[5] = { "rbx", "r12", "r13", "r14", "r15" };
    for (int g = 0; g < 5; g++)
        if (C.gout[g] != C.gin[g]) {
            say("FAIL: %s is %#llx, expected %#llx", gname[g],
                (unsigned long long)C.gout[g], (unsigned long long)C.gin[g]);
            bad++;
        }
    if (C.mxcsr_out != C.mxcsr_in) {
        say("FAIL: mxcsr is %#x, expected %#x", C.mxcsr_out, C.mxcsr_in);
        bad++;
    }
    bad += check_bytes("st", 0, C.x87out, C.x87in, 10);
    if (bad) {
        say("FAIL: %d registers differ", bad);
        return 1;
    }
    say("regs ok level=%s %s0-%d%s gpr mxcsr x87 loops=%ld", level, vname, nvec - 1,
        !strcmp(level, "avx512") ? " k1-7" : "", C.loops);
    return 0;
}
