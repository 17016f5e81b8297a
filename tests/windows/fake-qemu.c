/* A stand-in for qemu-system-x86_64.exe and qemu-img.exe in the Windows command tests
 * (tests/windows/run.sh, under Wine): it records every command line it gets, one argument a
 * line and "--" after each, in the file $FAKE_QEMU_LOG, answers --version, creates the disk
 * file `qemu-img create -f qcow2 FILE SIZE` names, and refuses to boot (exit 1), so `create`
 * stops right after QEMU was started with the command line under test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *log = getenv("FAKE_QEMU_LOG");
    if (log != NULL) {
        FILE *f = fopen(log, "ab");
        if (f != NULL) {
            for (int i = 1; i < argc; i++) fprintf(f, "%s\n", argv[i]);
            fputs("--\n", f);
            fclose(f);
        }
    }
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("QEMU emulator version 8.2.0");
        return 0;
    }
    if (argc > 4 && strcmp(argv[1], "create") == 0) {
        FILE *disk = fopen(argv[4], "wb");
        if (disk == NULL) return 1;
        fclose(disk);
        return 0;
    }
    fputs("fake qemu: this stand-in does not boot\n", stderr);
    return 1;
}
