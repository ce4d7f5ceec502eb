/*
 * csv: the devices file's tokenizer (see csv.h). One pass over the buffer: the write pointer w
 * never overtakes the read pointer p, so fields are decoded in place.
 */
#include "csv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void csv_init(struct csv_reader *r, char *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->p = r->w = buf;
    r->end = buf + len;
    r->line = r->col = 1;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        r->p = r->w = buf + 3;
}

void csv_free(struct csv_reader *r)
{
    free(r->fv);
    r->fv = NULL;
    r->cap = 0;
}

/* One character forward, counting lines and characters (not UTF-8 continuation bytes). */
static void adv(struct csv_reader *r)
{
    if (*r->p == '\n') {
        r->line++;
        r->col = 1;
    } else if (((unsigned char)*r->p & 0xC0) != 0x80) {
        r->col++;
    }
    r->p++;
}

/* At a line end: "\n", "\r\n", or a lone "\r" as the very last byte. */
static bool at_eol(const struct csv_reader *r, const char *q)
{
    return *q == '\n' || (*q == '\r' && (q + 1 == r->end || q[1] == '\n'));
}

static void row_error(struct csv_row *row, const char *msg, int line, int col)
{
    if (row->error)
        return; /* the first problem names the row */
    row->error = msg;
    row->err_line = line;
    row->err_col = col;
    row->err_field = row->n - 1;
}

/* Skips blank lines and comment lines; false at the end of the text. */
static bool skip_blank(struct csv_reader *r)
{
    while (r->p < r->end) {
        char *q = r->p;
        while (q < r->end && (*q == ' ' || *q == '\t'))
            q++;
        if (q < r->end && !at_eol(r, q) && *r->p != '#')
            return true;
        while (r->p < r->end && *r->p != '\n')
            r->p++;
        if (r->p < r->end)
            r->p++;
        r->line++;
        r->col = 1;
    }
    return false;
}

/*
 * Bytes no devices file holds: a NUL (a secret would silently end there) and a carriage return
 * that does not end a line (a file saved with old Mac line ends reads as one long line). The
 * second makes the rest of the text unreadable: fatal.
 */
static void check_byte(struct csv_reader *r, struct csv_row *row)
{
    if (*r->p == '\0')
        row_error(row, "a NUL byte in the field (the file is binary or damaged)", r->line, r->col);
    else if (*r->p == '\r' && !at_eol(r, r->p) && !row->error) {
        row_error(row,
                  "a carriage return without a line feed: lines must end with LF or CRLF (save "
                  "the file with Unix or Windows line ends)",
                  r->line, r->col);
        row->fatal = true;
    }
}

int csv_next(struct csv_reader *r, struct csv_row *row)
{
    memset(row, 0, sizeof(*row));
    if (!skip_blank(r))
        return 0;
    row->line = r->line;
    for (;;) {
        if (row->n == r->cap) {
            size_t ncap = r->cap ? r->cap * 2 : 16;
            struct csv_field *n = realloc(r->fv, ncap * sizeof(*n));
            if (!n)
                return -ENOMEM;
            r->fv = n;
            r->cap = ncap;
        }
        row->f = r->fv;
        struct csv_field *fd = &r->fv[row->n++];
        fd->line = r->line;
        fd->col = r->col;
        fd->s = r->w;
        if (r->p < r->end && *r->p == '"') {
            adv(r);
            for (;;) {
                if (r->p >= r->end) {
                    row->error = "quoted field is not closed";
                    row->err_line = fd->line;
                    row->err_col = fd->col;
                    row->err_field = row->n - 1;
                    row->fatal = true;
                    *r->w = '\0';
                    return 1;
                }
                if (*r->p == '"') {
                    if (r->p + 1 < r->end && r->p[1] == '"') {
                        *r->w++ = '"';
                        adv(r);
                        adv(r);
                        continue;
                    }
                    adv(r);
                    break;
                }
                check_byte(r, row);
                *r->w++ = *r->p;
                adv(r);
            }
            if (r->p < r->end && *r->p != ',' && !at_eol(r, r->p)) {
                row_error(row, "text after a closing quote", r->line, r->col);
                while (r->p < r->end && *r->p != ',' && *r->p != '\n')
                    adv(r);
            }
        } else {
            while (r->p < r->end && *r->p != ',' && !at_eol(r, r->p)) {
                if (*r->p == '"')
                    row_error(row, "a quote inside an unquoted field (quote the whole field)",
                              r->line, r->col);
                check_byte(r, row);
                *r->w++ = *r->p;
                adv(r);
            }
        }
        /* p is at a delimiter or the end: read it before the NUL may overwrite it. */
        char d = r->p < r->end ? *r->p : '\0';
        *r->w++ = '\0';
        if (d == ',') {
            r->p++;
            r->col++;
            continue;
        }
        if (d == '\r')
            r->p++;
        if (r->p < r->end) {
            r->p++; /* '\n' */
            r->line++;
            r->col = 1;
        }
        return 1;
    }
}
