/* test_csv: the devices file's tokenizer, row by row (positions, quoting, errors). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "csv.h"

static char *dup_text(const char *s)
{
    char *b = strdup(s);
    CHECK(b != NULL);
    return b;
}

static void test_rows_and_positions(void)
{
    char *buf = dup_text(
        "\xEF\xBB\xBF# fleet\nproduct_key,device_name\r\n\n  \na1,\"d,\"\"1\"\"\"\r\na2,dé3\n");
    struct csv_reader r;
    struct csv_row row;
    csv_init(&r, buf, strlen(buf));
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.n == 2 && row.line == 2 && !row.error);
    CHECK(strcmp(row.f[0].s, "product_key") == 0 && strcmp(row.f[1].s, "device_name") == 0);
    CHECK(row.f[1].line == 2 && row.f[1].col == 13);
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.line == 5 && row.n == 2 && !row.error);
    CHECK(strcmp(row.f[1].s, "d,\"1\"") == 0);
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.line == 6 && strcmp(row.f[1].s, "dé3") == 0);
    CHECK(csv_next(&r, &row) == 0);
    csv_free(&r);
    free(buf);
}

static void test_errors(void)
{
    char *buf = dup_text("a,b\"c\nx,\"y\"z,w\nok,row\n\"never closed,\nmore\n");
    struct csv_reader r;
    struct csv_row row;
    csv_init(&r, buf, strlen(buf));
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.error && strstr(row.error, "quote inside an unquoted field"));
    CHECK(row.err_line == 1 && row.err_col == 4 && row.err_field == 1 && !row.fatal);
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.error && strstr(row.error, "after a closing quote") && row.err_field == 1);
    CHECK(row.n == 3); /* the rest of the row is still read */
    CHECK(csv_next(&r, &row) == 1);
    CHECK(!row.error && row.n == 2);
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.fatal && strstr(row.error, "not closed") && row.err_line == 4 && row.err_col == 1);
    CHECK(csv_next(&r, &row) == 0);
    csv_free(&r);
    free(buf);
}

static void test_last_line_without_newline(void)
{
    char *buf = dup_text("a,b\r");
    struct csv_reader r;
    struct csv_row row;
    csv_init(&r, buf, strlen(buf));
    CHECK(csv_next(&r, &row) == 1);
    CHECK(row.n == 2 && strcmp(row.f[1].s, "b") == 0);
    CHECK(csv_next(&r, &row) == 0);
    csv_free(&r);
    free(buf);
}

int main(void)
{
    test_rows_and_positions();
    test_errors();
    test_last_line_without_newline();
    return check_done();
}
