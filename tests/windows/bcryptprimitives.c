/* bcryptprimitives.dll for Wine 8 (Debian 12), which lacks it: Rust's std (1.78+) takes its
 * random bytes from ProcessPrng there, so without this DLL no Rust program starts under that
 * Wine. The bytes come from RtlGenRandom (advapi32's SystemFunction036). Test-only: Windows
 * itself ships the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
