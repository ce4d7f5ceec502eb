/*
 * fuzz_csv: feeds arbitrary bytes to the devices file's tokenizer. Whatever the input, every
 * row's fields must lie inside the buffer, be NUL-terminated there, carry positive positions,
 * and the reader must end (each row consumes input) without crashing or leaking.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    struct csv_reader r;
    struct csv_row row;
    size_t rows = 0;
    csv_init(&r, buf, size);
    while (csv_next(&r, &row) > 0) {
        if (++rows > size + 1)
            abort(); /* a row that consumed nothing */
        if (row.n == 0 || row.line < 1)
            abort();
        for (size_t i = 0; i < row.n; i++) {
            const char *s = row.f[i].s;
            if (s < buf || s > buf + size || row.f[i].line < 1 || row.f[i].col < 1)
                abort();
            if (!memchr(s, '\0', (size_t)(buf + size + 1 - s)))
                abort();
        }
        if (row.error && row.err_field >= row.n)
            abort();
        if (row.fatal)
            break;
    }
    csv_free(&r);
    free(buf);
    return 0;
}
