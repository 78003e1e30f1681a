/*
 * libFuzzer harness for the configuration loader: arbitrary bytes → cfg_load_string → cfg_unref.
 * Every input must either yield a snapshot or an error message, never a crash, a leak or a hang.
 *
 * Build with -DPORTCULLIS_FUZZ (the Makefile's fuzz flags do): backend hosts are then resolved
 * numerically only, so the fuzzer never waits on DNS for the random names it invents.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *err = NULL;
    struct config *c = cfg_load_string((const char *)data, size, "fuzz.yaml", &err);
    /* Exactly one of the two outcomes. */
    if ((c == NULL) == (err == NULL))
        abort();
    cfg_unref(&c);
    free(err);
    return 0;
}
