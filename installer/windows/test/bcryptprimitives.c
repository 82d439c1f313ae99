/* Test scaffolding, never shipped: a stand-in for Windows 10's
   bcryptprimitives.dll, which Wine 8 lacks and Rust's standard library
   imports (it draws random bytes from ProcessPrng). installer/smoke.sh
   builds it with mingw into its own Wine prefix's system32. Real Windows
   has the real DLL. ProcessPrng is documented as always succeeding; this
   one forwards to RtlGenRandom (advapi32's SystemFunction036). */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n; len -= n;
    }
    return TRUE;
}
