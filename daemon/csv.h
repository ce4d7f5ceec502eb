/*
 * csv: a tokenizer for the devices file's CSV dialect, pure (no I/O, no allocation but its own
 * field array): RFC 4180 fields ("" escapes a quote inside a quoted field), LF or CRLF line ends,
 * an optional UTF-8 byte-order mark, blank lines and lines starting with '#' skipped. Fields are
 * decoded in place inside the caller's buffer and NUL-terminated there; each carries the line
 * and column (in characters, 1-based) where it starts, so the caller can name it in errors.
 */
#ifndef ALIGW_CSV_H
#define ALIGW_CSV_H

#include <stdbool.h>
#include <stddef.h>

struct csv_field {
    char *s; /* decoded, NUL-terminated, inside the buffer */
    int line, col;
};

struct csv_row {
    struct csv_field *f; /* owned by the reader, valid until the next csv_next */
    size_t n;
    int line; /* the row's first line */
    /* A problem in the row, or NULL. A row with a problem still has its fields up to it; fatal
     * means the rest of the text cannot be read (an unclosed quote runs to the end). */
    const char *error;
    int err_line, err_col;
    size_t err_field; /* the index of the field at fault */
    bool fatal;
};

struct csv_reader {
    char *p, *end, *w;
    int line, col;
    struct csv_field *fv;
    size_t cap;
};

/* Starts reading buf[0..len), which the reader modifies in place. */
void csv_init(struct csv_reader *r, char *buf, size_t len);
/* The next row: 1 with *row filled, 0 at the end of the text, -ENOMEM. After a fatal row
 * error, the next call returns 0. */
int csv_next(struct csv_reader *r, struct csv_row *row);
void csv_free(struct csv_reader *r);

#endif
