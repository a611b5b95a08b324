/* Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c) and the corpus
 * replay driver: the loaders take paths, so each input is written to a file
 * in one temporary directory per process (removed at exit). */
#ifndef TESSERA_FUZZ_COMMON_H
#define TESSERA_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The per-process directory (created on first use; aborts if it cannot be). */
const char *fuzz_dir(void);
/* Write data to fuzz_dir()/name (replacing it); returns the path, valid
 * until the next call. Aborts on I/O errors: they are not the library's. */
const char *fuzz_write(const char *name, const uint8_t *data, size_t size);
/* A malloc'ed NUL-terminated copy of data (caller frees). */
char *fuzz_strndup(const uint8_t *data, size_t size);
/* Report a broken library invariant and abort (so the fuzzer keeps the input). */
_Noreturn void fuzz_fail(const char *what);

#endif
