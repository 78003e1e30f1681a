/* libFuzzer harness for the PROXY protocol parser: any input, any split, never reads past the
 * input; a DONE consumes no more than was given and is the same for every longer prefix. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_addrs pa;
    const char *err;
    size_t used = 0, first_used = 0;
    enum proxy_result first = PROXY_MORE;
    for (size_t k = 0; k <= size; k++) {
        unsigned char *copy = malloc(k ? k : 1); /* exact size: ASan sees over-reads */
        if (!copy)
            return 0;
        memcpy(copy, data, k);
        enum proxy_result r = k ? proxy_parse(copy, k, &used, &pa, &err) : PROXY_MORE;
        free(copy);
        if (r == PROXY_DONE && used > k)
            abort();
        if (first != PROXY_MORE) {
            if (r != first || (r == PROXY_DONE && used != first_used))
                abort(); /* a decision never changes with more input */
        } else if (r != PROXY_MORE) {
            first = r;
            first_used = used;
        }
    }
    return 0;
}
